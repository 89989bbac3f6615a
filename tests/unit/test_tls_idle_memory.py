"""An idle TLS session holds no OpenSSL record buffers (bench/README.md, workload D):
the server context releases them while they are empty, for the plain listeners and
for those that ask for a client certificate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL

from smtpgate.tls.certs import write_self_signed
from smtpgate.tls.session import ClientAuth, make_server_context


def _mode(ctx: SSL.Context) -> int:
    # SSL_CTX_set_mode ORs the bits in and returns the mode: 0 reads it unchanged.
    return int(ctx.set_mode(0))


def test_server_contexts_release_idle_buffers(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "localhost", days=2)
    tls = make_server_context(cert, key, client_auth={"ext": ClientAuth(ca=cert)})
    assert _mode(tls.context) & SSL.MODE_RELEASE_BUFFERS
    assert _mode(tls.listeners["ext"].context) & SSL.MODE_RELEASE_BUFFERS


def _malloc_in_use() -> int:
    """Bytes glibc's malloc has handed out (OpenSSL's buffers are malloc'd)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _pair(tmp_path: Path) -> tuple[Any, Any]:
    """A handshaken client (stdlib SSLObject) and smtpgate server session."""
    import ssl

    from smtpgate.tls.memory_handshake import handshake, session_step, sslobject_step
    from smtpgate.tls.native_session import NativeServerSession

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    if not cert.exists():
        write_self_signed(cert, key, "localhost", days=2)
    tls = make_server_context(cert, key)
    assert tls.native is not None
    client_ctx = ssl.create_default_context(cafile=str(cert))
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(cin, cout, server_hostname="localhost")
    server = NativeServerSession(tls.native, tls.end_point_hash)
    handshake(sslobject_step(client, cin, cout), session_step(server))
    return (client, cout), server


def test_a_large_read_is_fed_in_slices_the_plaintext_whole(tmp_path: Path) -> None:
    (client, cout), server = _pair(tmp_path)
    message = bytes(range(256)) * 4096  # 1 MiB: 64 records
    client.write(message)
    ciphertext = cout.read()
    assert len(ciphertext) > 1 << 20
    plain, _ = server.receive(ciphertext)
    assert plain == message
    # A record cut anywhere by the socket reads is put together again.
    client.write(message[:70_000])
    ciphertext = cout.read()
    got = b"".join(server.receive(ciphertext[i:i + 50_001])[0]
                   for i in range(0, len(ciphertext), 50_001))
    assert got == message[:70_000]


def test_a_session_that_received_a_large_message_does_not_keep_its_size(
        tmp_path: Path) -> None:
    """The library's input buffer keeps the largest size it ever held: fed 256 KiB socket
    reads whole, each session kept about 350 KB after its message; fed in slices, one
    or two records' worth."""
    sessions = [_pair(tmp_path) for _ in range(20)]
    chunk = b"x" * (256 * 1024)
    ciphertexts = []
    for (client, cout), _ in sessions:
        client.write(chunk)
        ciphertexts.append(cout.read())
    before = _malloc_in_use()
    for ((_, _), server), ciphertext in zip(sessions, ciphertexts, strict=True):
        assert server.receive(ciphertext)[0] == chunk
    kept_each = (_malloc_in_use() - before) / len(sessions)
    assert kept_each < 64 * 1024, kept_each


def _record(n: int) -> bytes:
    return bytes([23, 3, 3, n >> 8, n & 0xFF]) + b"r" * n


def test_record_slices_cut_only_between_records() -> None:
    from smtpgate.tls.bio import record_slices

    data = _record(100) + _record(200) + _record(16401) + _record(50)
    cuts = record_slices(data, 400)
    assert cuts == [(0, 310), (310, 310 + 16406), (310 + 16406, len(data))]
    assert b"".join(data[a:b] for a, b in cuts) == data
    # A partial record at the end (the socket read cut it) is the last piece.
    cut_short = data[:-20]
    assert record_slices(cut_short, 400)[-1] == (310 + 16406, len(cut_short))
    # Less than a header left: still handed over whole.
    assert record_slices(data + b"\x17\x03", 400)[-1] == (310 + 16406, len(data) + 2)
