"""The PROXY protocol header parser: HAProxy's own examples, what each version
refuses, and properties over arbitrary bytes and chunkings."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpgate.frontdoor.proxy_header import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    V2_SIGNATURE,
    ProxyHeaderError,
    ProxyHeaderParser,
    ProxyInfo,
    crc32c,
)


def v2(ver_cmd: int = 0x21, family: int = 0x11, addresses: bytes | None = None,
       tlvs: bytes = b"") -> bytes:
    if addresses is None:
        addresses = bytes([192, 0, 2, 7, 127, 0, 0, 1]) + struct.pack("!HH", 50123, 587)
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([ver_cmd, family]) + struct.pack("!H", len(body)) + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def parse(data: bytes) -> tuple[ProxyInfo | None, bytes]:
    p = ProxyHeaderParser()
    info = p.feed(data)
    return info, p.rest


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value


def test_v1_tcp4_and_what_follows_stays() -> None:
    info, rest = parse(b"PROXY TCP4 192.0.2.7 127.0.0.1 50123 587\r\nEHLO x\r\n")
    assert info == ProxyInfo(1, ("192.0.2.7", 50123), ("127.0.0.1", 587))
    assert rest == b"EHLO x\r\n"


def test_v1_tcp6_and_unknown() -> None:
    info, _ = parse(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n")
    assert info is not None and info.source == ("2001:db8::1", 1)
    info, rest = parse(b"PROXY UNKNOWN ff ff\r\n\x16\x03")
    assert info == ProxyInfo(1, None, None) and rest == b"\x16\x03"


def test_v1_ipv6_mapped_ipv4_is_the_ipv4_client() -> None:
    """HAProxy's send-proxy on a dual-stack bind (``:::587 v4v6``) writes an IPv4
    client in IPv6 form; it was kept as '::ffff:c633:6409' (the auth log, the
    Received line), where version 2 gave the IPv4 address."""
    info, _ = parse(b"PROXY TCP6 ::ffff:198.51.100.9 ::ffff:127.0.0.1 4000 587\r\n")
    assert info == ProxyInfo(1, ("198.51.100.9", 4000), ("127.0.0.1", 587))


@pytest.mark.parametrize("line", [
    # A zone's text went into the client's address as sent (log fields forged).
    b'PROXY TCP6 fe80::1%x"user=root" ::1 1 2\r\n',
    b"PROXY TCP6 2001:db8::1 fe80::1%eth0 1 2\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 50123\r\n",          # a field missing
    b"PROXY TCP4 192.0.2.700 127.0.0.1 1 2\r\n",          # not an address
    b"PROXY TCP4 2001:db8::1 127.0.0.1 1 2\r\n",          # family and address disagree
    b"PROXY TCP4 192.0.2.7 127.0.0.1 1 65536\r\n",        # port out of range
    b"PROXY TCP4 192.0.2.7 127.0.0.1 01 2\r\n",           # leading zero
    b"PROXY TCP4 192.0.2.7  127.0.0.1 1 2\r\n",           # two spaces
    b"PROXY UDP4 192.0.2.7 127.0.0.1 1 2\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\n",              # bare LF
    b"PROXY " + b"1" * 120 + b"\r\n",                     # over 107 bytes
    b"EHLO client.example\r\n",                           # no header at all
    b"\x16\x03\x01\x02\x00",                              # a TLS ClientHello
])
def test_v1_refusals(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(line)


def test_v2_ipv4_with_tlvs() -> None:
    header = v2(tlvs=tlv(PP2_TYPE_ALPN, b"smtp") + tlv(PP2_TYPE_AUTHORITY, b"mail.example.org"))
    info, rest = parse(header + b"\x16\x03\x01")
    assert info is not None
    assert info.version == 2 and info.source == ("192.0.2.7", 50123)
    assert info.destination == ("127.0.0.1", 587)
    assert info.tlvs == {PP2_TYPE_ALPN: b"smtp", PP2_TYPE_AUTHORITY: b"mail.example.org"}
    assert rest == b"\x16\x03\x01"


def test_v2_ipv6_mapped_ipv4_is_the_ipv4_client() -> None:
    import ipaddress

    src = ipaddress.IPv6Address("::ffff:198.51.100.9").packed
    dst = ipaddress.IPv6Address("2001:db8::25").packed
    info, _ = parse(v2(family=0x21, addresses=src + dst + struct.pack("!HH", 4000, 465)))
    assert info is not None and info.source == ("198.51.100.9", 4000)
    assert info.destination == ("2001:db8::25", 465)


def test_v2_local_command_keeps_the_connection_addresses() -> None:
    info, _ = parse(v2(ver_cmd=0x20, family=0x00, addresses=b""))
    assert info == ProxyInfo(2, None, None, {})


def test_v2_crc32c_is_checked() -> None:
    body_without = v2(tlvs=tlv(PP2_TYPE_CRC32C, b"\0\0\0\0"))
    good = body_without[:-4] + struct.pack("!I", crc32c(body_without))
    assert parse(good)[0] is not None
    bad = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(ProxyHeaderError, match="CRC32C"):
        parse(bad)


@pytest.mark.parametrize("header", [
    v2(ver_cmd=0x11),                                  # version 1 in a v2 header
    v2(ver_cmd=0x22),                                  # unknown command
    v2(family=0x41),                                   # unknown family
    v2(family=0x13),                                   # unknown transport
    v2(family=0x21),                                   # IPv6 family, IPv4-sized block
    v2(tlvs=b"\x01\x00\x09abc"),                       # TLV longer than the header
    v2(tlvs=b"\x01\x00"),                              # TLV header cut short
    V2_SIGNATURE + b"\x21\x11\xff\xff",                # 64 KiB announced
])
def test_v2_refusals(header: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderParser().feed(header + b"\0" * 70000)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_are_refused(data: bytes) -> None:
    try:
        parse(data)
    except ProxyHeaderError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([
    b"PROXY TCP4 192.0.2.7 127.0.0.1 50123 587\r\n",
    v2(tlvs=tlv(PP2_TYPE_ALPN, b"smtp")),
    v2(ver_cmd=0x20, family=0x00, addresses=b""),
]), st.binary(max_size=20), st.lists(st.integers(1, 40), max_size=20))
def test_any_chunking_gives_the_same_header_and_rest(header: bytes, after: bytes,
                                                      cuts: list[int]) -> None:
    whole = parse(header + after)
    p = ProxyHeaderParser()
    data, got = header + after, None
    for n in cuts:
        piece, data = data[:n], data[n:]
        got = p.feed(piece)
        if got is not None:
            break
    if got is None:
        got = p.feed(data)
        data = b""
    assert (got, p.rest + data) == whole
