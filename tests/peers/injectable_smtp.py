"""A deliberately broken toy SMTP server: ``python injectable_smtp.py --port N --cert C --key K``.

No packaged server on this machine still has the STARTTLS command-injection
bug (CVE-2011-0411 and its relatives), so the auditor's finding is shown
against this one: it keeps the bytes it read in clear after ``STARTTLS`` and
executes them inside TLS, as the vulnerable servers did. With ``--safe`` it
discards them (RFC 3207 §4.2), which is the control. It offers nothing else
worth a finding: STARTTLS, AUTH only after TLS and with SCRAM-SHA-256 named,
MAIL refused without AUTH. Test use only; it never accepts a message.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl

HOST = b"injectable.test.local"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--safe", action="store_true", help="discard input at STARTTLS")
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        tls = False

        def reply(text: bytes) -> None:
            writer.write(text + b"\r\n")

        reply(b"220 " + HOST + b" ESMTP toy")
        try:
            while True:
                while b"\n" not in buf:
                    chunk = await reader.read(4096)
                    if not chunk:
                        return
                    buf += chunk
                line, _, rest = bytes(buf).partition(b"\n")
                buf = bytearray(rest)
                verb = line.strip().split(b" ", 1)[0].upper()
                if verb in (b"EHLO", b"HELO"):
                    ext = [HOST, b"PIPELINING"]
                    ext.append(b"AUTH SCRAM-SHA-256" if tls else b"STARTTLS")
                    for e in ext[:-1]:
                        reply(b"250-" + e)
                    reply(b"250 " + ext[-1])
                elif verb == b"STARTTLS" and not tls:
                    reply(b"220 2.0.0 Ready to start TLS")
                    await writer.drain()
                    if args.safe:
                        buf.clear()
                    await writer.start_tls(context)
                    tls = True
                elif verb == b"AUTH":
                    reply(b"535 5.7.8 No" if tls else b"530 5.7.0 Must issue STARTTLS first")
                elif verb == b"MAIL":
                    reply(b"530 5.7.0 Authentication required")
                elif verb == b"RCPT":
                    reply(b"503 5.5.1 Send MAIL first")
                elif verb in (b"RSET", b"NOOP"):
                    reply(b"250 2.0.0 OK")
                elif verb == b"QUIT":
                    reply(b"221 2.0.0 Bye")
                    await writer.drain()
                    return
                else:
                    reply(b"500 5.5.2 Command not recognized")
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", args.port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
