"""Strict ALPN on the server: a client that offers protocols must offer "smtp".

Why (the ALPACA attack, USENIX Security 2021): a certificate that names the mail
server is often valid for a web server of the same name too. An attacker in the
path can redirect a browser's HTTPS connection to port 465 (or, after STARTTLS,
to 587); the TLS handshake succeeds, and the mail server reads the HTTP request
as commands and may reflect parts of it back where the browser runs them as the
web site's content. A browser always offers ALPN ("http/1.1", "h2"); an SMTP
client offers none or "smtp". RFC 7301 §3.2: a server that supports none of the
offered protocols answers with the fatal alert ``no_application_protocol``, so
the cross-protocol handshake fails before a byte of HTTP is read.

- No ALPN extension at all (every common mail client): accepted as before;
  OpenSSL calls the selection callback only when the client sent the extension.
- A list with "smtp" in it: "smtp" is selected and sent back.
- Any other list: ``no_application_protocol`` and a handshake failure, which the
  session raises as `AlpnRefused` naming what the client offered.

Both TLS libraries are covered. pyOpenSSL has a selection callback of its own,
whose exception OpenSSL turns into the fatal alert and pyOpenSSL re-raises from
the handshake. The stdlib ``ssl`` module only selects leniently (CPython's
callback answers "no overlap" with no ALPN at all, never with the alert), so its
context gets the callback through ctypes, on the ``SSL_CTX`` pointer that
``exporter.disable_session_cache`` has just checked; the refused list is kept
for the thread that ran the handshake, as ``tickets.py`` keeps an SNI.
"""

from __future__ import annotations

import ctypes
import ssl
import threading
from typing import Any

from OpenSSL import SSL

from smtpgate.tls import exporter
from smtpgate.tls.bio import TlsError

#: The protocol ID the ALPACA paper and its mitigation use for SMTP.
SMTP = b"smtp"
#: SSL_TLSEXT_ERR_OK, SSL_TLSEXT_ERR_ALERT_FATAL.
_OK, _ALERT_FATAL = 0, 2


class AlpnRefused(TlsError):
    """The client offered ALPN protocols and "smtp" was not among them."""

    def __init__(self, offered: list[bytes]) -> None:
        shown = ", ".join(repr(p.decode("ascii", "backslashreplace")) for p in offered[:8])
        super().__init__(f"handshake failed: the client offered ALPN {shown or 'an empty list'}, "
                         f"not 'smtp' (no_application_protocol, RFC 7301 §3.2: a "
                         f"cross-protocol attempt such as ALPACA)")
        self.offered = offered


def parse(wire: bytes) -> list[bytes]:
    """The protocol IDs of a ClientHello's ALPN list (each one length byte, then
    the ID); a truncated last entry is kept as it is."""
    offered: list[bytes] = []
    at = 0
    while at < len(wire):
        length = wire[at]
        offered.append(wire[at + 1:at + 1 + length])
        at += 1 + length
    return offered


def _select(offered: list[bytes]) -> bytes:
    if SMTP in offered:
        return SMTP
    raise AlpnRefused(offered)


def strict_pyopenssl(ctx: SSL.Context) -> None:
    """Make ``ctx`` refuse a client whose ALPN list lacks "smtp"."""
    ctx.set_alpn_select_callback(lambda _conn, offered: _select(offered))


#: The list the stdlib callback refused in this thread's last handshake step.
_refused = threading.local()


def take_refused() -> AlpnRefused | None:
    """The refusal the handshake step just made in this thread raised, once."""
    refused: AlpnRefused | None = getattr(_refused, "error", None)
    _refused.error = None
    return refused


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_ubyte), ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p)


def _native_select(_ssl: int | None, out: Any, outlen: Any, wire: int | None,
                   length: int, _arg: int | None) -> int:
    """``SSL_CTX_alpn_select_cb_func``: point ``out`` at "smtp" inside the client's
    own list (OpenSSL copies it before the list is freed), or refuse. Never
    raises: ctypes would print the traceback and return 0, which means OK."""
    try:
        if not wire:
            raise ValueError("no list")
        data = ctypes.string_at(wire, length)
        at = 0
        while at < len(data):
            size = data[at]
            if data[at + 1:at + 1 + size] == SMTP:
                out[0] = wire + at + 1
                outlen[0] = size
                return _OK
            at += 1 + size
        _refused.error = AlpnRefused(parse(data))
    except Exception:  # noqa: BLE001 - refuse rather than let ctypes answer OK
        _refused.error = AlpnRefused([])
    return _ALERT_FATAL


#: Kept for the life of the process: OpenSSL holds only the C pointer.
_native_callback = _CALLBACK(_native_select)


def strict_native(ctx: ssl.SSLContext) -> bool:
    """Make the stdlib ``ctx`` refuse as `strict_pyopenssl` does. False when its
    ``libssl`` or ``SSL_CTX`` cannot be reached (the caller then keeps pyOpenSSL)."""
    lib = exporter.libssl()
    ptr = exporter.ctx_pointer(ctx)
    if lib is None or ptr is None:
        return False
    try:
        set_cb = lib.SSL_CTX_set_alpn_select_cb
    except AttributeError:
        return False
    set_cb.argtypes = [ctypes.c_void_p, _CALLBACK, ctypes.c_void_p]
    set_cb.restype = None
    set_cb(ptr, _native_callback, None)
    return True
