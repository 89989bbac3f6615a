"""What the server and client TLS sessions share: OpenSSL driven over memory BIOs.

See ``session.py`` for why smtpgate moves TLS records by hand (channel binding:
Python's ``ssl`` has no keying-material exporter).
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

READ_SIZE = 16384
#: Ciphertext handed to the library at a time. Its input buffer keeps the largest
#: size it ever held for the life of the connection (4/3 of it): a 256 KiB socket
#: read fed whole left every session that had sent a large message holding 350 KB.
FEED_SIZE = 16384


def record_slices(data: bytes, size: int) -> list[tuple[int, int]]:
    """``data`` cut into pieces of about ``size`` at TLS record boundaries (a record
    longer than ``size`` is one piece; a partial record at the end is the last), so
    that the library never waits for the rest of a record it was half fed."""
    cuts: list[tuple[int, int]] = []
    start = at = 0
    end = len(data)
    while at + 5 <= end:
        after = at + 5 + ((data[at + 3] << 8) | data[at + 4])
        if after - start > size and at > start:
            cuts.append((start, at))
            start = at
        at = after
    cuts.append((start, end))
    return cuts


class TlsError(Exception):
    """The handshake or a record failed; the connection must be closed."""


def describe(e: SSL.Error) -> str:
    """OpenSSL's error queue as one line."""
    try:
        return "; ".join(str(x[2]) for x in e.args[0]) or "unknown"
    except (IndexError, TypeError):
        return str(e)


def end_point_hash(cert: x509.Certificate) -> bytes:
    """RFC 5929 §4.1 tls-server-end-point: the certificate hashed with its signature
    hash, SHA-256 for MD5 and SHA-1 signatures."""
    algo = cert.signature_hash_algorithm
    name = "sha256" if algo is None or isinstance(algo, (hashes.MD5, hashes.SHA1)) else algo.name
    return hashlib.new(name, cert.public_bytes(Encoding.DER)).digest()


