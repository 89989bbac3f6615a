"""nginx mail proxy ``auth_http`` (ngx_mail_auth_http_module): parse the request,
format the answer. Sans-IO: bytes in, an `AuthHttpRequest` out; an `AuthHttpAnswer`
in, bytes out.

Theory of operation
-------------------
nginx opens one connection per login attempt and sends one ``GET <uri>
HTTP/1.0`` with headers and no body; it reads the answer's headers only (status
line and body are ignored) and closes. So this is not a general HTTP server: one
request, headers only, then the connection ends.

Why hand-written rather than aiohttp: the whole exchange is one header block in
and four header lines out, and what matters is refusing what nginx never sends
(a body, folded or duplicated headers, control characters, more than
``MAX_REQUEST_BYTES``) with no framework in between deciding otherwise; an HTTP
framework would add a dependency, a routing layer and its own leniencies
(header folding, chunked bodies) for none of that.

What nginx sends (its auth_http module and documentation): ``Auth-Method``
(``plain`` for both SMTP AUTH PLAIN and LOGIN, ``cram-md5``, ``apop``,
``external``, ``none``), ``Auth-User`` and ``Auth-Pass`` percent-encoded (space,
``%`` and the bytes 0x00-0x1F become ``%XX``; DEL and the bytes from 0x80 on are
passed raw, as the client typed them, UTF-8 or not), ``Auth-Salt`` (the CRAM-MD5
challenge it issued), ``Auth-Protocol``, ``Auth-Login-Attempt``, ``Client-IP``,
``Client-Host``, ``Auth-SSL``/``Auth-SSL-Protocol``, ``Proxy-Protocol-Addr``
(behind a PROXY-protocol balancer), and for ``none``
``Auth-SMTP-Helo/From/To``. What it reads back: ``Auth-Status`` (``OK`` or the
error text for the client), ``Auth-Server`` and ``Auth-Port`` on success, and
``Auth-User`` (the login it then gives the upstream in ``XCLIENT LOGIN=``),
``Auth-Wait`` (seconds before the client may try again; without it nginx closes
the session) and ``Auth-Error-Code`` (SMTP's code and enhanced code).

Header injection: a client's CR LF in its login reaches us percent-encoded
(``%0D%0A``). The decoded name goes to the SASL exchange, which refuses control
characters in a name; nothing the client sent is ever written back into a
header of the answer (``Auth-User`` is the account's name from the directory,
xtext-encoded: ASCII with no space or control character).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtpgate.client.engine import xtext
from smtpgate.smtp.peer_address import reported_address

#: The request's header block, at most. nginx's requests are a few hundred bytes;
#: ``auth_http_pass_client_cert`` adds a url-escaped PEM certificate (a few KiB).
#: 32 KiB holds that with room, and bounds what a local client can make us buffer.
MAX_REQUEST_BYTES = 32 * 1024
#: Header lines, at most (nginx sends about 15, 25 with every TLS detail).
MAX_HEADERS = 64
#: nginx's documentation: stop sending Auth-Wait after 10-20 attempts, as it
#: keeps memory per attempt until the session ends. After this many, a failure
#: ends the session.
MAX_WAITED_ATTEMPTS = 10
#: ``Auth-SSL-Protocol`` as nginx writes it: OpenSSL's protocol name, one token
#: (``TLSv1.3``). It becomes the auth log's unquoted ``tls=`` field, where a space
#: or a quote would let the sender write fields of its own.
_TLS_PROTOCOL = re.compile(r"[A-Za-z0-9._-]{1,32}")


class AuthHttpError(ValueError):
    """The request is not one nginx sends; the text goes to our log only."""


@dataclass(frozen=True, slots=True)
class AuthHttpRequest:
    """One decoded ``auth_http`` request."""

    method: str
    user: str
    password: str
    #: The CRAM-MD5 challenge nginx issued ("" for other methods), without CRLF.
    salt: str
    protocol: str
    attempt: int
    client_ip: str
    client_host: str
    #: The client's TLS version as nginx reports it (None: no TLS to nginx).
    tls_version: str | None
    helo: str = ""
    smtp_from: str = ""
    smtp_to: str = ""
    #: "Auth-User" or "Auth-Pass" when that header's bytes are no UTF-8 (a client
    #: that sent its login in Latin-1: nginx passes the bytes on as typed); the
    #: field is then "". A client's input, answered as a failed login, not as a
    #: request nginx would never send.
    unreadable: str = ""
    #: The client address of the PROXY header nginx received (``Proxy-Protocol-Addr``,
    #: nginx behind a balancer), "" without one. Never used as the client's address:
    #: nginx takes that header from whoever reaches its port, and its own
    #: ``set_real_ip_from`` says whose to believe (then ``Client-IP`` is this one).
    proxy_client_ip: str = ""


@dataclass(frozen=True, slots=True)
class AuthHttpAnswer:
    """What nginx is told: success with the upstream, or an error."""

    ok: bool
    server: str = ""
    port: int = 0
    #: On success, the account (its canonical name): sent as ``Auth-User``, which
    #: nginx then writes, as it stands, into ``XCLIENT LOGIN=`` instead of what its
    #: client typed.
    account: str = ""
    #: Error text for the client (ASCII, no CR/LF: our own constants only).
    text: str = ""
    #: SMTP code and enhanced code prefixed to the text (AUTH_FAILED: 535, 5.7.8).
    error_code: str = ""
    #: Seconds nginx waits before letting the client try again (None: it closes).
    wait: int | None = None


def percent_decode(value: str) -> bytes:
    """nginx's escaping of Auth-User/Auth-Pass undone: ``%XX`` to the byte.

    Raises:
        AuthHttpError: a ``%`` not followed by two hex digits.
    """
    raw = value.encode("latin-1")
    out = bytearray()
    i = 0
    while i < len(raw):
        b = raw[i]
        if b == 0x25:  # '%'
            hexpair = raw[i + 1 : i + 3]
            if len(hexpair) != 2 or not all(c in b"0123456789abcdefABCDEF" for c in hexpair):
                raise AuthHttpError("bad percent escape")
            out.append(int(hexpair, 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return bytes(out)


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class AuthHttpParser:
    """Collects one request; ``receive_data`` returns it once the header block is
    complete (None until then).

    Raises:
        AuthHttpError: from ``receive_data``, for anything nginx would not send.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.done = False

    def receive_data(self, data: bytes) -> AuthHttpRequest | None:
        if self.done:
            raise AuthHttpError("data after the request")
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_REQUEST_BYTES:
                raise AuthHttpError(f"request header over {MAX_REQUEST_BYTES} bytes")
            return None
        if end + 4 > MAX_REQUEST_BYTES:
            raise AuthHttpError(f"request header over {MAX_REQUEST_BYTES} bytes")
        if len(self._buf) > end + 4:
            # nginx sends no body: bytes after the header are not nginx talking.
            raise AuthHttpError("request has a body")
        self.done = True
        return parse_request(bytes(self._buf[:end]))


