"""A TLS ClientHello written byte by byte (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2), for
tests that must send what no TLS library would: a server name (SNI, RFC 6066 §3)
that is not ASCII."""

from __future__ import annotations

import os
import struct


def _vector(data: bytes, length_octets: int) -> bytes:
    return len(data).to_bytes(length_octets, "big") + data


def _extension(kind: int, body: bytes) -> bytes:
    return struct.pack("!H", kind) + _vector(body, 2)


def client_hello(server_name: bytes) -> bytes:
    """One TLS record holding a TLS 1.2 ClientHello that names ``server_name`` as
    it is (no encoding checked), with ECDHE suites any OpenSSL server takes."""
    suites = struct.pack("!4H", 0xC02F, 0xC02B, 0xC030, 0xC02C)  # ECDHE AES-GCM, RSA and ECDSA
    sni = _vector(b"\x00" + _vector(server_name, 2), 2)  # host_name(0)
    extensions = b"".join([
        _extension(0x0000, sni),                                        # server_name
        _extension(0x000A, _vector(struct.pack("!2H", 0x001D, 0x0017), 2)),  # x25519, P-256
        _extension(0x000B, _vector(b"\x00", 1)),                        # ec_point_formats
        _extension(0x000D, _vector(struct.pack("!4H", 0x0804, 0x0403, 0x0401, 0x0503), 2)),
    ])
    body = (b"\x03\x03" + os.urandom(32) + _vector(b"", 1) + _vector(suites, 2)
            + _vector(b"\x00", 1) + _vector(extensions, 2))
    handshake = b"\x01" + _vector(body, 3)  # client_hello(1)
    return b"\x16\x03\x01" + _vector(handshake, 2)  # handshake(22), record version TLS 1.0
