"""Password hashes of other servers (Dovecot's schemes), read at import, verified at login.

Theory of operation
-------------------
``smtpgate user import`` keeps an account's old hash as it was, in a
``legacy`` credential row (``"{SCHEME}data"``, Dovecot's own spelling: the
credentials table is keyed by scheme, so no schema migration), so the
account logs in with its old password. At its first good PLAIN/LOGIN login the
auth service derives an Argon2id hash and the SCRAM keys from the password it
now knows, and the store drops the legacy row (``user list`` shows who still
has one). ``parse`` checks a field at import, so a login never meets a hash
that cannot be read; ``verify`` checks a password against a stored one.

What each scheme becomes at import (``parse``):

- ``{PLAIN}``/``{CLEAR}`` (and ``.b64``/``.hex``): the password itself, hashed at
  import and never stored.
- ``{ARGON2ID}``: already our format (a PHC string): stored as the ``argon2id``
  credential; re-hashed with the configured parameters at the first login.
- ``{SCRAM-SHA-1}``/``{SCRAM-SHA-256}``: the keys are imported as they are, so
  SCRAM works at once; the same string verifies PLAIN too.
- ``{CRAM-MD5}``: Dovecot's HMAC-MD5 states (outer, then inner, as hex) become
  our CRAM-MD5 secret for an account that opts in; it verifies PLAIN too.
- Every other scheme: kept as the legacy row until the first login.

Libraries, and one choice:

- ``argon2-cffi`` for ``{ARGON2I}``/``{ARGON2ID}`` (it reads the type from the hash);
- ``bcrypt`` (pyca) for ``{BLF-CRYPT}``; like crypt(3), only the first 72 bytes
  of the password count (bcrypt 5 refuses longer ones, so they are cut here);
- ``hashlib`` for the salted and plain SHA digests;
- SHA512-CRYPT, SHA256-CRYPT and MD5-CRYPT are implemented here, from the
  published algorithms (Drepper's "Unix crypt using SHA-256 and SHA-512", and
  Kamp's md5crypt), with ``hashlib`` and nothing else. Why not a library: the
  ``crypt`` module is deprecated and gone in Python 3.13, its behaviour depends
  on the system's libcrypt, and passlib is unmaintained; the algorithms are
  short and fixed, and the tests check them against hashes made by the real
  ``doveadm pw``. Pure Python costs a few milliseconds per 5000 rounds, so a
  hash asking for more than ``MAX_CRYPT_ROUNDS`` is refused at import rather
  than letting a hostile file stall logins.

Every comparison of digests is constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from smtpgate.auth.credentials import (
    ARGON2ID,
    CRAM_MD5,
    SCRAM_SCHEMES,
    CredentialDataError,
    encode_cram_md5,
    encode_scram,
)
from smtpgate.sasl.base import CramMd5Secret, ScramCredentials
from smtpgate.sasl.cram_md5 import cram_md5_secret_from_password
from smtpgate.sasl.scram import scram_credentials_from_password

#: The credential scheme of an imported hash awaiting its first login.
LEGACY = "legacy"

#: Five times Dovecot's default of 5000: past this a pure-Python SHA-crypt takes
#: tens of milliseconds per login attempt, a cost a guesser could impose at will.
MAX_CRYPT_ROUNDS = 25_000

_CRYPT64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SCHEME_RE = re.compile(r"\{([A-Za-z0-9-]+)(\.(?:b64|base64|hex))?\}", re.IGNORECASE)


class LegacyHashError(CredentialDataError):
    """A password field cannot be read (at import) or a stored legacy hash is
    corrupt (at login: a data fault, answered 454, never the client's)."""


# --- crypt(3) formats ------------------------------------------------------------------


def _crypt64(data: bytes, groups: tuple[tuple[int, ...], ...]) -> str:
    """crypt's base-64: each group of up to 3 bytes (most significant first) as
    4 characters (2 or 3 for a short final group), least significant 6 bits first."""
    out = []
    for group in groups:
        w = 0
        for i in group:
            w = (w << 8) | data[i]
        for _ in range(len(group) + 1):
            out.append(_CRYPT64[w & 0x3F])
            w >>= 6
    return "".join(out)


_SHA256_ORDER = (
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
    (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29), (31, 30),
)
_SHA512_ORDER = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26),
    (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32),
    (12, 33, 54), (34, 55, 13), (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38),
    (18, 39, 60), (40, 61, 19), (62, 20, 41), (63,),
)
_MD5_ORDER = ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5), (11,))


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def sha_crypt(password: bytes, setting: str) -> str:
    """The ``$5$``/``$6$`` crypt string of ``password`` with the salt and rounds of
    ``setting`` (a full hash or just ``$6$[rounds=N$]salt``), per Drepper's spec.

    Raises:
        LegacyHashError: not a SHA-crypt setting, or rounds above MAX_CRYPT_ROUNDS.
    """
    m = re.fullmatch(r"\$([56])\$(?:rounds=(\d{1,9})\$)?([^$]{0,16})[^$]*(?:\$.*)?", setting)
    if m is None:
        raise LegacyHashError("not a SHA-crypt hash ($5$ or $6$)")
    ident, rounds_text, salt_text = m.groups()
    h: Callable[[bytes], hashlib._Hash] = hashlib.sha256 if ident == "5" else hashlib.sha512
    order = _SHA256_ORDER if ident == "5" else _SHA512_ORDER
    rounds = 5000 if rounds_text is None else min(max(int(rounds_text), 1000), 999_999_999)
    if rounds > MAX_CRYPT_ROUNDS:
        raise LegacyHashError(f"{rounds} rounds is more than the {MAX_CRYPT_ROUNDS} accepted")
    salt = salt_text.encode("utf-8")[:16]
    p = password
    b = h(p + salt + p).digest()
    size = len(b)
    a_ctx = h(p + salt + _repeat(b, len(p)))
    n = len(p)
    while n:
        a_ctx.update(b if n & 1 else p)
        n >>= 1
    c = a_ctx.digest()
    p_seq = _repeat(h(p * len(p)).digest(), len(p))
    s_seq = _repeat(h(salt * (16 + c[0])).digest(), len(salt))
    for i in range(rounds):
        ctx = h(p_seq if i & 1 else c)
        if i % 3:
            ctx.update(s_seq)
        if i % 7:
            ctx.update(p_seq)
        ctx.update(c if i & 1 else p_seq)
        c = ctx.digest()
    assert len(c) == size
    # The spec writes the rounds clamped (``rounds=10`` comes out as ``rounds=1000``).
    prefix = f"${ident}$" + (f"rounds={rounds}$" if rounds_text is not None else "")
    return f"{prefix}{salt.decode('utf-8', 'replace')}${_crypt64(c, order)}"


