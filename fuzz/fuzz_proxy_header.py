"""Fuzz the PROXY protocol header parser (frontdoor/proxy_header.py), v1 and v2.

Input: byte 0 seeds the random cut points; the rest is what a load balancer
sends first (``_common.expand`` applies). Invariants, beyond "only
ProxyHeaderError":

* the bytes cut differently give the same header (and the same bytes after it)
  or a refusal;
* the parser never reads past the header: the header's bytes followed by ``rest``
  are the input, a v1 header ends at its CRLF within 107 bytes, a v2 one is
  16 + its length bytes, at most MAX_V2_LENGTH;
* addresses are valid IP addresses of the header's family (an IPv4-mapped IPv6
  one as IPv4), ports 0-65535, v1 ``UNKNOWN`` and v2 ``LOCAL`` carry none;
* the CRC-32C agrees with a bit-by-bit computation (RFC 3720 §B.4 polynomial).
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

with C.instrument(__name__ == "__main__"):
    from smtpgate.frontdoor.proxy_header import (
        MAX_V2_LENGTH,
        V1_MAX,
        V2_SIGNATURE,
        ProxyHeaderError,
        ProxyHeaderParser,
        ProxyInfo,
        crc32c,
    )


def run(chunks: list[bytes]) -> tuple[ProxyInfo, bytes] | str:
    parser = ProxyHeaderParser()
    try:
        for i, chunk in enumerate(chunks):
            info = parser.feed(chunk)
            if info is not None:  # what follows: rest, then the chunks not fed yet
                return info, parser.rest + b"".join(chunks[i + 1 :])
    except ProxyHeaderError:
        return "refused"
    return "incomplete"


def crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def check(stream: bytes, info: ProxyInfo, rest: bytes) -> None:
    header_len = len(stream) - len(rest)
    if stream[header_len:] != rest or header_len <= 0:
        C.fail("rest is not what follows the header", (info, rest[:40]))
    if info.version == 1:
        if header_len > V1_MAX or not stream[:header_len].endswith(b"\r\n"):
            C.fail("v1 header not one CRLF line within 107 bytes", stream[:header_len])
    else:
        length = int.from_bytes(stream[14:16], "big")
        if header_len != 16 + length or header_len > MAX_V2_LENGTH or (
            stream[:12] != V2_SIGNATURE
        ):
            C.fail("v2 header of the wrong size", (header_len, length))
    if (info.source is None) != (info.destination is None):
        C.fail("one address without the other", info)
    for end in (info.source, info.destination):
        if end is None:
            continue
        addr, port = end
        ip = ipaddress.ip_address(addr)
        if str(ip) != addr or not 0 <= port <= 65535:
            C.fail("bad address or port", info)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            C.fail("IPv4-mapped address not unmapped", info)
    if info.version == 1 and stream[6:13] == b"UNKNOWN" and info.source is not None:
        C.fail("v1 UNKNOWN with an address", info)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    stream = C.expand(data[1:])
    results = [run(chunks) for chunks in C.chunkings(stream, data[0], bytewise_limit=1024)]
    if any(r != results[0] for r in results[1:]):
        C.fail("chunking changes the header", results)
    if not isinstance(results[0], str):
        check(stream, *results[0])
    sample = stream[:256]
    if crc32c(sample) != crc32c_bitwise(sample):
        C.fail("CRC-32C differs from the bitwise computation", sample)


if __name__ == "__main__":
    C.main(TestOneInput)
