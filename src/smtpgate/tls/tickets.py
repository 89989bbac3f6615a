"""Session tickets on the stdlib TLS context: TLS 1.3 only, one key for all workers.

A client that kept its ticket resumes without the certificate and the signature
of a full handshake (docs/security.md, "Session resumption"). Why by hand
(ctypes, on the pointers `exporter` checks with its self-test): the ``ssl``
module turns tickets on or off for a whole context, never per protocol version,
and cannot set the key that seals them.

- TLS 1.3 only. A TLS 1.2 ticket holds the session's master secret: whoever later
  reads the ticket key from the server's memory decrypts every recorded TLS 1.2
  session that got a ticket, and a resumed TLS 1.2 session makes ``tls-unique``
  unsafe without the extended master secret (RFC 7627), which the ``ssl`` module
  cannot see. A TLS 1.3 ticket holds a one-way resumption secret, and OpenSSL
  resumes only with a fresh (EC)DHE (``psk_dhe_ke``): forward secrecy holds. So a
  TLS 1.2 handshake gets ``SSL_OP_NO_TICKET`` on its own ``SSL`` from the
  servername callback, which OpenSSL runs for every ClientHello (with or without
  SNI) once the version is chosen and before the ServerHello.
- One key for all workers. OpenSSL draws a random key per ``SSL_CTX``; the workers
  would share the parent's through the fork, but a reload builds a context in each
  worker, and a ticket would then resume only on the worker that issued it. The
  key is derived instead from a chain secret and the certificate's hash: every
  worker seals alike, a restart or a new certificate ends every ticket. OpenSSL's
  ticket lifetime stays (two hours); there is no server-side cache.
- A new key every hour (``ROTATE_EVERY``, Postfix's rotation). The chain secret is
  drawn once per server start and replaced at each hour of the wall clock by a
  hash of itself; the one before is dropped. Workers agree without talking: they
  start from the same secret and count the same hours. A key read from a worker's
  memory opens the tickets of its own hour, not those of the hours before (it
  cannot be hashed backwards); against the hours after, only a restart helps.
  Best effort: OpenSSL overwrites its copy of the key in place, but Python frees
  the old secret's bytes without wiping them.
  Each context takes the hour's key at its first new connection of the hour
  (`rotate`). What the ``ssl`` module cannot do: keep the previous key to open
  tickets only. OpenSSL holds one key a context (``SSL_CTRL_SET_TLSEXT_TICKET_KEYS``);
  a second needs its ticket-key callback, a call into Python through ctypes on
  every handshake, for what is worth one full handshake a client an hour: a
  ticket sealed before the hour turns does not resume after it (a full
  handshake, never an error). The supervisor, which runs no timer here, moves
  its own copy of the chain on only when it builds a context (start, reload).

A servername callback has a cost: CPython decodes the client's SNI as ASCII before
calling it, and a name that is not (``é.test`` in UTF-8, which RFC 6066 does not
allow) fails the handshake (OpenSSL's "callback failed", in the session's log
line) and goes to ``sys.unraisablehook``, whose default writes a traceback to
stderr: the journal, once per connection anyone may open. ``enable`` installs a
hook that drops exactly that exception and hands every other to the one before.
The hook runs inside the handshake call, in the thread that made it, so it also
keeps the name for that thread: ``take_undecodable_server_name`` tells the
session that failed why, and its log line says so rather than "callback failed".
"""

from __future__ import annotations

import ctypes
import hashlib
import secrets
import ssl
import sys
import threading
import time
import weakref
from typing import Any

from smtpgate.tls import exporter

#: SSL_OP_NO_TICKET; SSL_CTRL_GET/SET_TLSEXT_TICKET_KEYS; TLS1_3_VERSION.
_NO_TICKET = 0x4000
_GET_KEYS, _SET_KEYS = 58, 59
_TLS13 = 0x0304
#: Key name (16), HMAC key (32), AES key (32): OpenSSL 1.1.0 and later.
_KEYS_LENGTH = 80
#: Seconds one ticket key is used, to seal and to open (the module docstring).
ROTATE_EVERY = 3600.0