def md5_crypt(password: bytes, setting: str) -> str:
    """The ``$1$`` crypt string of ``password`` with the salt of ``setting`` (md5crypt).

    Raises:
        LegacyHashError: not an MD5-crypt setting.
    """
    m = re.fullmatch(r"\$1\$([^$]{0,8})[^$]*(?:\$.*)?", setting)
    if m is None:
        raise LegacyHashError("not an MD5-crypt hash ($1$)")
    salt = m.group(1).encode("utf-8")
    p = password
    final = hashlib.md5(p + salt + p).digest()
    ctx = hashlib.md5(p + b"$1$" + salt + _repeat(final, len(p)))
    n = len(p)
    while n:
        ctx.update(b"\0" if n & 1 else p[:1])
        n >>= 1
    final = ctx.digest()
    for i in range(1000):
        ctx = hashlib.md5(p if i & 1 else final)
        if i % 3:
            ctx.update(salt)
        if i % 7:
            ctx.update(p)
        ctx.update(final if i & 1 else p)
        final = ctx.digest()
    return f"$1${salt.decode('utf-8', 'replace')}${_crypt64(final, _MD5_ORDER)}"


# --- the schemes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Digest:
    """A plain or salted digest (``{SHA}``, ``{SSHA512}``...): digest, then salt."""

    algorithm: str
    salted: bool


_DIGESTS = {
    "SHA": _Digest("sha1", False),
    "SHA1": _Digest("sha1", False),
    "SHA256": _Digest("sha256", False),
    "SHA512": _Digest("sha512", False),
    "SSHA": _Digest("sha1", True),
    "SSHA256": _Digest("sha256", True),
    "SSHA512": _Digest("sha512", True),
}
_CRYPTS = {"SHA512-CRYPT": "$6$", "SHA256-CRYPT": "$5$", "MD5-CRYPT": "$1$", "MD5": "$1$"}
_SCRAMS = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}
_PLAINTEXT = {"PLAIN", "CLEAR", "CLEARTEXT"}
_ARGON2 = {"ARGON2I": "$argon2i$", "ARGON2ID": "$argon2id$"}
#: Schemes a field without a {SCHEME} prefix may be (Dovecot's default, CRYPT).
_CRYPT_PREFIXES = {"$6$": "SHA512-CRYPT", "$5$": "SHA256-CRYPT", "$1$": "MD5-CRYPT",
                   "$2y$": "BLF-CRYPT", "$2b$": "BLF-CRYPT", "$2a$": "BLF-CRYPT"}
