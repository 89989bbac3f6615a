"""Argon2id password hashes: hashing, verification, rehash checks, and a decoy.

Why passwords are prepared: SCRAM keys are derived from SASLprep(password)
(RFC 5802 §2.2), and RFC 4616 §2 asks a PLAIN server to prepare the password the
same way, so a password typed with a non-breaking space, or in another Unicode
normalisation form, is one password whichever mechanism carries it. The Argon2id
hash is therefore made over ``prepare_password(password)``. Hashes made before
(over the password as typed) still verify: when the prepared form differs from
what the client sent and does not match, the password as sent is tried too (one
more Argon2id run, for such passwords only), and ``match`` says so, so the
caller can re-hash the prepared form.

Why a decoy: an unknown account must cost the same work as a wrong password,
or the response time tells an attacker which accounts exist. ``verify_decoy``
runs a full verification against a hash made at start-up with the configured
parameters (of a random password nobody knows), so both paths do one Argon2id
verification. Accounts hashed with older parameters still differ a little; the
server's failure floor (``[auth].failure_floor``) hides what remains.
"""

from __future__ import annotations

import enum
import secrets
import threading

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from smtpgate.auth.argon2_one_thread import verify_on_one_thread
from smtpgate.config import AccountsConfig
from smtpgate.sasl.saslprep import SaslprepError, saslprep

_here = threading.local()


def verify_on_one_thread_here() -> None:
    """From now on this thread verifies with one thread per hash, not one per
    lane (``argon2_one_thread.py``): a pool initializer, for the untrusted lane."""
    _here.one_thread = True


class PasswordPolicyError(ValueError):
    """A new password is unusable (empty, or holds NUL); the message says why."""


class StoredHashError(Exception):
    """A stored hash is not a valid Argon2 hash: a data fault, never the client's."""


def check_new_password(password: str) -> None:
    """Refuse passwords that no client could send.

    Raises:
        PasswordPolicyError: empty, or holds NUL (SASL PLAIN, RFC 4616 §2, uses
            NUL as its separator, so such a password could never be used).
    """
    if not password:
        raise PasswordPolicyError("the password is empty")
    if "\0" in password:
        raise PasswordPolicyError("the password holds a NUL character")


def prepare_password(password: str) -> str:
    """SASLprep (RFC 4013, stored-string rules, as SCRAM's Normalize) of
    ``password``; the password as it is when SASLprep refuses it (a control
    character, an unassigned code point) or leaves nothing: such a password has
    no SCRAM keys, and PLAIN and LOGIN still compare it octet for octet."""
    try:
        prepared = saslprep(password)
    except SaslprepError:
        return password
    return prepared or password


class PasswordMatch(enum.Enum):
    """How a password matched a stored hash."""

    NONE = "none"
    #: The prepared form matched: the hash is current.
    PREPARED = "prepared"
    #: Only the password as sent matched: a hash made before passwords were
    #: prepared, to be made again over the prepared form.
    AS_SENT = "as-sent"


class PasswordHasher:
    """Argon2id with the parameters of ``[accounts]``.

    Thread-safe: ``hash`` and ``verify`` release the GIL inside the C library,
    so the auth service runs them in a pool of ``hash_threads`` workers.
    """

    def __init__(self, cfg: AccountsConfig) -> None:
        self._ph = argon2.PasswordHasher(
            time_cost=cfg.argon2_time_cost,
            memory_cost=cfg.argon2_memory_kib,
            parallelism=cfg.argon2_parallelism,
            type=argon2.Type.ID,
        )
        self._decoy: str | None = None

    def hash(self, password: str) -> str:
        """Return a PHC-format Argon2id hash of ``prepare_password(password)``
        with a fresh salt."""
        return self._ph.hash(prepare_password(password))

    def verify(self, encoded: str, password: str) -> bool:
        """True if ``password`` matches ``encoded`` (see ``match``).

        Raises:
            StoredHashError: ``encoded`` is not an Argon2 hash (corrupt record).
        """
        return self.match(encoded, password) is not PasswordMatch.NONE

    def match(self, encoded: str, password: str) -> PasswordMatch:
        """Whether ``password`` matches ``encoded``: its prepared form, or (a hash
        made before passwords were prepared) the password as sent.

        Raises:
            StoredHashError: ``encoded`` is not an Argon2 hash (corrupt record).
        """
        prepared = prepare_password(password)
        if self._verify(encoded, prepared):
            return PasswordMatch.PREPARED
        if prepared != password and self._verify(encoded, password):
            return PasswordMatch.AS_SENT
        return PasswordMatch.NONE

    def _verify(self, encoded: str, password: str) -> bool:
        if getattr(_here, "one_thread", False):
            verdict = verify_on_one_thread(encoded, password)
            if verdict is not None:
                return verdict
        try:
            return self._ph.verify(encoded, password)
        except VerifyMismatchError:
            return False
        except (InvalidHashError, VerificationError) as e:
            # VerificationError other than a mismatch: the hash has the right shape
            # but the C library cannot decode it ("Decoding failed"): corrupt too.
            raise StoredHashError(f"stored password hash is not a valid Argon2 hash: {e}") from e

    def needs_rehash(self, encoded: str) -> bool:
        """True if ``encoded`` was made with other parameters than the configured ones."""
        try:
            return self._ph.check_needs_rehash(encoded)
        except (InvalidHashError, ValueError):
            return True

    def prepare_decoy(self) -> None:
        """Make the decoy hash now (one hash's work), so the first unknown account
        does not take twice as long as later ones. Idempotent."""
        if self._decoy is None:
            # Racing threads may both make one; either is as good as the other.
            self._decoy = self._ph.hash(secrets.token_urlsafe(32))

    def verify_decoy(self, password: str) -> None:
        """Spend one verification's work and learn nothing (for unknown accounts)."""
        self.prepare_decoy()
        assert self._decoy is not None
        self.verify(self._decoy, password)
