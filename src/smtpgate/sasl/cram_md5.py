"""SASL CRAM-MD5 (RFC 2195), server and client side, verified from stored HMAC-MD5 states.

Theory of operation
-------------------
The server sends ``<random.digits@hostname>``; the client answers
``username SP hex(HMAC-MD5(password, challenge))``. To check that without storing
the password we keep what Dovecot's CRAM-MD5 scheme keeps: the MD5 chaining
state after compressing the single block ``key XOR ipad`` and after ``key XOR
opad`` (RFC 2104). HMAC-MD5 of any message is then "continue the inner state
over the message, continue the outer state over the inner digest".

Why a hand-written MD5: ``hashlib`` cannot start from, or reveal, an intermediate
MD5 state, and those two states are exactly the secret at rest. The small
RFC 1321 compression function below is used only to derive and consume them; it
is checked against ``hashlib``/``hmac`` in the tests. (It also keeps CRAM-MD5
working where a FIPS OpenSSL refuses MD5.)

CRAM-MD5 is legacy: a sniffed exchange allows an offline dictionary attack and
the stored states are password-equivalent for this mechanism. Offer it only
under TLS and only for accounts that opted in.
"""

from __future__ import annotations

import hmac
import math
import re
import secrets
import struct
from collections.abc import Callable

from smtpgate.sasl._common import (
    ServerContext,
    ServerMechanismBase,
    decode_utf8,
    is_safe_name,
    unexpected_answer,
    verdict_step,
)
from smtpgate.sasl.base import (
    Challenge,
    ClientAuthError,
    ClientMechanism,
    ConfirmIdentity,
    CramMd5Secret,
    CredentialAnswer,
    Failure,
    LookupCramMd5,
    NeedCredentials,
    NotFound,
    Step,
)

# --- MD5 (RFC 1321), exposed only through the HMAC helpers below ------------------

