"""RFC 9266 ``tls-exporter`` for the stdlib ``ssl`` module, which has no exporter.

Why hand-written: Python's ``ssl`` does not expose ``SSL_export_keying_material``
(CPython issue 82133), and no library adds it to an ``ssl.SSLObject``. The
stdlib's memory-BIO object is what lets smtpgate keep TLS in C on the hot path
(bench/README.md: about half the CPU of pyOpenSSL per record and per handshake,
and 7 KiB less memory per idle session); SCRAM-PLUS over TLS 1.3 needs the
exporter. So this module calls ``SSL_export_keying_material`` through ctypes on
the ``SSL *`` that the ``_ssl`` extension keeps in its socket object, in the very
``libssl`` that ``_ssl`` is linked against (found in ``/proc/self/maps``).

It trusts nothing it cannot check: `available` is true only after a self-test
that completes a TLS 1.3 handshake in memory between a stdlib server object and a
pyOpenSSL client and finds the same exported bytes on both sides, and every call
first checks that the pointer's ``SSL_version`` is the object's own version.
When either check fails the caller falls back to pyOpenSSL sessions
(``tls/session.py``), so a different Python build costs speed, never a wrong
binding.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import ssl
from pathlib import Path

log = logging.getLogger("smtpgate.tls")

#: RFC 9266 §2: the label, 32 bytes, an empty context.
_LABEL = b"EXPORTER-Channel-Binding"
_LENGTH = 32
#: ``PySSLSocket``: PyObject_HEAD (refcount, type), then ``PyObject *Socket``, then
#: ``SSL *ssl`` (Modules/_ssl.c, unchanged from CPython 3.7 to 3.13).
_SSL_POINTER_OFFSET = 3 * ctypes.sizeof(ctypes.c_void_p)
#: ``SSL_version`` values by the names ``SSLObject.version()`` gives.
_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def _libssl_path() -> str | None:
    """The ``libssl`` mapped into this process by the ``_ssl`` extension."""
    import _ssl  # noqa: F401 - make sure it is loaded before reading the map

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps.splitlines()
             if "/libssl.so" in line and line.split()[-1].startswith("/")}
    return paths.pop() if len(paths) == 1 else None


@functools.cache
def libssl() -> ctypes.CDLL | None:
    """The ``libssl`` of the ``ssl`` module, its functions typed; None if not found."""
    path = _libssl_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        export = lib.SSL_export_keying_material
        version = lib.SSL_version
    except (OSError, AttributeError):
        return None
    export.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                       ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    export.restype = ctypes.c_int
    version.argtypes = [ctypes.c_void_p]
    version.restype = ctypes.c_int
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    return lib


#: ``PySSLContext``: PyObject_HEAD, then ``SSL_CTX *ctx``.
_CTX_POINTER_OFFSET = 2 * ctypes.sizeof(ctypes.c_void_p)
#: SSL_CTRL_SET_SESS_CACHE_MODE, SSL_CTRL_GET_SESS_CACHE_MODE; SSL_SESS_CACHE_SERVER.
_SET_CACHE_MODE, _GET_CACHE_MODE, _CACHE_SERVER = 44, 45, 2


def ctx_pointer(ctx: ssl.SSLContext) -> int | None:
    """The ``SSL_CTX *`` of ``ctx``."""
    value = ctypes.c_void_p.from_address(id(ctx) + _CTX_POINTER_OFFSET).value
    return int(value) if value else None


def disable_session_cache(ctx: ssl.SSLContext) -> bool:
    """Turn OpenSSL's server session cache off (the ``ssl`` module cannot): no
    session-ID resumption, and no cache of up to 20,480 sessions a worker for two
    hours that any client could fill. True when done; the mode is read back before
    and after, so a pointer that is not an ``SSL_CTX`` is never written through."""
    lib = libssl()
    if lib is None:
        return False
    ptr = ctx_pointer(ctx)
    if not ptr or lib.SSL_CTX_ctrl(ptr, _GET_CACHE_MODE, 0, None) != _CACHE_SERVER:
        return False
    lib.SSL_CTX_ctrl(ptr, _SET_CACHE_MODE, 0, None)
    return int(lib.SSL_CTX_ctrl(ptr, _GET_CACHE_MODE, 0, None)) == 0


def ssl_pointer(obj: ssl.SSLObject) -> int | None:
    """The ``SSL *`` of ``obj`` (valid only where `available` is true)."""
    inner = getattr(obj, "_sslobj", None)
    if inner is None:
        return None
    value = ctypes.c_void_p.from_address(id(inner) + _SSL_POINTER_OFFSET).value
    return int(value) if value else None


def tls_exporter(obj: ssl.SSLObject) -> bytes | None:
    """The RFC 9266 binding of a TLS 1.3 connection after its handshake, or None
    when it cannot be computed safely (then SCRAM-PLUS fails, never binds wrong)."""
    lib = libssl()
    expected = _VERSIONS.get(obj.version() or "")
    if lib is None or expected is None:
        return None
    ptr = ssl_pointer(obj)
    if ptr is None or lib.SSL_version(ptr) != expected:
        return None
    out = ctypes.create_string_buffer(_LENGTH)
    if lib.SSL_export_keying_material(ptr, out, _LENGTH, _LABEL, len(_LABEL), b"", 0, 1) != 1:
        return None
    return out.raw


@functools.cache
def available() -> bool:
    """True once the self-test (module docstring) found the same bytes both ways."""
    try:
        return _self_test()
    except Exception as e:  # noqa: BLE001 - any surprise means: do not use it
        log.debug("tls-exporter through the ssl module unavailable: %s", e)
        return False


def _self_test() -> bool:
    import tempfile

    from OpenSSL import SSL

    from smtpgate.tls.certs import write_self_signed
    from smtpgate.tls.memory_handshake import handshake, pyopenssl_step, sslobject_step

    if libssl() is None:
        return False
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        write_self_signed(cert_file, key_file, "self-test", days=1)
        ctx.load_cert_chain(cert_file, key_file)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = ctx.wrap_bio(incoming, outgoing, server_side=True)
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    handshake(pyopenssl_step(client), sslobject_step(server, incoming, outgoing))
    theirs = client.export_keying_material(_LABEL, _LENGTH, b"")
    ours = tls_exporter(server)
    return ours is not None and ours == theirs
