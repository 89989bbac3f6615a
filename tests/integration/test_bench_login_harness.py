"""The login benchmark's harness gives right answers (bench/README.md, "Logins"):
its Dovecot auth-socket client gets OK for a right password and FAIL for a wrong
one, and its delaying proxy passes every byte through in order. No timings."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bench.dovecot_ldap import AuthClient
from tests.peers.postfix_dovecot import SCRAM_PASSWORD, SCRAM_USER, PostfixDovecot

from .conftest import free_port

PROXY = Path(__file__).resolve().parents[2] / "bench" / "delay_proxy.py"


def test_dovecot_auth_client_gets_ok_and_fail(mta: PostfixDovecot) -> None:
    async def go() -> tuple[list[str], tuple[bool, str], tuple[bool, str]]:
        client = await AuthClient.connect(mta.root / "dovecot" / "auth-postfix")
        try:
            right = await client.plain(SCRAM_USER, SCRAM_PASSWORD)
            wrong = await client.plain(SCRAM_USER, SCRAM_PASSWORD + "-wrong", rip="127.0.0.9")
        finally:
            await client.close()
        return client.mechanisms, right, wrong

    mechanisms, right, wrong = asyncio.run(go())
    assert "PLAIN" in mechanisms
    assert right[0] is True and right[1].startswith(f"OK\t1\tuser={SCRAM_USER}")
    assert wrong[0] is False and wrong[1].startswith("FAIL\t2\t")


def test_delay_proxy_passes_bytes_in_order() -> None:
    async def go() -> bytes:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(4096):
                w.write(data)
                await w.drain()
            w.close()

        upstream = await asyncio.start_server(echo, "127.0.0.1", 0)
        up_port = upstream.sockets[0].getsockname()[1]
        port = free_port()
        proxy = await asyncio.create_subprocess_exec(
            sys.executable, str(PROXY), "--listen", f"127.0.0.1:{port}",
            "--upstream", f"127.0.0.1:{up_port}", "--delay", "0.05",
            stdout=asyncio.subprocess.PIPE)
        try:
            assert proxy.stdout is not None
            assert (await asyncio.wait_for(proxy.stdout.readline(), 20)).strip() == b"ready"
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for i in range(5):
                writer.write(f"message {i}\n".encode())
                await writer.drain()
            writer.write_eof()
            got = await asyncio.wait_for(reader.read(), 20)
            writer.close()
            return got
        finally:
            proxy.terminate()
            await proxy.wait()
            upstream.close()

    assert asyncio.run(go()) == b"".join(f"message {i}\n".encode() for i in range(5))