class RecordSession:
    """``receive`` and ``read_plaintext`` for a TLS connection over memory BIOs, in
    either library smtpgate drives (pyOpenSSL, ``BioConnection``; the stdlib ``ssl``
    object, ``native_session.py``).

    Why one base with hooks: the libraries name the steps and the errors
    differently, but what each outcome means (wait for more ciphertext, the peer's
    close_notify, a failure) is one rule for the server and client sessions alike.
    """

    __slots__ = ("handshake_done", "peer_closed")

    #: The library's errors: more ciphertext needed, close_notify received, any other.
    _WANT_READ: ClassVar[type[Exception]]
    _ZERO_RETURN: ClassVar[type[Exception]]
    _ERROR: ClassVar[type[Exception]]
    #: ``receive`` hands over data read just before the peer's close_notify (a client
    #: reading the server's 221 and its close in one go, a server reading a client's
    #: last commands and its close) rather than failing, and sets ``peer_closed``.
    _EOF_AFTER_DATA: ClassVar[bool] = False

    def __init__(self) -> None:
        self.handshake_done = False
        #: The peer's close came right after the data ``receive`` returned.
        self.peer_closed = False

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed ciphertext; return (plaintext received, ciphertext to send).

        Raises:
            TlsError: the handshake or a record failed.
            EOFError: the peer sent close_notify.
        """
        if len(data) <= FEED_SIZE or not self.handshake_done:
            return self._receive(data)
        view = memoryview(data)
        chunks: list[bytes] = []
        for start, end in record_slices(data, FEED_SIZE):
            self._feed(view[start:end])
            try:
                self._read_into(chunks, eof_after_data=self._EOF_AFTER_DATA)
            except EOFError:
                if not (self._EOF_AFTER_DATA and chunks):
                    raise
                self.peer_closed = True
                break  # as within one feed: the data first, the close on the next call
        return b"".join(chunks), self.outgoing()

    def _receive(self, data: bytes) -> tuple[bytes, bytes]:
        if data:
            self._feed(data)
        if not self.handshake_done:
            try:
                self._handshake()
            except self._WANT_READ:
                return b"", self.outgoing()
            except self._ERROR as e:
                self._handshake_failed()
                raise TlsError(f"handshake failed: {self._describe(e)}") from None
            self.handshake_done = True
        return self.read_plaintext(eof_after_data=self._EOF_AFTER_DATA), self.outgoing()

    def read_plaintext(self, *, eof_after_data: bool = False) -> bytes:
        """Every plaintext byte the library can decrypt now.

        Raises:
            EOFError: the peer sent close_notify, or the stream ended without one
                (unless data came first and ``eof_after_data`` is set).
            TlsError: a record failed.
        """
        chunks: list[bytes] = []
        self._read_into(chunks, eof_after_data=eof_after_data)
        return b"".join(chunks)

    def _read_into(self, chunks: list[bytes], *, eof_after_data: bool) -> None:
        """`read_plaintext` appending to ``chunks`` (what came before included)."""
        while self._more(chunks):
            try:
                chunk = self._read_record()
            except self._WANT_READ:
                break
            except self._ZERO_RETURN:
                if chunks and eof_after_data:
                    self.peer_closed = True
                    break
                raise EOFError from None
            except self._ERROR as e:
                raise TlsError(f"TLS error: {self._describe(e)}") from None
            if not chunk:  # a clean end without close_notify
                if chunks and eof_after_data:
                    self.peer_closed = True
                    break
                raise EOFError
            chunks.append(chunk)

    # --- what each library provides ----------------------------------------------

    def _feed(self, data: bytes | memoryview) -> None:
        """Hand ciphertext to the library."""
        raise NotImplementedError

    def _handshake(self) -> None:
        """One step of the handshake; raises ``_WANT_READ`` until it is done."""
        raise NotImplementedError

    def _handshake_failed(self) -> None:
        """Called before a failed handshake raises (the client keeps the alert)."""

    def _read_record(self) -> bytes:
        """Up to ``READ_SIZE`` decrypted bytes."""
        raise NotImplementedError

    def _more(self, chunks: list[bytes]) -> bool:
        """Whether to read again (the stdlib session stops before the error)."""
        return True

    def outgoing(self) -> bytes:
        """Records the library has queued for the peer."""
        raise NotImplementedError

    @staticmethod
    def _describe(e: Exception) -> str:
        return str(e)


class BioConnection(RecordSession):
    """One ``SSL.Connection`` over memory BIOs: ciphertext in/out, plaintext in/out."""

    __slots__ = ("_conn",)

    _WANT_READ = SSL.WantReadError
    _ZERO_RETURN = SSL.ZeroReturnError
    _ERROR = SSL.Error

    def __init__(self, conn: SSL.Connection) -> None:
        super().__init__()
        self._conn = conn

    def _feed(self, data: bytes | memoryview) -> None:
        self._conn.bio_write(data)

    def _handshake(self) -> None:
        self._conn.do_handshake()

    def _read_record(self) -> bytes:
        return self._conn.recv(READ_SIZE)

    @staticmethod
    def _describe(e: Exception) -> str:
        return describe(e) if isinstance(e, SSL.Error) else str(e)

    def send(self, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext``; return the records to write."""
        conn = self._conn
        view = memoryview(plaintext)
        while view:
            n = conn.send(view[:READ_SIZE].tobytes())
            view = view[n:]
        return self.outgoing()

    def close(self) -> bytes:
        """close_notify records to write (best effort)."""
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass
        return self.outgoing()

    def outgoing(self) -> bytes:
        """Records OpenSSL has queued for the peer."""
        conn = self._conn
        out = []
        while True:
            try:
                chunk = conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out.append(chunk)
        return b"".join(out)

    @property
    def version(self) -> str:
        return str(self._conn.get_protocol_version_name())

    @property
    def cipher(self) -> str:
        return str(self._conn.get_cipher_name() or "")

    def session_bindings(self, first_finished: bytes | None) -> dict[str, bytes]:
        """tls-exporter on TLS 1.3 (RFC 9266 §2: 32 bytes, empty context) and
        tls-unique on TLS 1.2 (RFC 5929 §3: the first Finished of the handshake,
        which the caller picks because it depends on the side)."""
        if self.version == "TLSv1.3":
            return {
                "tls-exporter": self._conn.export_keying_material(
                    b"EXPORTER-Channel-Binding", 32, b""
                )
            }
        if self.version == "TLSv1.2" and first_finished:
            return {"tls-unique": first_finished}
        return {}
