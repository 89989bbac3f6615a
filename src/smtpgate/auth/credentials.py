"""Per-mechanism secrets derived from a password, and their stored text form.

Theory of operation
-------------------
An account keeps one row per *scheme* in the ``credentials`` table, so a new
mechanism needs a new scheme name, not a schema change (the idea of mox's
``Password{Hash, CRAMMD5, SCRAMSHA1, SCRAMSHA256}``, one row each):

- ``argon2id``: the PHC string; the only secret PLAIN and LOGIN need.
- ``scram-sha-1`` / ``scram-sha-256``: salt, iterations, StoredKey, ServerKey
  (RFC 5802 §3). They let a server check a SCRAM proof, but a thief can neither
  log in with them nor read the password from them (short of brute force).
- ``cram-md5``: the HMAC-MD5 inner and outer states of the password. These are
  plaintext-equivalent for CRAM-MD5 (RFC 2195 §4 admits as much), so they are
  stored only for accounts that opted in.

None of them is the password, or the password in a reversible form.

Derivation happens here, called by the auth service (secrets an account lacks,
made after a good PLAIN/LOGIN login) and by the admin service (a new password),
never by a store: a store keeps what it is given, so a backend that cannot hash
(an LDAP directory) implements the same interfaces. App passwords are made here
too (``generate_app_password``).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from typing import Any

from smtpgate import mechanism_facts
from smtpgate.auth.passwords import PasswordHasher, PasswordPolicyError
from smtpgate.config import AccountsConfig
from smtpgate.sasl.base import CramMd5Secret, ScramCredentials
from smtpgate.sasl.cram_md5 import cram_md5_secret_from_password
from smtpgate.sasl.scram import scram_credentials_from_password

ARGON2ID = "argon2id"
SCRAM_SHA_1 = "scram-sha-1"
SCRAM_SHA_256 = "scram-sha-256"
CRAM_MD5 = "cram-md5"

#: hash_name of ``LookupScram`` -> scheme; the SCRAM schemes made for every account.
SCRAM_SCHEMES = {"sha1": SCRAM_SHA_1, "sha256": SCRAM_SHA_256}


#: App passwords look like ``abcd-efgh-jkmn-pqrs-tuvw``: 20 symbols from a
#: 31-letter alphabet without look-alikes (0/o, 1/l/i), so 99 bits, typed
#: easily on a phone. Only a password of this shape is tried as an app password.
#: Being random, they are stored as a salted HMAC (the store's business), not
#: Argon2id: no dictionary attack applies to them.
APP_PASSWORD_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
APP_PASSWORD_RE = re.compile(r"[a-z2-9]{4}(?:-[a-z2-9]{4}){4}")
#: SCRAM keys are per password and a SCRAM exchange names one set of keys, so an
#: app password works with the mechanisms that send the password itself.
APP_PASSWORD_MECHANISMS = tuple(mechanism_facts.in_strength_order(mechanism_facts.CLEARTEXT))


def generate_app_password() -> str:
    """A new app password (``secrets``), shown once and never stored."""
    groups = ("".join(secrets.choice(APP_PASSWORD_ALPHABET) for _ in range(4)) for _ in range(5))
    return "-".join(groups)


class CredentialDataError(Exception):
    """A stored credential record does not parse: a data fault, never the client's."""


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(obj: dict[str, Any], key: str) -> bytes:
    value = obj[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return base64.b64decode(value, validate=True)


def encode_scram(c: ScramCredentials) -> str:
    return json.dumps(
        {
            "salt": _b64(c.salt),
            "iterations": c.iterations,
            "stored_key": _b64(c.stored_key),
            "server_key": _b64(c.server_key),
        },
        sort_keys=True,
    )


def decode_scram(data: str) -> ScramCredentials:
    """Raises CredentialDataError on a malformed record."""
    try:
        obj = json.loads(data)
        iterations = obj["iterations"]
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
            raise TypeError("iterations is not a positive integer")
        return ScramCredentials(
            salt=_unb64(obj, "salt"),
            iterations=iterations,
            stored_key=_unb64(obj, "stored_key"),
            server_key=_unb64(obj, "server_key"),
        )
    except (ValueError, TypeError, KeyError) as e:
        raise CredentialDataError(f"malformed SCRAM record: {e}") from None


def encode_cram_md5(c: CramMd5Secret) -> str:
    return json.dumps({"inner": _b64(c.inner), "outer": _b64(c.outer)}, sort_keys=True)


def decode_cram_md5(data: str) -> CramMd5Secret:
    """Raises CredentialDataError on a malformed record."""
    try:
        obj = json.loads(data)
        return CramMd5Secret(inner=_unb64(obj, "inner"), outer=_unb64(obj, "outer"))
    except (ValueError, TypeError, KeyError) as e:
        raise CredentialDataError(f"malformed CRAM-MD5 record: {e}") from None


def derive(
    password: str,
    schemes: set[str] | frozenset[str],
    cfg: AccountsConfig,
    hasher: PasswordHasher,
    *,
    strict: bool = True,
) -> dict[str, str]:
    """Compute the stored form of each of ``schemes`` from ``password``.

    Slow by design (Argon2id, PBKDF2): call it off the event loop.

    Raises:
        PasswordPolicyError: SASLprep (RFC 4013, required by SCRAM, RFC 5802
            §2.2) refuses the password. With ``strict`` False the SCRAM schemes
            are left out instead: an old password keeps working with PLAIN.
    """
    out: dict[str, str] = {}
    if ARGON2ID in schemes:
        out[ARGON2ID] = hasher.hash(password)
    for hash_name, scheme in SCRAM_SCHEMES.items():
        if scheme in schemes:
            try:
                creds = scram_credentials_from_password(password, hash_name, cfg.scram_iterations)
            except ValueError as e:
                if strict:
                    raise PasswordPolicyError(f"the password cannot be used with SCRAM: {e}") from e
                continue
            out[scheme] = encode_scram(creds)
    if CRAM_MD5 in schemes:
        out[CRAM_MD5] = encode_cram_md5(cram_md5_secret_from_password(password))
    return out


def wanted_schemes(cram_md5_enabled: bool) -> frozenset[str]:
    """The schemes an account with this setting should hold."""
    base = {ARGON2ID, *SCRAM_SCHEMES.values()}
    if cram_md5_enabled:
        base.add(CRAM_MD5)
    return frozenset(base)
