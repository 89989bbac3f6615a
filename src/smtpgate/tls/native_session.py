"""Server-side TLS over the stdlib ``ssl`` module's memory-BIO object.

The same sans-IO shape as ``TlsServerSession`` (ciphertext in, plaintext and
ciphertext out), with every record and the handshake handled in C by the
``_ssl`` extension instead of through pyOpenSSL's cffi layer: measured here it
halves the CPU per record and per handshake and holds 14.7 instead of 21.8 KiB
per idle session (bench/README.md). ``tls-exporter`` comes from ``exporter.py``;
tls-unique and tls-server-end-point from the stdlib and the certificate.

Used for every listener that does not ask for client certificates, when the
exporter's self-test passes (``session.open_server_session``). Listeners with
``client_certificates`` keep pyOpenSSL: ``optional`` needs a verify callback that
lets an untrusted certificate through without EXTERNAL, which ``ssl`` lacks.
"""

from __future__ import annotations

import ssl

from smtpgate.sasl.base import ChannelBinding, ClientCertificate
from smtpgate.tls.alpn import take_refused
from smtpgate.tls.bio import READ_SIZE, RecordSession, TlsError
from smtpgate.tls.exporter import tls_exporter
from smtpgate.tls.tickets import take_undecodable_server_name


class ServerNameNotAscii(TlsError):
    """The ClientHello's server name (SNI) is not ASCII, which RFC 6066 §3 requires
    (a HostName of A-labels): CPython cannot decode it for the servername callback,
    and the handshake fails. Anyone may send one, so the server logs these under a
    budget (``server/connection.py``)."""

    def __init__(self, name: bytes) -> None:
        # Escaped byte by byte (control characters too): the name goes to a log line.
        shown = "".join(chr(b) if 0x20 < b < 0x7F and b not in b"'\\" else f"\\x{b:02x}"
                        for b in name[:64])
        super().__init__(f"handshake failed: the client sent a server name (SNI) that is "
                         f"not ASCII, '{shown}' (RFC 6066 §3 allows only A-labels)")


def describe_ssl_error(e: ssl.SSLError) -> str:
    """OpenSSL's reason in the words pyOpenSSL would use (``no shared cipher``)."""
    reason = getattr(e, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    return str(e) or type(e).__name__


class NativeServerSession(RecordSession):
    """One server-side TLS connection on ``ssl.SSLObject``."""

    __slots__ = ("_end_point", "_in", "_obj", "_out")

    _WANT_READ = ssl.SSLWantReadError
    _ZERO_RETURN = ssl.SSLZeroReturnError
    _ERROR = ssl.SSLError
    #: A client's last commands and its close_notify in one read are answered.
    _EOF_AFTER_DATA = True

    def __init__(self, context: ssl.SSLContext, end_point_hash: bytes) -> None:
        super().__init__()
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=True)
        self._end_point = end_point_hash

    def _feed(self, data: bytes | memoryview) -> None:
        self._in.write(data)

    def _handshake(self) -> None:
        try:
            self._obj.do_handshake()
        except ssl.SSLError:
            refused = take_refused()
            if refused is not None:
                raise refused from None
            name = take_undecodable_server_name()
            if name is not None:
                raise ServerNameNotAscii(name) from None
            raise

    def _read_record(self) -> bytes:
        return self._obj.read(READ_SIZE)

    def _more(self, chunks: list[bytes]) -> bool:
        # Stop once no ciphertext and no decrypted byte is left, rather than by the
        # SSLWantReadError of one read too many: raising it cost a sixth of the CPU
        # of a NOOP (bench/README.md). A partial record still ends in that error.
        return bool(self._in.pending or self._obj.pending() or not chunks)

    @staticmethod
    def _describe(e: Exception) -> str:
        return describe_ssl_error(e) if isinstance(e, ssl.SSLError) else str(e)

    def send(self, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext``; return the records to write."""
        try:
            self._obj.write(plaintext)
        except ssl.SSLError as e:
            raise TlsError(f"TLS error: {describe_ssl_error(e)}") from None
        return self._out.read()

    def close(self) -> bytes:
        """close_notify records to write (best effort)."""
        try:
            self._obj.unwrap()
        except (ssl.SSLError, ValueError):
            pass
        return self._out.read()

    def outgoing(self) -> bytes:
        return self._out.read()

    @property
    def version(self) -> str:
        return self._obj.version() or ""

    @property
    def cipher(self) -> str:
        cipher = self._obj.cipher()
        return cipher[0] if cipher else ""

    def channel_binding(self) -> ChannelBinding:
        """Every binding type computable on this connection (RFC 5929, RFC 9266)."""
        data = {"tls-server-end-point": self._end_point}
        version = self.version
        if version == "TLSv1.3":
            exported = tls_exporter(self._obj)
            if exported is not None:
                data["tls-exporter"] = exported
        elif version == "TLSv1.2":
            # TLS 1.2 is never resumed (tickets.py): the client's Finished.
            unique = self._obj.get_channel_binding("tls-unique")
            if unique:
                data["tls-unique"] = unique
        return ChannelBinding(data)

    def client_certificate(self) -> tuple[ClientCertificate | None, str]:
        """Never asked for on these listeners (see the module docstring)."""
        return None, ""
