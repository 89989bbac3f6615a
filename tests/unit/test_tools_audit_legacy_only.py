"""The auditor against a server that speaks only TLS 1.0: our handshake (TLS 1.2
and newer) fails, so there is "no TLS" for clients that follow RFC 8996, and the
legacy-version probe still says which old version the server does speak."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from smtpgate.tls.certs import write_self_signed
from smtpgate.tools.audit import AuditOptions, Mode, Target, TargetReport, audit_target


@pytest.fixture(scope="module")
def tls10_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    d = tmp_path_factory.mktemp("tls10")
    write_self_signed(d / "cert.pem", d / "key.pem", "old.test")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(Path(d / "cert.pem"), Path(d / "key.pem"))
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():  # the point of this server is to be deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1
    return ctx


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _handler(ctx: ssl.SSLContext, implicit: bool) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 old.test ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-old.test\r\n" + (b"" if implicit else b"250-STARTTLS\r\n")
                                 + b"250 AUTH PLAIN\r\n")
                elif verb == b"STAR":
                    writer.write(b"220 2.0.0 go ahead\r\n")
                    await writer.drain()
                    await writer.start_tls(ctx)
                    continue
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                else:
                    writer.write(b"530 5.7.0 Must issue a STARTTLS command first\r\n")
                await writer.drain()
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            writer.close()

    return handle


async def _audit(ctx: ssl.SSLContext, mode: Mode) -> TargetReport:
    implicit = mode == "implicit"
    server = await asyncio.start_server(_handler(ctx, implicit), "127.0.0.1", 0,
                                        ssl=ctx if implicit else None)
    port = int(server.sockets[0].getsockname()[1])
    try:
        return await audit_target(Target("127.0.0.1", port, mode),
                                  AuditOptions(timeout=5.0, ehlo_name="client.test"))
    finally:
        server.close()


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_a_tls_1_0_only_server_is_reported_as_speaking_tls_1_0(
    tls10_context: ssl.SSLContext, mode: Mode
) -> None:
    # It was: "no-tls" alone, and the legacy probe not run ("legacy TLS" absent
    # from the report): the admin was not told the server does speak TLS, 1.0.
    report = await _audit(tls10_context, mode)
    assert report.tls_error
    assert report.legacy_versions == {"TLS 1.0": True, "TLS 1.1": False}
    ids = [f.id for f in report.findings]
    assert "no-tls" in ids and "tls-legacy-versions" in ids