#: Every scheme ``parse`` accepts, for messages and docs.
SCHEMES = tuple(sorted({*_DIGESTS, *_CRYPTS, *_SCRAMS, *_PLAINTEXT, *_ARGON2,
                        "BLF-CRYPT", "CRAM-MD5"}))


@dataclass(frozen=True, slots=True)
class Parsed:
    """What an imported password field becomes.

    Exactly one of ``password`` (a plaintext scheme: hash it, store nothing of it)
    or ``credentials`` (rows to store as they are: ``legacy``, ``argon2id``,
    ``scram-sha-*``, ``cram-md5``) is set. ``scheme`` is Dovecot's name.
    """

    scheme: str
    password: str | None = None
    credentials: dict[str, str] | None = None


def _split(field: str) -> tuple[str, str, str]:
    """(scheme, encoding, data) of a field; a field without a prefix is a crypt string."""
    m = _SCHEME_RE.match(field)
    if m is None:
        for prefix, scheme in _CRYPT_PREFIXES.items():
            if field.startswith(prefix):
                return scheme, "", field
        raise LegacyHashError(
            "the password has no {SCHEME} prefix and is no crypt string this version reads"
        )
    return m.group(1).upper(), (m.group(2) or "").lower(), field[m.end():]


def _decode(data: str, encoding: str, default: str) -> bytes:
    """Bytes of a ``.b64``/``.hex`` encoded value (``default`` when none is named)."""
    enc = {"": default, ".b64": "b64", ".base64": "b64", ".hex": "hex"}[encoding]
    try:
        if enc == "hex":
            return bytes.fromhex(data)
        return base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error):
        raise LegacyHashError(f"the value is not valid {'hex' if enc == 'hex' else 'base64'}") from None


def _digest_parts(scheme: str, encoding: str, data: str) -> tuple[bytes, bytes]:
    """(digest, salt) of a ``_DIGESTS`` scheme, checked for length."""
    spec = _DIGESTS[scheme]
    size = hashlib.new(spec.algorithm).digest_size
    raw = _decode(data, encoding, "hex" if not encoding and len(data) == 2 * size and
                  re.fullmatch(r"[0-9a-fA-F]+", data) else "b64")
    if (len(raw) <= size) if spec.salted else (len(raw) != size):
        raise LegacyHashError(f"{{{scheme}}} value has the wrong length ({len(raw)} bytes)")
    return raw[:size], raw[size:]


def _scram_parts(scheme: str, data: str) -> ScramCredentials:
    """Dovecot's ``iterations,salt,StoredKey,ServerKey`` (base64)."""
    parts = data.split(",")
    if len(parts) != 4 or not parts[0].isdigit() or int(parts[0]) < 1:
        raise LegacyHashError(f"{{{scheme}}} value is not iterations,salt,StoredKey,ServerKey")
    salt, stored, server = (_decode(x, "", "b64") for x in parts[1:])
    size = hashlib.new(_SCRAMS[scheme]).digest_size
    if not salt or len(stored) != size or len(server) != size:
        raise LegacyHashError(f"{{{scheme}}} keys have the wrong length")
    return ScramCredentials(salt=salt, iterations=int(parts[0]), stored_key=stored,
                            server_key=server)


def _cram_parts(encoding: str, data: str) -> CramMd5Secret:
    raw = _decode(data, encoding, "hex")
    if len(raw) != 32:
        raise LegacyHashError("{CRAM-MD5} value is not 32 bytes (the HMAC-MD5 states)")
    return CramMd5Secret(inner=raw[16:], outer=raw[:16])


def _check_crypt(scheme: str, data: str) -> None:
    prefix = _CRYPTS.get(scheme)
    if prefix is not None:
        if not data.startswith(prefix):
            raise LegacyHashError(f"{{{scheme}}} value does not start with {prefix}")
        # Compute once on a dummy password: proves the setting parses (salt, rounds).
        (md5_crypt if prefix == "$1$" else sha_crypt)(b"", data)
        if not re.fullmatch(r"\$\d\$(rounds=\d+\$)?[^$]{0,16}\$[./0-9A-Za-z]+", data):
            raise LegacyHashError(f"{{{scheme}}} value is not a complete crypt string")
    elif scheme == "BLF-CRYPT":
        if not re.fullmatch(r"\$2[aby]\$\d\d\$[./0-9A-Za-z]{53}", data):
            raise LegacyHashError("{BLF-CRYPT} value is not a bcrypt string ($2y$NN$...)")
    elif scheme in _ARGON2:
        if not data.startswith(_ARGON2[scheme]):
            raise LegacyHashError(f"{{{scheme}}} value does not start with {_ARGON2[scheme]}")
        try:
            argon2.extract_parameters(data)
        except InvalidHashError:
            raise LegacyHashError(f"{{{scheme}}} value is not a valid Argon2 hash") from None


