"""The PROXY protocol header (HAProxy's spec, versions 1 and 2), sans-IO.

A load balancer in TCP mode (HAProxy ``send-proxy`` / ``send-proxy-v2``, nginx
``proxy_protocol on``, AWS NLB) opens its connection to smtpgate with one header
that names the client it accepted; only then come the client's bytes (the TLS
ClientHello on port 465). Everything smtpgate decides by address (the guard,
known addresses, conditional access, the Received line, the logs) must see that
client, not the balancer.

Written here rather than taken from PyPI: the packages there are unmaintained
or parse only version 1, and the format is small and fixed; what matters is
strictness (this is input from the network, parsed before anything else), and
that is easiest to see and fuzz in one short file. The parser never reads past
the header: bytes after it stay in ``rest`` for the SMTP layer.

Refused (``ProxyHeaderError``): anything that is not a complete, well-formed
header within ``MAX_V2_LENGTH`` bytes; v1 lines over 107 bytes or with bad
addresses or ports; v2 with an unknown version or command, an address block
shorter than its family needs, a TLV running past the end, or a CRC32C TLV that
does not match.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: The spec's maximum v1 line, CRLF included.
V1_MAX = 107
#: A v2 header's total size we accept: the addresses and the TLVs HAProxy sends
#: (ALPN, SNI, SSL details, unique id) fit in a few hundred bytes; the format
#: allows 64 KiB, which nobody needs and an attacker could use.
MAX_V2_LENGTH = 4096

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_TYPE_NETNS = 0x30


class ProxyHeaderError(ValueError):
    """The connection did not start with a valid PROXY header; close it."""


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What the header said. ``source`` is None for v1 ``UNKNOWN``, a v2 ``LOCAL``
    command (the balancer's own health check) or an address family we do not
    relay (AF_UNIX, UNSPEC): the connection's own addresses then stand."""

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    #: v2 TLVs by type (the last of each type), values as sent.
    tlvs: dict[int, bytes] = field(default_factory=dict)


class ProxyHeaderParser:
    """Feed bytes until ``feed`` returns the header; ``rest`` then holds what
    came after it."""

    def __init__(self, max_v2_length: int = MAX_V2_LENGTH) -> None:
        self._buf = b""
        self._max = max_v2_length
        self.rest = b""

    def feed(self, data: bytes) -> ProxyInfo | None:
        """None while the header is incomplete.

        Raises:
            ProxyHeaderError: the bytes so far cannot start a valid header.
        """
        self._buf += data
        buf = self._buf
        if buf[:1] == b"P":
            return self._v1()
        head = buf[: len(V2_SIGNATURE)]
        if not V2_SIGNATURE.startswith(head):
            raise ProxyHeaderError("no PROXY protocol header")
        return self._v2()

    def _v1(self) -> ProxyInfo | None:
        buf = self._buf
        if not V1_PREFIX.startswith(buf[: len(V1_PREFIX)]):
            raise ProxyHeaderError("no PROXY protocol header")
        end = buf.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buf) >= V1_MAX or b"\n" in buf:
                raise ProxyHeaderError("PROXY v1 line too long or not ended by CRLF")
            return None
        if b"\n" in buf[:end]:
            # Refused whether or not the CRLF came in the same read (a bare LF
            # alone is refused above): the same bytes, one verdict.
            raise ProxyHeaderError("PROXY v1 line not ended by CRLF")
        self.rest = buf[end + 2 :]
        return parse_v1(buf[:end])

    def _v2(self) -> ProxyInfo | None:
        buf = self._buf
        if len(buf) < 16:
            return None
        length = int.from_bytes(buf[14:16], "big")
        if 16 + length > self._max:
            raise ProxyHeaderError(f"PROXY v2 header of {16 + length} bytes (limit {self._max})")
        if len(buf) < 16 + length:
            return None
        self.rest = buf[16 + length :]
        return parse_v2(buf[: 16 + length])


def _port(text: bytes) -> int:
    if not text.isdigit() or (len(text) > 1 and text[:1] == b"0") or int(text) > 65535:
        raise ProxyHeaderError(f"bad port {text!r}")
    return int(text)


