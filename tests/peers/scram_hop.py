"""A next hop that answers SCRAM-SHA-256 with 235, proving itself or not.

``python scram_hop.py --port N --mode MODE [--user U --password P]``, or in-process
with ``async with scram_hop(MODE) as hop``. Plain SMTP on 127.0.0.1 (no STARTTLS):
SCRAM puts no reusable secret on the wire, so the relay client and the tester send
it in clear to a hop on loopback. Modes, after the client's first message:

* ``honest``: the control. Checks the client proof (535 if wrong), sends the real
  server signature ``v=`` as a 334, and says 235 after the client's empty line;
* ``no-final``: checks nothing and says 235 right after client-final, never sending
  ``v=`` (a server that does not know the keys);
* ``bad-signature``: sends a random ``v=`` and then 235 to whatever the client
  answers (its cancel too);
* ``early``: says 235 to the client-first message itself.

Every command line received is recorded (``hop.lines``), and every message
accepted after DATA (``hop.messages``): a client that trusts a liar sends its mail
here. The SCRAM arithmetic is written out from RFC 5802 §3 with hashlib and hmac,
independent of smtpgate's own implementation.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

MODES = ("honest", "no-final", "bad-signature", "early")
USER = "relay@hop.test"
PASSWORD = "hop secret"
ITERATIONS = 4096


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


@dataclass
class Hop:
    mode: str
    user: str = USER
    password: str = PASSWORD
    port: int = 0
    lines: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)

    @property
    def verbs(self) -> list[str]:
        return [line.split(b" ", 1)[0].decode("ascii", "replace").upper() for line in self.lines]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _line(self, reader: asyncio.StreamReader) -> bytes:
        line = await reader.readuntil(b"\n")
        self.lines.append(line.rstrip(b"\r\n"))
        return line.rstrip(b"\r\n")

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(text: bytes) -> None:
            writer.write(text + b"\r\n")

        say(b"220 hop.test ESMTP scram hop")
        while True:
            await writer.drain()
            line = await self._line(reader)
            verb = line.split(b" ", 1)[0].upper()
            if verb == b"EHLO":
                say(b"250-hop.test\r\n250-8BITMIME\r\n250 AUTH SCRAM-SHA-256")
            elif verb == b"HELO":
                say(b"250 hop.test")
            elif verb == b"AUTH":
                await self._auth(line, reader, say)
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                say(b"250 2.0.0 OK")
            elif verb == b"DATA":
                say(b"354 go ahead")
                await writer.drain()
                self.messages.append(await reader.readuntil(b"\r\n.\r\n"))
                say(b"250 2.0.0 accepted by the scram hop")
            elif verb == b"QUIT":
                say(b"221 2.0.0 bye")
                await writer.drain()
                return
            else:
                say(b"502 5.5.2 not here")

    async def _auth(
        self, line: bytes, reader: asyncio.StreamReader, say: Callable[[bytes], None]
    ) -> None:
        parts = line.split(b" ")
        if len(parts) != 3 or parts[1].upper() != b"SCRAM-SHA-256":
            say(b"504 5.5.4 SCRAM-SHA-256 with an initial response only")
            return
        client_first = base64.b64decode(parts[2])
        if self.mode == "early":
            say(b"235 2.7.0 Authentication successful")
            return
        # RFC 5802 §7: gs2-header "n,," or "y,," (a=... not used here), then the bare part.
        bare = client_first.split(b",", 2)[2]
        attrs = dict(a.split(b"=", 1) for a in bare.split(b","))
        nonce = attrs[b"r"] + _b64(os.urandom(18))
        salt = hashlib.sha256(self.user.encode()).digest()[:16]
        server_first = b"r=" + nonce + b",s=" + _b64(salt) + b",i=" + str(ITERATIONS).encode()
        say(b"334 " + _b64(server_first))
        client_final = base64.b64decode(await self._line(reader))
        without_proof, _, proof = client_final.rpartition(b",p=")
        auth_message = bare + b"," + server_first + b"," + without_proof
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, ITERATIONS)
        if self.mode == "no-final":
            say(b"235 2.7.0 Authentication successful")
            return
        if self.mode == "bad-signature":
            say(b"334 " + _b64(b"v=" + _b64(os.urandom(32))))
            await self._line(reader)  # the client's "*" or empty line: a liar does not care
            say(b"235 2.7.0 Authentication successful")
            return
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        signature = _hmac(stored_key, auth_message)
        expected = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        if not hmac.compare_digest(base64.b64decode(proof), expected):
            say(b"535 5.7.8 Authentication credentials invalid")
            return
        server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        say(b"334 " + _b64(b"v=" + _b64(server_signature)))
        if await self._line(reader) == b"":
            say(b"235 2.7.0 Authentication successful")
        else:
            say(b"501 5.7.0 exchange cancelled")


@contextlib.asynccontextmanager
async def scram_hop(
    mode: str, user: str = USER, password: str = PASSWORD
) -> AsyncIterator[Hop]:
    """The hop on 127.0.0.1, port chosen by the system, in this event loop."""
    if mode not in MODES:
        raise ValueError(mode)
    hop = Hop(mode, user, password)
    server = await asyncio.start_server(hop.handle, "127.0.0.1", 0)
    hop.port = server.sockets[0].getsockname()[1]
    try:
        yield hop
    finally:
        server.close()
        await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--user", default=USER)
    parser.add_argument("--password", default=PASSWORD)
    args = parser.parse_args()
    hop = Hop(args.mode, args.user, args.password, args.port)

    async def serve() -> None:
        server = await asyncio.start_server(hop.handle, "127.0.0.1", args.port,
                                            reuse_address=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
