"""Run aiosmtpd (the Python SMTP server) as a test peer: ``python aiosmtpd_server.py --port N``.

Configured the way its documentation allows and the auditor must catch:
``auth_require_tls=False`` advertises and accepts AUTH PLAIN/LOGIN before
STARTTLS. AUTH is required for mail (``auth_required=True``), so it is not an
open relay; with ``--cert``/``--key`` it offers STARTTLS. The tests start it as
a subprocess on a free port and stop it by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Handler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--user", default="alice@test.local")
    parser.add_argument("--password", default="Alice-Pass-123")
    args = parser.parse_args()

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (
            data.login.decode() == args.user and data.password.decode() == args.password
        )
        return AuthResult(success=ok, handled=False)

    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(
                Handler(),
                hostname="aiosmtpd.test.local",
                tls_context=context,
                require_starttls=False,
                auth_required=True,
                auth_require_tls=False,
                authenticator=authenticator,
            ),
            "127.0.0.1",
            args.port,
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