def parse_request(head: bytes) -> AuthHttpRequest:
    """The header block (without its final blank line) as a request.

    Raises:
        AuthHttpError: a bad request line or header, or a field nginx always sends
            missing or malformed.
    """
    lines = head.split(b"\r\n")
    request_line = lines[0].split(b" ")
    if len(request_line) != 3 or request_line[0] != b"GET" or not request_line[2].startswith(b"HTTP/1."):
        raise AuthHttpError("not a GET request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise AuthHttpError(f"more than {MAX_HEADERS} headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        # Bare CR or LF, NUL and the other C0 controls never appear in nginx's
        # headers (it escapes them), and folded lines are not HTTP/1.0 as nginx
        # writes it. DEL does: nginx leaves it raw in Auth-User and Auth-Pass.
        if any(b < 0x20 and b != 0x09 for b in line):
            raise AuthHttpError("control character in a header")
        name, sep, value = line.partition(b":")
        if (not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t")
                or b"\x7f" in name):
            raise AuthHttpError("malformed header line")
        key = name.decode("latin-1").lower()
        if key in headers:
            raise AuthHttpError(f"duplicate header {key}")
        headers[key] = value.strip(b" \t").decode("latin-1")

    def need(key: str) -> str:
        if key not in headers:
            raise AuthHttpError(f"missing {key}")
        return headers[key]

    method = need("auth-method").lower()
    # nginx on a dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d: the
    # IPv4 address is the one the guard counts and the auth log must name.
    client_ip = reported_address(need("client-ip"))
    if client_ip is None:
        raise AuthHttpError("Client-IP is not an address")
    attempt_text = headers.get("auth-login-attempt", "1")
    # ASCII digits only: "²" (0xB2 in Latin-1) passes str.isdigit() but not int().
    if not (attempt_text.isascii() and attempt_text.isdigit()) or len(attempt_text) > 6:
        raise AuthHttpError("bad Auth-Login-Attempt")
    user = _utf8(percent_decode(headers.get("auth-user", "")))
    password = _utf8(percent_decode(headers.get("auth-pass", "")))
    unreadable = "Auth-User" if user is None else "Auth-Pass" if password is None else ""
    ssl = headers.get("auth-ssl", "").lower() == "on"
    tls_protocol = headers.get("auth-ssl-protocol") or "unknown"
    if not _TLS_PROTOCOL.fullmatch(tls_protocol):
        raise AuthHttpError("Auth-SSL-Protocol is not a protocol name")
    return AuthHttpRequest(
        method=method,
        user=user or "",
        password=password or "",
        salt=headers.get("auth-salt", ""),
        protocol=need("auth-protocol").lower(),
        attempt=int(attempt_text),
        client_ip=client_ip,
        client_host=headers.get("client-host", ""),
        tls_version=tls_protocol if ssl else None,
        helo=headers.get("auth-smtp-helo", ""),
        smtp_from=headers.get("auth-smtp-from", ""),
        smtp_to=headers.get("auth-smtp-to", ""),
        unreadable=unreadable,
        proxy_client_ip=reported_address(headers.get("proxy-protocol-addr", "")) or "",
    )


def format_answer(answer: AuthHttpAnswer) -> bytes:
    """The HTTP/1.0 answer nginx reads (status 200 either way: nginx goes by
    ``Auth-Status``).

    Raises:
        ValueError: a field would break the header framing (a bug, never client data).
    """
    if answer.ok:
        fields = [("Auth-Status", "OK"), ("Auth-Server", answer.server),
                  ("Auth-Port", str(answer.port))]
        if answer.account:
            # nginx copies the login into XCLIENT LOGIN= unescaped, and XCLIENT's
            # values are xtext: the name as typed broke there when it held a "+",
            # a space or a non-ASCII letter (501, the client cut off after its
            # login was accepted), and was the typed spelling, not the account.
            # xtext is ASCII without spaces or controls, so it is a header value too.
            fields.append(("Auth-User", xtext(answer.account)))
    else:
        fields = [("Auth-Status", answer.text)]
        if answer.error_code:
            fields.append(("Auth-Error-Code", answer.error_code))
        if answer.wait is not None:
            fields.append(("Auth-Wait", str(answer.wait)))
    out = [b"HTTP/1.0 200 OK"]
    for name, value in fields:
        if not value.isascii() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError(f"{name} value would break the header: {value!r}")
        out.append(f"{name}: {value}".encode("ascii"))
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"


def bad_request_answer() -> bytes:
    """For a request nginx would not send: HTTP 400 (nginx logs an invalid answer
    and tells its client of a temporary problem)."""
    return b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


def split_salt(salt: str) -> tuple[str, str] | None:
    """nginx's CRAM-MD5 challenge ``<local@host>`` (it may keep a trailing CRLF) as
    (local, host), or None if it is not a msg-id."""
    s = salt.strip()
    if not (s.startswith("<") and s.endswith(">")):
        return None
    local, sep, host = s[1:-1].partition("@")
    if not sep or not local or not host:
        return None
    return local, host
