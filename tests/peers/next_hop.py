"""A next hop for relay delivery: aiosmtpd storing each message it accepts.

``python next_hop.py --port N --out DIR``. Every message accepted with 250 is
written to ``DIR/new/`` (via ``DIR/tmp/`` and a rename, so a file that is there is
complete), envelope first as ``X-Hop-From:``/``X-Hop-To:`` lines. No AUTH and no
STARTTLS: smtpgate's relay client talks to it as to a smarthost on loopback.
Stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP


class Recorder:
    def __init__(self, out: Path, delay: float = 0.0) -> None:
        self.out = out
        self.delay = delay
        self.counter = itertools.count()
        for sub in ("tmp", "new"):
            (out / sub).mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow next hop: deliveries stay in flight
        name = f"{os.getpid()}-{next(self.counter)}.eml"
        head = f"X-Hop-From: {envelope.mail_from}\r\n" + "".join(
            f"X-Hop-To: {rcpt}\r\n" for rcpt in envelope.rcpt_tos
        )
        tmp = self.out / "tmp" / name
        tmp.write_bytes(head.encode() + envelope.original_content)
        os.replace(tmp, self.out / "new" / name)
        return "250 2.0.0 stored by the next hop"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.0,
                        help="Seconds to wait before answering the end of DATA.")
    args = parser.parse_args()
    handler = Recorder(args.out, args.delay)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="hop.test", decode_data=False),
            "127.0.0.1",
            args.port,
            reuse_address=True,
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
