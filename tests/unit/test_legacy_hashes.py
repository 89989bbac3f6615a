"""Dovecot's password schemes: read at import, verified at login (auth/legacy_hashes.py).

Hashes come from the real ``doveadm pw`` (dovecot-core) for every scheme the
importer reads, and from the published SHA-crypt and md5crypt vectors.
"""

from __future__ import annotations

import base64
import subprocess

import pytest

from smtpgate.auth import legacy_hashes as lh
from smtpgate.auth.credentials import (
    ARGON2ID,
    CRAM_MD5,
    SCRAM_SHA_1,
    SCRAM_SHA_256,
    decode_cram_md5,
    decode_scram,
)
from smtpgate.auth.legacy_hashes import LEGACY, LegacyHashError
from smtpgate.sasl.cram_md5 import cram_md5_secret_from_password
from smtpgate.sasl.scram import scram_credentials_from_password
from tests.integration.conftest import require_tool

#: Every scheme the importer reads, as ``doveadm pw -s`` names it.
DOVEADM_SCHEMES = [
    "ARGON2ID", "ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "SSHA512",
    "SSHA256", "SSHA", "SHA", "MD5-CRYPT", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256",
    "PLAIN", "CLEAR", "SHA.b64", "SHA.hex", "SSHA.hex", "SSHA512.hex", "PLAIN.b64",
    "PLAIN.hex", "SHA256", "SHA512", "MD5",
]
PASSWORDS = ["pencil", "pässwörd ünïcode", "p" * 80]


def doveadm_pw(scheme: str, password: str, *extra: str) -> str:
    doveadm = require_tool("doveadm")
    return subprocess.run(
        [doveadm, "pw", "-s", scheme, "-p", password, *extra],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("scheme", DOVEADM_SCHEMES)
def test_doveadm_hash_verifies_its_password_and_refuses_another(scheme: str, password: str) -> None:
    field = doveadm_pw(scheme, password)
    parsed = lh.parse(field)
    if parsed.password is not None:  # {PLAIN}/{CLEAR}: the password itself, hashed at import
        assert parsed.password == password
        assert parsed.credentials is None
        return
    assert parsed.credentials is not None
    if scheme == "ARGON2ID":  # our own format: stored as the argon2id credential
        assert set(parsed.credentials) == {ARGON2ID}
        return
    stored = parsed.credentials[LEGACY]
    assert lh.verify(stored, password)
    assert not lh.verify(stored, "x" + password)
    assert not lh.verify(stored, "")
    if scheme != "BLF-CRYPT" or len(password) < 72:  # bcrypt reads 72 bytes, as crypt(3)
        assert not lh.verify(stored, password + "x")
        assert not lh.verify(stored, password[:-1])


@pytest.mark.parametrize(("scheme", "hash_name", "key"),
                         [("SCRAM-SHA-1", "sha1", SCRAM_SHA_1),
                          ("SCRAM-SHA-256", "sha256", SCRAM_SHA_256)])
def test_scram_keys_are_imported_as_they_are(scheme: str, hash_name: str, key: str) -> None:
    parsed = lh.parse(doveadm_pw(scheme, "pencil"))
    assert parsed.credentials is not None
    keys = decode_scram(parsed.credentials[key])
    mine = scram_credentials_from_password("pencil", hash_name, keys.iterations, keys.salt)
    assert (keys.stored_key, keys.server_key) == (mine.stored_key, mine.server_key)


def test_cram_md5_states_become_our_secret() -> None:
    parsed = lh.parse(doveadm_pw("CRAM-MD5", "pencil"))
    assert parsed.credentials is not None
    expected = cram_md5_secret_from_password("pencil")
    assert decode_cram_md5(parsed.credentials[CRAM_MD5]) == expected


def test_sha512_crypt_with_rounds_from_doveadm() -> None:
    stored = lh.parse(doveadm_pw("SHA512-CRYPT", "pencil", "-r", "6000")).credentials
    assert stored is not None and "rounds=6000$" in stored[LEGACY]
    assert lh.verify(stored[LEGACY], "pencil")


# Drepper, "Unix crypt using SHA-256 and SHA-512", test vectors; md5crypt checked
# against glibc/libxcrypt's crypt(3).
CRYPT_VECTORS = [
    ("Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    ("Hello world!", ("$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJ"
                     "uesI68u4OTLiBFdcbYEdFCoEOfaS35inz1")),
    ("This is just a test",
     "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5"),
    ("we have a short salt string but not a short password",
     ("$6$rounds=1400$anotherlongsalts$AP.vbZcNbWD30OfPAcUJe702LINHtb7RqILoLW9vJ/DHPMJyr6a."
     "5rQHcOzBXuDOEzAqm8/9xW6EF/z3vOBQp0")),
    ("", "$1$saltsalt$5Jhcit4zN9UlGiA0txPkO0"),
    ("password", "$1$abcdefgh$G//4keteveJp0qb8z2DxG/"),
]


@pytest.mark.parametrize(("password", "expected"), CRYPT_VECTORS)
def test_crypt_vectors(password: str, expected: str) -> None:
    fn = lh.md5_crypt if expected.startswith("$1$") else lh.sha_crypt
    assert fn(password.encode(), expected) == expected


BAD_FIELDS = [
    ("{NOSUCH}abc", "not supported"),
    ("{SHA}notbase64!!", "not valid base64"),
    ("{SHA}AAAA", "wrong length"),
    ("{SSHA512}" + base64.b64encode(bytes(64)).decode(), "wrong length"),  # 64 bytes: a digest with no salt
    ("{SHA512-CRYPT}$5$abc$def", "does not start with $6$"),
    ("{SHA512-CRYPT}$6$rounds=999999$salt$abc", "rounds"),
    ("{SHA512-CRYPT}$6$salt", "not a complete crypt string"),
    ("{BLF-CRYPT}$2y$05$short", "not a bcrypt string"),
    ("{ARGON2I}$argon2i$v=19$garbage", "not a valid Argon2 hash"),
    ("{SCRAM-SHA-256}4096,abc", "iterations,salt"),
    ("{CRAM-MD5}abcd", "not 32 bytes"),
    ("{PLAIN.b64}////", "not UTF-8"),
    ("justsomething", "no {SCHEME} prefix"),
    ("{DES-CRYPT}abcdefghijklm", "not supported"),
]


@pytest.mark.parametrize(("field", "message"), BAD_FIELDS)
def test_bad_field_is_refused_with_the_reason(field: str, message: str) -> None:
    with pytest.raises(LegacyHashError, match=message.replace("$", r"\$").replace("{", r"\{")):
        lh.parse(field)


def test_unprefixed_crypt_string_is_read_as_its_scheme() -> None:
    field = doveadm_pw("SHA512-CRYPT", "pencil").removeprefix("{SHA512-CRYPT}")
    parsed = lh.parse(field)
    assert parsed.scheme == "SHA512-CRYPT"
    assert parsed.credentials is not None
    assert lh.verify(parsed.credentials[LEGACY], "pencil")


def test_corrupt_stored_hash_is_a_data_fault_not_a_wrong_password() -> None:
    with pytest.raises(LegacyHashError):
        lh.verify("{SSHA}@@@", "pencil")
    with pytest.raises(LegacyHashError):
        lh.verify("{WHAT}x", "pencil")