def _hour(now: float) -> int:
    return int(now // ROTATE_EVERY)


class _Chain:
    """The chain secret of the current period: drawn when the parent imports this
    module, before any fork (the same in every worker, new at every start), then
    hashed forward one step a period, the step before forgotten."""

    period = _hour(time.time())
    secret = secrets.token_bytes(32)

    @classmethod
    def at(cls, period: int) -> tuple[int, bytes]:
        """The secret of ``period`` and the period it is for: the chain's own where
        ``period`` is earlier (a clock set back never brings an old key back)."""
        while cls.period < period:
            cls.secret = hashlib.sha256(b"smtpgate ticket chain\0" + cls.secret).digest()
            cls.period += 1
        return cls.period, cls.secret


def ticket_keys(cert_hash: bytes, now: float | None = None) -> bytes:
    """The 80 bytes of ticket keys for the certificate with hash ``cert_hash`` in the
    period of ``now`` (default: the current time)."""
    _, secret = _Chain.at(_hour(time.time() if now is None else now))
    return hashlib.shake_256(b"smtpgate tickets\0" + secret + cert_hash).digest(
        _KEYS_LENGTH)


#: Every context with tickets on: its certificate hash and the period its key is for.
_sealing: weakref.WeakKeyDictionary[ssl.SSLContext, tuple[bytes, int]] = (
    weakref.WeakKeyDictionary())


def _set_keys(ptr: int, cert_hash: bytes, now: float) -> int | None:
    """Give the ``SSL_CTX`` at ``ptr`` the keys of ``now``'s period, read back; that
    period, or None when OpenSSL did not take them."""
    lib = exporter.libssl()
    if lib is None:
        return None
    period, _ = _Chain.at(_hour(now))
    keys = ticket_keys(cert_hash, now)
    if lib.SSL_CTX_ctrl(ptr, _SET_KEYS, _KEYS_LENGTH, keys) != 1:
        return None
    back = ctypes.create_string_buffer(_KEYS_LENGTH)
    if lib.SSL_CTX_ctrl(ptr, _GET_KEYS, _KEYS_LENGTH, back) != 1 or back.raw != keys:
        return None
    return period


def rotate(ctx: ssl.SSLContext, now: float | None = None) -> None:
    """Before a new connection on ``ctx``: once its key's period is over, the key
    of the current one. Where OpenSSL does not take it, no more tickets on ``ctx``
    rather than the old key for ever."""
    sealing = _sealing.get(ctx)
    if sealing is None:
        return
    cert_hash, period = sealing
    now = time.time() if now is None else now
    if _hour(now) <= period:
        return
    ptr = exporter.ctx_pointer(ctx)
    done = _set_keys(ptr, cert_hash, now) if ptr is not None else None
    if done is None:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
        del _sealing[ctx]
        return
    _sealing[ctx] = (cert_hash, done)


def enable(ctx: ssl.SSLContext, cert_hash: bytes) -> bool:
    """Turn on TLS 1.3 tickets on ``ctx`` as the module docstring says. False (and
    ``ctx`` left without tickets) when a step cannot be done or checked."""
    lib = exporter.libssl()
    ptr = exporter.ctx_pointer(ctx)
    if lib is None or ptr is None or not exporter.available():
        return False
    lib.SSL_set_options.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    lib.SSL_set_options.restype = ctypes.c_uint64
    period = _set_keys(ptr, cert_hash, time.time())
    if period is None:
        return False
    _sealing[ctx] = (cert_hash, period)
    quiet_server_name_errors()
    ctx.sni_callback = _no_tls12_ticket
    ctx.options &= ~ssl.OP_NO_TICKET
    ctx.num_tickets = 1  # one a handshake: a client resumes with one at a time
    return True


def _no_tls12_ticket(obj: ssl.SSLObject | ssl.SSLSocket, name: str | None,
                     ctx: ssl.SSLContext) -> None:
    """The servername callback: no ticket for a connection below TLS 1.3."""
    lib = exporter.libssl()
    ptr = exporter.ssl_pointer(obj) if isinstance(obj, ssl.SSLObject) else None
    if lib is None or ptr is None:
        return
    if lib.SSL_version(ptr) != _TLS13:
        lib.SSL_set_options(ptr, _NO_TICKET)
    return


#: The server name CPython could not decode in this thread's last handshake step.
_undecodable = threading.local()


def take_undecodable_server_name() -> bytes | None:
    """The server name (SNI) that the handshake step just made in this thread
    failed to decode, once; None when it failed for another reason."""
    name: bytes | None = getattr(_undecodable, "name", None)
    _undecodable.name = None
    return name


def quiet_server_name_errors() -> None:
    """Make ``sys.unraisablehook`` drop CPython's failure to decode a client's SNI
    (the module docstring); once per process, other exceptions pass through."""
    previous = sys.unraisablehook
    if getattr(previous, "_smtpgate_sni", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if (isinstance(exc, UnicodeDecodeError) and exc.encoding == "ascii"
                and isinstance(unraisable.object, bytes)):
            # A server name not in ASCII; the handshake fails, and its session
            # takes the name to log it.
            _undecodable.name = unraisable.object
            return
        previous(unraisable)

    hook._smtpgate_sni = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
