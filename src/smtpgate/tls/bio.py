"""What the server and client TLS sessions share: OpenSSL driven over memory BIOs.

See ``session.py`` for why smtpgate moves TLS records by hand (channel binding:
Python's ``ssl`` has no keying-material exporter).
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

READ_SIZE = 16384


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


class BioConnection:
    """One ``SSL.Connection`` over memory BIOs: ciphertext in/out, plaintext in/out."""

    __slots__ = ("_conn", "handshake_done")

    def __init__(self, conn: SSL.Connection) -> None:
        self._conn = conn
        self.handshake_done = False

    def read_plaintext(self, *, eof_after_data: bool = False) -> bytes:
        """Every plaintext byte OpenSSL can decrypt now.

        Raises:
            EOFError: the peer sent close_notify (unless data came first and
                ``eof_after_data`` is set).
            TlsError: a record failed.
        """
        chunks = []
        conn = self._conn
        while True:
            try:
                chunks.append(conn.recv(READ_SIZE))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                if chunks and eof_after_data:
                    break
                raise EOFError from None
            except SSL.Error as e:
                raise TlsError(f"TLS error: {describe(e)}") from None
        return b"".join(chunks)

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