_MASK = 0xFFFFFFFF
# RFC 1321 §3.3: initial chaining values A, B, C, D.
_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
# RFC 1321 §3.4: T[i] = floor(4294967296 * abs(sin(i))), i = 1..64 (exact in doubles).
_T = tuple(int(4294967296 * abs(math.sin(i))) & _MASK for i in range(1, 65))
# RFC 1321 §3.4: per-round rotation amounts.
_SHIFTS = (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4 + (6, 10, 15, 21) * 4

_State = tuple[int, int, int, int]


def _compress(state: _State, block: bytes) -> _State:
    """One MD5 compression of a 64-byte block (RFC 1321 §3.4)."""
    x = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = (f + a + _T[i] + x[g]) & _MASK
        s = _SHIFTS[i]
        a, d, c = d, c, b
        b = (b + ((f << s) | (f >> (32 - s)))) & _MASK
    return (
        (state[0] + a) & _MASK,
        (state[1] + b) & _MASK,
        (state[2] + c) & _MASK,
        (state[3] + d) & _MASK,
    )


def _md5_finish(state: _State, data: bytes, prefix_len: int) -> bytes:
    """MD5 digest of (prefix ‖ data), given the state after the 64-aligned prefix."""
    total = prefix_len + len(data)
    # RFC 1321 §3.1-3.2: pad with 0x80, zeros to 56 mod 64, then the bit length.
    padded = (
        data + b"\x80" + b"\0" * ((55 - total) % 64) + struct.pack("<Q", (total * 8) & (2**64 - 1))
    )
    for off in range(0, len(padded), 64):
        state = _compress(state, padded[off : off + 64])
    return struct.pack("<4I", *state)


def _state_bytes(state: _State) -> bytes:
    return struct.pack("<4I", *state)


def _state_from_bytes(data: bytes) -> _State:
    a, b, c, d = struct.unpack("<4I", data)
    return (a, b, c, d)


# --- HMAC-MD5 via intermediate states (RFC 2104) -------------------------------------


def cram_md5_secret_from_password(password: str) -> CramMd5Secret:
    """The HMAC-MD5 inner/outer states for ``password`` (UTF-8, not prepared).

    RFC 2104 §2: a key longer than the 64-byte block is first replaced by its MD5.
    """
    key = password.encode("utf-8")
    if len(key) > 64:
        key = _md5_finish(_IV, key, 0)
    key = key.ljust(64, b"\0")
    inner = _compress(_IV, bytes(k ^ 0x36 for k in key))
    outer = _compress(_IV, bytes(k ^ 0x5C for k in key))
    return CramMd5Secret(inner=_state_bytes(inner), outer=_state_bytes(outer))


def hmac_md5_from_secret(secret: CramMd5Secret, message: bytes) -> bytes:
    """HMAC-MD5(password, message) computed from the stored states alone.

    Raises:
        ValueError: a state is not 16 bytes.
    """
    if len(secret.inner) != 16 or len(secret.outer) != 16:
        raise ValueError("CRAM-MD5 states must be 16 bytes each")
    inner_digest = _md5_finish(_state_from_bytes(secret.inner), message, 64)
    return _md5_finish(_state_from_bytes(secret.outer), inner_digest, 64)


# --- server ----------------------------------------------------------------------------

# RFC 2195 §2: the challenge is a msg-id; its local part here is random digits.
_NONCE = re.compile(r"[0-9A-Za-z.\-_]+")
# RFC 2195 §2: the digest is 16 octets as 32 lowercase hex digits (we accept
# upper case too; it is the same value).
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{32}")

#: A name plus 33 octets; anything longer is not a CRAM-MD5 response.
MAX_RESPONSE_OCTETS = 1024 + 33


def default_cram_nonce() -> str:
    """``digits.digits`` like RFC 2195's example, from ``secrets`` (no clock read):
    ten digits each, leading zeros kept, so every challenge has one length."""
    return f"{secrets.randbelow(10**10):010d}.{secrets.randbelow(10**10):010d}"


_DECOY_SECRET = CramMd5Secret(inner=secrets.token_bytes(16), outer=secrets.token_bytes(16))


class CramMd5Server(ServerMechanismBase):
    """Server side of CRAM-MD5.

    Args:
        hostname: right-hand side of the challenge msg-id.
        nonce_factory: left-hand side; default ``default_cram_nonce``.
    """

    name = "CRAM-MD5"
    server_first = True

    def __init__(
        self, *, hostname: str = "localhost", nonce_factory: Callable[[], str] | None = None
    ) -> None:
        super().__init__()
        self._hostname = hostname
        self._nonce_factory = nonce_factory or default_cram_nonce
        self._challenge = b""
        self._username = ""
        self._digest = b""
        self._confirming = False

    @classmethod
    def from_context(cls, ctx: ServerContext) -> CramMd5Server:
        return cls(hostname=ctx.hostname, nonce_factory=ctx.nonce_factory)

    def _start(self, initial: bytes | None) -> Step:
        if initial is not None:
            # RFC 4954 §4: an initial response to a server-first mechanism is an error.
            return Failure(reason="CRAM-MD5: initial response not allowed", malformed=True)
        nonce = self._nonce_factory()
        if not _NONCE.fullmatch(nonce):
            raise ValueError("nonce_factory must return [0-9A-Za-z._-]+ for CRAM-MD5")
        self._challenge = f"<{nonce}@{self._hostname}>".encode()
        return Challenge(self._challenge)

    def _step(self, response: bytes) -> Step:
        text = decode_utf8(response) if len(response) <= MAX_RESPONSE_OCTETS else None
        # RFC 2195 §2: response = user name, a space, and the digest.
        user, sep, digest_hex = (text or "").rpartition(" ")
        if not sep or not is_safe_name(user) or not _HEX_DIGEST.fullmatch(digest_hex):
            return Failure(reason="CRAM-MD5: malformed response", malformed=True)
        self._username = user
        self._digest = bytes.fromhex(digest_hex)
        return NeedCredentials(LookupCramMd5(user, mechanism=self.name))

    def _answer(self, result: CredentialAnswer) -> Step:
        if self._confirming:
            return verdict_step(self.name, result, username=self._username)
        if isinstance(result, NotFound):
            # NotFound's contract: fail the same way as a wrong secret, doing the
            # same work, so the reply timing does not tell unknown users apart.
            decoy = hmac_md5_from_secret(_DECOY_SECRET, self._challenge)
            hmac.compare_digest(decoy, self._digest)
            return Failure(
                reason=result.reason, temporary=result.temporary, username=self._username
            )
        if not isinstance(result, CramMd5Secret):
            return unexpected_answer(self.name, result, self._username)
        try:
            expected = hmac_md5_from_secret(result, self._challenge)
        except ValueError:
            return Failure(
                reason="CRAM-MD5: stored secret is corrupt",
                temporary=True,
                username=self._username,
            )
        if not hmac.compare_digest(expected, self._digest):
            return Failure(reason="CRAM-MD5: wrong digest", username=self._username)
        self._confirming = True
        return NeedCredentials(ConfirmIdentity(self._username, mechanism=self.name))


class CramMd5Client(ClientMechanism):
    """Client side of CRAM-MD5: one answer to the server's challenge."""

    name = "CRAM-MD5"

    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._secret = cram_md5_secret_from_password(password)
        self._answered = False

    def start(self) -> bytes | None:
        return None  # server-first (RFC 2195 §2)

    def step(self, challenge: bytes) -> bytes:
        if self._answered:
            raise ClientAuthError("CRAM-MD5: unexpected second challenge")
        if not challenge:
            raise ClientAuthError("CRAM-MD5: empty challenge")
        self._answered = True
        digest = hmac_md5_from_secret(self._secret, challenge)
        return f"{self._username} {digest.hex()}".encode()

    @property
    def done(self) -> bool:
        return self._answered