def parse(field: str) -> Parsed:
    """Read one password field of a passwd-file.

    Raises:
        LegacyHashError: an unknown scheme or a malformed value (the message says which).
    """
    scheme, encoding, data = _split(field)
    if scheme in _PLAINTEXT:
        if not encoding:
            return Parsed(scheme, password=data)
        try:
            return Parsed(scheme, password=_decode(data, encoding, "b64").decode("utf-8"))
        except UnicodeDecodeError:
            raise LegacyHashError(f"{{{scheme}}} password is not UTF-8") from None
    if scheme not in SCHEMES:
        raise LegacyHashError(
            f"scheme {{{scheme}}} is not supported (supported: {', '.join(SCHEMES)})"
        )
    legacy = f"{{{scheme}{encoding.upper()}}}{data}"
    if scheme in _DIGESTS:
        _digest_parts(scheme, encoding, data)
        return Parsed(scheme, credentials={LEGACY: legacy})
    if scheme in _SCRAMS:
        keys = encode_scram(_scram_parts(scheme, data))
        return Parsed(scheme, credentials={LEGACY: legacy, SCRAM_SCHEMES[_SCRAMS[scheme]]: keys})
    if scheme == "CRAM-MD5":
        secret = encode_cram_md5(_cram_parts(encoding, data))
        return Parsed(scheme, credentials={LEGACY: legacy, CRAM_MD5: secret})
    _check_crypt(scheme, data)
    if scheme == "ARGON2ID":
        return Parsed(scheme, credentials={ARGON2ID: data})
    return Parsed(scheme, credentials={LEGACY: legacy})


def scheme_of(stored: str) -> str:
    """The Dovecot scheme name of a stored legacy string, for ``user list``."""
    try:
        return _split(stored)[0]
    except LegacyHashError:
        return "unknown"


def verify(stored: str, password: str) -> bool:
    """True if ``password`` matches the legacy hash ``stored`` (as ``parse`` kept it).

    Slow for some schemes (bcrypt, Argon2, PBKDF2, SHA-crypt): call it off the
    event loop.

    Raises:
        LegacyHashError: ``stored`` is corrupt or of an unknown scheme.
    """
    scheme, encoding, data = _split(stored)
    pw = password.encode("utf-8")
    if scheme in _DIGESTS:
        digest, salt = _digest_parts(scheme, encoding, data)
        mine = hashlib.new(_DIGESTS[scheme].algorithm, pw + salt).digest()
        return hmac.compare_digest(mine, digest)
    if scheme in _CRYPTS:
        _check_crypt(scheme, data)
        mine_text = (md5_crypt if _CRYPTS[scheme] == "$1$" else sha_crypt)(pw, data)
        return hmac.compare_digest(mine_text.encode(), data.encode())
    if scheme == "BLF-CRYPT":
        _check_crypt(scheme, data)
        try:
            return bcrypt.checkpw(pw[:72], data.encode("ascii"))
        except ValueError as e:
            raise LegacyHashError(f"{{BLF-CRYPT}} value is not usable: {e}") from None
    if scheme in _ARGON2:
        try:
            return argon2.PasswordHasher().verify(data, password)
        except VerifyMismatchError:
            return False
        except (InvalidHashError, VerificationError) as e:
            raise LegacyHashError(f"{{{scheme}}} value is not usable: {e}") from None
    if scheme in _SCRAMS:
        keys = _scram_parts(scheme, data)
        try:
            mine_keys = scram_credentials_from_password(
                password, _SCRAMS[scheme], keys.iterations, keys.salt
            )
        except ValueError:
            return False  # SASLprep refuses it: no SCRAM client could have sent it either
        return hmac.compare_digest(mine_keys.stored_key, keys.stored_key)
    if scheme == "CRAM-MD5":
        secret = _cram_parts(encoding, data)
        mine_secret = cram_md5_secret_from_password(password)
        return hmac.compare_digest(mine_secret.inner + mine_secret.outer,
                                   secret.inner + secret.outer)
    raise LegacyHashError(f"stored legacy hash has an unknown scheme {{{scheme}}}")
