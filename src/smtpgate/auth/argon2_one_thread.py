"""Argon2id verification with all of a hash's lanes computed by one thread.

Why: argon2-cffi's ``verify`` runs as many threads as the hash has lanes (4 by
default). For a guesser's wrong passwords (the untrusted lane, verify_scheduler.py)
that puts a 64 MiB memory-hard computation on every core at once, and even at a
low CPU priority it takes the caches and memory bandwidth the owner's login runs
on: measured beside two such loops, a neighbour's p99 was 7.3-12.1 ms with four
threads and 6.4 ms with one, against 4.2 ms alone (bench/README.md, workload E).
The lanes are the same, so the result is the same hash; only the number of
threads that compute it differs, which argon2-cffi's high-level API does not let
us choose. Hence this small wrapper around its low-level ``core`` call.

Only the encoding smtpgate writes (``$argon2id$v=19$m=..,t=..,p=..$salt$hash``) is
taken; anything else returns None and the caller verifies the usual way.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from argon2 import Type, low_level
from argon2.low_level import ARGON2_VERSION, core, ffi

#: The cffi library argon2-cffi itself calls (not re-exported by name).
lib = low_level.lib  # type: ignore[attr-defined]


def _b64(text: str) -> bytes:
    """PHC's base64: standard alphabet, no padding."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def verify_on_one_thread(encoded: str, password: str) -> bool | None:
    """True or False as argon2-cffi's verify would say; None when ``encoded`` is not
    an Argon2id v1.3 hash in the standard encoding (the caller then uses it)."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] or parts[1] != "argon2id" or parts[2] != f"v={ARGON2_VERSION}":
        return None
    try:
        params = dict(item.split("=", 1) for item in parts[3].split(","))
        memory, time_cost, lanes = int(params["m"]), int(params["t"]), int(params["p"])
        salt, digest = _b64(parts[4]), _b64(parts[5])
    except (ValueError, KeyError, binascii.Error):
        return None
    if set(params) != {"m", "t", "p"} or not (lanes >= 1 and time_cost >= 1 and digest and salt):
        return None
    secret = password.encode("utf-8")
    out = ffi.new("uint8_t[]", len(digest))
    c_salt, c_secret = ffi.new("uint8_t[]", salt), ffi.new("uint8_t[]", secret)
    ctx = ffi.new("argon2_context *", {
        "out": out, "outlen": len(digest),
        "pwd": c_secret, "pwdlen": len(secret),
        "salt": c_salt, "saltlen": len(salt),
        "secret": ffi.NULL, "secretlen": 0, "ad": ffi.NULL, "adlen": 0,
        "t_cost": time_cost, "m_cost": memory, "lanes": lanes, "threads": 1,
        "version": ARGON2_VERSION, "allocate_cbk": ffi.NULL, "free_cbk": ffi.NULL,
        "flags": lib.ARGON2_DEFAULT_FLAGS,
    })
    if core(ctx, Type.ID.value) != lib.ARGON2_OK:
        return None  # parameters the library refuses: let argon2-cffi say why
    return hmac.compare_digest(bytes(ffi.buffer(out, len(digest))), digest)