def parse_v1(line: bytes) -> ProxyInfo:
    """``PROXY TCP4 src dst sport dport`` (without the CRLF)."""
    parts = line.split(b" ")
    if parts[:2] == [b"PROXY", b"UNKNOWN"]:
        return ProxyInfo(1, None, None)  # the rest of the line is to be ignored
    if len(parts) != 6 or parts[0] != b"PROXY" or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 line")
    want = ipaddress.IPv4Address if parts[1] == b"TCP4" else ipaddress.IPv6Address
    if b"%" in parts[2] or b"%" in parts[3]:
        # ipaddress takes any text after an IPv6 zone's '%' (it reached the logs as
        # sent); HAProxy and nginx write addresses with inet_ntop, which has none.
        raise ProxyHeaderError("IPv6 zone in a PROXY v1 address")
    try:
        src, dst = (want(p.decode("ascii")) for p in parts[2:4])
    except (ValueError, UnicodeDecodeError):
        raise ProxyHeaderError("bad address in PROXY v1 line") from None
    return ProxyInfo(1, (_spelled(src), _port(parts[4])), (_spelled(dst), _port(parts[5])))


def _spelled(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An IPv4 client that a dual-stack balancer reports in IPv6 form (HAProxy's
    ``send-proxy`` on ``bind :::587 v4v6`` writes ``TCP6 ::ffff:192.0.2.7``) is that
    IPv4 address, as in version 2."""
    return _unmapped(addr) if isinstance(addr, ipaddress.IPv6Address) else str(addr)


def parse_v2(header: bytes) -> ProxyInfo:
    """A complete v2 header: signature, version/command, family, length, body."""
    if header[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("no PROXY v2 signature")
    ver_cmd, family = header[12], header[13]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header with version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    body = header[16:]
    if (family & 0x0F) > 2 or (family >> 4) > 3:
        raise ProxyHeaderError(f"PROXY v2 header with unknown family {family:#04x}")
    size = {1: 12, 2: 36, 3: 216}.get(family >> 4, 0)
    if len(body) < size:
        raise ProxyHeaderError("PROXY v2 address block shorter than its family needs")
    tlvs = _tlvs(header, 16 + size)
    if command == 0 or family >> 4 in (0, 3):  # LOCAL, or UNSPEC / AF_UNIX
        return ProxyInfo(2, None, None, tlvs)
    if family >> 4 == 1:
        src: str = str(ipaddress.IPv4Address(body[0:4]))
        dst: str = str(ipaddress.IPv4Address(body[4:8]))
        ports = body[8:12]
    else:
        src = _unmapped(ipaddress.IPv6Address(body[0:16]))
        dst = _unmapped(ipaddress.IPv6Address(body[16:32]))
        ports = body[32:36]
    return ProxyInfo(
        2,
        (src, int.from_bytes(ports[0:2], "big")),
        (dst, int.from_bytes(ports[2:4], "big")),
        tlvs,
    )


def _unmapped(addr: ipaddress.IPv6Address) -> str:
    """An IPv4 client seen through an IPv6 socket is that IPv4 address."""
    return str(addr.ipv4_mapped or addr)


def _tlvs(header: bytes, start: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = start
    crc_at = -1
    while i < len(header):
        if i + 3 > len(header):
            raise ProxyHeaderError("PROXY v2 TLV cut short")
        kind = header[i]
        length = int.from_bytes(header[i + 1 : i + 3], "big")
        if i + 3 + length > len(header):
            raise ProxyHeaderError("PROXY v2 TLV runs past the header")
        if kind == PP2_TYPE_CRC32C:
            if length != 4:
                raise ProxyHeaderError("PROXY v2 CRC32C TLV is not 4 bytes")
            crc_at = i + 3
        out[kind] = header[i + 3 : i + 3 + length]
        i += 3 + length
    if crc_at >= 0:
        zeroed = header[:crc_at] + b"\0\0\0\0" + header[crc_at + 4 :]
        if crc32c(zeroed) != int.from_bytes(header[crc_at : crc_at + 4], "big"):
            raise ProxyHeaderError("PROXY v2 CRC32C does not match")
    return out


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the v2 CRC32C TLV carries it."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
