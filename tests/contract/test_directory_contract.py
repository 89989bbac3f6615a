"""The AccountDirectory contract (src/smtpgate/auth/directory.py), run against every
implementation in ``directories.HARNESSES``.

Written against the interface only, on the accounts of ``directories.SEED``:
look-ups (canonical names, case rules, unknown and malformed names, injection
attempts), verifying a password (right, wrong, another account's, empty, no
password, locked), credentials and their generation guard, aliases and granted
domains, app passwords, access rules and mechanism policy, rates, the login
bookkeeping, changes made elsewhere (seen at the next read, generation moved)
and faults (a closed instance raises StoreUnavailable, nothing else).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smtpgate.auth.admin_store import AccountAdminStore
from smtpgate.auth.credentials import (
    ARGON2ID,
    CRAM_MD5,
    SCRAM_SCHEMES,
    SCRAM_SHA_256,
    decode_scram,
    encode_scram,
)
from smtpgate.auth.directory import AccountDirectory, StoreUnavailable
from smtpgate.auth.legacy_hashes import LEGACY
from smtpgate.auth.names import lookup_key
from smtpgate.auth.passwords import PasswordHasher
from smtpgate.sasl.scram import scram_credentials_from_password
from tests.contract.directories import ACTOR as CONTRACT_ACTOR
from tests.contract.directories import (
    ALICE,
    BOB,
    CAROL,
    CFG,
    DAVE,
    HARNESSES,
    OLD_APP,
    PHONE,
    SEED,
    Harness,
)

PASSWORD = {a.name: a.password for a in SEED}
#: Names that must match no account and never raise: malformed addresses and the
#: characters of LDAP filter (RFC 4515) and SQL injection.
HOSTILE = [
    "", "alice", "@example.org", "alice@", "not an address", "alice@example.org\0",
    "*", "*@example.org", "alice@example.org)(uid=*", "*)(mail=*", "alice*@example.org",
    "al\\2aice@example.org", "alice@example.org' OR '1'='1", "alice@example.org; --",
]


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h: Harness = HARNESSES[request.param](tmp_path)
    yield h
    h.close()


@pytest.fixture
def d(harness: Harness) -> AccountDirectory:
    return harness.open()


# --- look-ups ---------------------------------------------------------------------------


def test_known_accounts_by_their_canonical_name(d: AccountDirectory) -> None:
    for seeded in SEED:
        a = d.get_account(seeded.name)
        assert a is not None and a.name == lookup_key(seeded.name)


def test_letter_case_never_matters(d: AccountDirectory) -> None:
    """Neither in the domain (RFC 5321 §2.4) nor in the local part (auth/names.py: a
    login name is no mailbox; Dave's account was made as Dave@example.org)."""
    for typed, name in (("alice@EXAMPLE.Org", ALICE), ("Alice@example.org", ALICE),
                        ("dave@example.org", DAVE), ("Dave@Example.ORG", DAVE)):
        a = d.get_account(typed)
        assert a is not None and a.name == name, typed


def test_unknown_user_is_none_everywhere(d: AccountDirectory) -> None:
    ghost = "ghost@example.org"
    assert d.get_account(ghost) is None
    assert d.get_credential(ghost, ARGON2ID) is None
    assert not d.verify_password(ghost, PASSWORD[ALICE] or "")
    assert d.aliases(ghost) == [] and d.granted_domains(ghost) == []
    assert d.match_app_password(ghost, PHONE) is None
    assert d.certificate("00" * 32) is None  # EXTERNAL: a fingerprint never registered
    d.record_login(ghost, "PLAIN", datetime.now(UTC))  # no error
    assert not d.put_credentials(ghost, {SCRAM_SHA_256: "{}"}, generation=0)


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_match_nothing_and_never_raise(d: AccountDirectory, name: str) -> None:
    assert d.get_account(name) is None
    assert not d.verify_password(name, PASSWORD[ALICE] or "")
    assert d.aliases(name) == [] and d.granted_domains(name) == []
    assert d.match_app_password(name, PHONE) is None


# --- the name the guard counts under (docs/protection.md) --------------------------------


def test_every_login_name_of_an_account_resolves_to_its_one_name(
    d: AccountDirectory, harness: Harness
) -> None:
    """The guard's per-account count is keyed on this: two names of one account
    must give one key, or each would get its own count of wrong passwords."""
    assert d.login_identity(ALICE) == ALICE
    assert d.login_identity("alice@EXAMPLE.Org") == ALICE
    assert d.login_identity("Dave@Example.ORG") == DAVE
    for seeded in SEED:
        for other in harness.other_logins(seeded.name):
            assert other != seeded.name
            assert d.login_identity(other) == lookup_key(seeded.name)
            if seeded.password is not None:  # the name really logs in as the account
                assert d.verify_password(other, seeded.password)


def test_a_name_of_no_account_resolves_to_its_normalised_spelling(d: AccountDirectory) -> None:
    """Unknown names are counted under themselves (spraying detection), in lower
    case: each capitalisation of one name is one count."""
    assert d.login_identity("Ghost@Example.ORG") == "ghost@example.org"
    assert d.login_identity("Alice@example.org") == ALICE
    for name in HOSTILE:
        assert d.login_identity(name) == lookup_key(name)


# --- verify this password ---------------------------------------------------------------


def test_verify_password(d: AccountDirectory) -> None:
    assert d.verify_password(ALICE, "correct horse battery")
    assert d.verify_password("alice@EXAMPLE.org", "correct horse battery")
    assert not d.verify_password(ALICE, "correct horse battery ")
    assert not d.verify_password(ALICE, "Correct horse battery")
    assert not d.verify_password(ALICE, PASSWORD[BOB] or "")  # another account's
    assert not d.verify_password(BOB, PASSWORD[ALICE] or "")


def test_an_empty_password_is_never_right(d: AccountDirectory) -> None:
    # An LDAP simple bind with an empty password is an unauthenticated bind that
    # servers answer with success (RFC 4513 §5.1.2): a bind backend must refuse it.
    for seeded in SEED:
        assert not d.verify_password(seeded.name, "")


def test_an_account_without_password_verifies_nothing(d: AccountDirectory) -> None:
    assert not d.verify_password(CAROL, "")
    assert not d.verify_password(CAROL, "anything")


def test_verify_checks_the_password_only_not_the_lock(d: AccountDirectory) -> None:
    # Lock state, expiry and access rules are the auth service's to apply.
    bob = d.get_account(BOB)
    assert bob is not None and bob.locked
    assert d.verify_password(BOB, "bob's own secret")


def test_credentials_match_how_passwords_are_checked(d: AccountDirectory) -> None:
    encoded = d.get_credential(ALICE, ARGON2ID)
    if d.verifies_passwords:
        assert encoded is None  # a bind-only directory hands out no hash
    else:
        assert encoded is not None
        assert PasswordHasher(CFG).verify(encoded, "correct horse battery")
    a = d.get_account(ALICE)
    assert a is not None
    for scheme in SCRAM_SCHEMES.values():
        data = d.get_credential(ALICE, scheme)
        assert (data is not None) == (scheme in a.schemes)
    assert d.get_credential(ALICE, "no-such-scheme") is None
    assert d.get_credential(CAROL, ARGON2ID) is None


def test_stored_scram_keys_are_the_passwords(d: AccountDirectory) -> None:
    for hash_name, scheme in SCRAM_SCHEMES.items():
        data = d.get_credential(ALICE, scheme)
        if data is None:
            continue  # made at the next PLAIN/LOGIN login (bind-only directories)
        keys = decode_scram(data)
        again = scram_credentials_from_password(
            "correct horse battery", hash_name, keys.iterations, keys.salt
        )
        assert keys == again


# --- credentials kept after a login: the generation guard -----------------------------------


def test_put_credentials_guarded_by_generation(d: AccountDirectory, harness: Harness) -> None:
    a = d.get_account(ALICE)
    assert a is not None
    keys = encode_scram(scram_credentials_from_password("correct horse battery", "sha256", 4096))
    assert d.put_credentials(ALICE, {SCRAM_SHA_256: keys}, generation=a.generation)
    assert d.get_credential(ALICE, SCRAM_SHA_256) == keys
    b = d.get_account(ALICE)
    assert b is not None and SCRAM_SHA_256 in b.schemes
    assert b.generation == a.generation  # bookkeeping does not invalidate
    harness.change_password(ALICE, "a new password")
    stale = encode_scram(scram_credentials_from_password("correct horse battery", "sha256", 4096))
    assert not d.put_credentials(ALICE, {SCRAM_SHA_256: stale}, generation=a.generation)
    assert d.get_credential(ALICE, SCRAM_SHA_256) != stale


def test_an_imported_hash_goes_when_the_argon2id_one_is_kept(d: AccountDirectory) -> None:
    """`user import` keeps an old scheme's hash (``legacy``) until the first login
    stores the Argon2id one; then `user list` must stop saying "legacy hash". A
    directory that keeps the passwords itself never holds one."""
    if d.verifies_passwords:
        assert d.get_credential(ALICE, LEGACY) is None
        return
    admin: AccountAdminStore = d  # type: ignore[assignment]  # hash-holding: both sides
    with admin.transaction(CONTRACT_ACTOR) as w:
        w.replace_credentials(ALICE, {LEGACY: "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="})
    a = d.get_account(ALICE)
    assert a is not None and LEGACY in a.schemes and ARGON2ID not in a.schemes
    argon = PasswordHasher(CFG).hash("password")
    assert d.put_credentials(ALICE, {ARGON2ID: argon}, generation=a.generation)
    assert d.get_credential(ALICE, LEGACY) is None
    assert d.get_credential(ALICE, ARGON2ID) == argon
    b = d.get_account(ALICE)
    assert b is not None and LEGACY not in b.schemes


def test_a_cram_md5_secret_is_kept_only_for_accounts_that_opted_in(
    d: AccountDirectory, harness: Harness
) -> None:
    for name, opted_in in ((ALICE, False), (DAVE, getattr(harness, "offers_cram_md5", True))):
        a = d.get_account(name)
        assert a is not None and a.cram_md5_enabled is opted_in
        assert d.put_credentials(name, {CRAM_MD5: '{"inner": "", "outer": ""}'},
                                 generation=a.generation)
        assert (d.get_credential(name, CRAM_MD5) is not None) is opted_in


# --- sender ownership --------------------------------------------------------------------


def test_aliases_and_granted_domains(d: AccountDirectory) -> None:
    assert d.aliases(ALICE) == ["info@example.org", "sales@example.org"]
    assert d.aliases("alice@EXAMPLE.ORG") == ["info@example.org", "sales@example.org"]
    assert d.granted_domains(ALICE) == ["example.net"]
    assert d.aliases(BOB) == [] and d.granted_domains(BOB) == []


def test_an_aliass_owner_is_found(d: AccountDirectory) -> None:
    """A domain grant does not cover another account's alias (docs/policy.md):
    the auth service asks whose an address is."""
    assert d.login_identity(d.alias_owner("sales@example.org") or "") == ALICE
    assert d.alias_owner("nobody@example.org") is None
    assert d.alias_owner(BOB) in (None, BOB)  # a directory entry's own mail value


# --- app passwords -------------------------------------------------------------------------


def test_app_password_matched_with_its_scope_and_rates(d: AccountDirectory) -> None:
    app = d.match_app_password(ALICE, PHONE)
    assert app is not None and app.account == ALICE and app.name == "phone"
    assert app.networks == ("192.0.2.0/24",) and app.mechanisms == frozenset({"PLAIN"})
    assert app.max_messages_per_hour == 5 and not app.expired(datetime.now(UTC))


def test_app_password_is_only_its_accounts(d: AccountDirectory) -> None:
    assert d.match_app_password(BOB, PHONE) is None
    assert d.match_app_password(ALICE, "abcd-efgh-jkmn-pqrs-tuvx") is None
    assert d.match_app_password(ALICE, PASSWORD[ALICE] or "") is None
    assert d.match_app_password(ALICE, "") is None


def test_an_expired_app_password_still_matches_for_the_caller_to_refuse(
    d: AccountDirectory,
) -> None:
    app = d.match_app_password(ALICE, OLD_APP)
    assert app is not None and app.name == "old tablet" and app.expired(datetime.now(UTC))


def test_app_passwords_are_listed_by_account_with_the_ids_matching_gives(
    d: AccountDirectory,
) -> None:
    """What an open session's recheck reads (``AuthService.session_refusal``)."""
    phone = d.match_app_password(ALICE, PHONE)
    listed = {a.name: a for a in d.app_passwords(ALICE)}
    assert phone is not None and set(listed) == {"phone", "old tablet"}
    assert listed["phone"].id == phone.id and listed["phone"].account == ALICE
    assert d.app_passwords(BOB) == [] and d.app_passwords("nobody@example.org") == []


def test_app_password_use_is_recorded_and_never_goes_back(d: AccountDirectory) -> None:
    app = d.match_app_password(ALICE, PHONE)
    assert app is not None
    t = datetime(2030, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    d.record_app_password_use(app.id, t, "192.0.2.7")
    d.record_app_password_use(app.id, t - timedelta(seconds=1), "192.0.2.99")  # late write
    again = d.match_app_password(ALICE, PHONE)
    assert again is not None and again.last_used == t and again.last_address == "192.0.2.7"


# --- access rules, mechanism policy, rates, locks -----------------------------------------


def test_access_rules(d: AccountDirectory) -> None:
    bob, alice, carol = d.get_account(BOB), d.get_account(ALICE), d.get_account(CAROL)
    assert bob is not None and alice is not None and carol is not None
    assert bob.allowed_networks is not None
    assert set(bob.allowed_networks) == {"10.0.0.0/8", "2001:db8::/32"}
    assert bob.allowed_listeners == frozenset({"submission"})
    assert alice.allowed_networks is None and alice.allowed_listeners is None
    assert carol.require_oauth and not alice.require_oauth


def test_mechanism_policy(d: AccountDirectory, harness: Harness) -> None:
    bob, alice = d.get_account(BOB), d.get_account(ALICE)
    assert bob is not None and alice is not None
    assert bob.allowed_mechanisms == frozenset({"SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"})
    assert bob.allows("scram-sha-256") and not bob.allows("PLAIN")
    assert alice.allowed_mechanisms is None and alice.allows("CRAM-MD5")
    dave = d.get_account(DAVE)
    # CRAM-MD5 is never available for directory (LDAP) accounts.
    offers_cram_md5 = getattr(harness, "offers_cram_md5", True)
    assert dave is not None and dave.cram_md5_enabled is offers_cram_md5
    assert not alice.cram_md5_enabled


def test_rates(d: AccountDirectory) -> None:
    alice, bob = d.get_account(ALICE), d.get_account(BOB)
    assert alice is not None and bob is not None
    assert (alice.max_messages_per_hour, alice.max_recipients_per_hour) == (100, 1000)
    assert (bob.max_messages_per_hour, bob.max_recipients_per_hour) == (None, None)


def test_locked_account(d: AccountDirectory) -> None:
    bob, alice = d.get_account(BOB), d.get_account(ALICE)
    assert bob is not None and bob.locked and bob.lock_reason == "phished"
    assert alice is not None and not alice.locked and alice.lock_reason is None


# --- changes made elsewhere are seen at once ------------------------------------------------


def test_a_lock_made_elsewhere_is_seen_at_the_next_read(
    d: AccountDirectory, harness: Harness
) -> None:
    before = d.get_account(ALICE)
    assert before is not None and not before.locked
    harness.lock(ALICE, "compromised")
    after = d.get_account(ALICE)
    assert after is not None and after.locked and after.lock_reason == "compromised"
    assert after.generation != before.generation  # what caches compare


def test_a_password_changed_elsewhere_is_seen_at_the_next_read(
    d: AccountDirectory, harness: Harness
) -> None:
    before = d.get_account(ALICE)
    assert before is not None
    harness.change_password(ALICE, "a whole new secret")
    assert not d.verify_password(ALICE, "correct horse battery")
    assert d.verify_password(ALICE, "a whole new secret")
    after = d.get_account(ALICE)
    assert after is not None and after.generation != before.generation


def test_instances_share_the_data(harness: Harness) -> None:
    one, two = harness.open(), harness.open()
    a = one.get_account(ALICE)
    assert a is not None
    keys = encode_scram(scram_credentials_from_password("correct horse battery", "sha256", 4096))
    assert one.put_credentials(ALICE, {SCRAM_SHA_256: keys}, generation=a.generation)
    assert two.get_credential(ALICE, SCRAM_SHA_256) == keys


# --- login bookkeeping ------------------------------------------------------------------------


def test_last_login_never_goes_backwards(d: AccountDirectory) -> None:
    t = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    d.record_login(ALICE, "plain", t)
    d.record_login(ALICE, "LOGIN", t - timedelta(seconds=1))  # a late, older write
    a = d.get_account(ALICE)
    assert a is not None and a.last_login == t and a.last_mechanism == "PLAIN"
    d.record_login("alice@EXAMPLE.org", "SCRAM-SHA-256", t + timedelta(microseconds=1))
    b = d.get_account(ALICE)
    assert b is not None and b.last_mechanism == "SCRAM-SHA-256"
    assert b.generation == a.generation  # bookkeeping does not invalidate caches


# --- faults ----------------------------------------------------------------------------------


def test_a_closed_instance_raises_store_unavailable(d: AccountDirectory) -> None:
    d.close()
    for call in (
        lambda: d.get_account(ALICE),
        lambda: d.get_credential(ALICE, ARGON2ID),
        lambda: d.verify_password(ALICE, "correct horse battery"),
        lambda: d.aliases(ALICE),
        lambda: d.granted_domains(ALICE),
        lambda: d.match_app_password(ALICE, PHONE),
    ):
        with pytest.raises(StoreUnavailable):
            call()
    d.close()  # idempotent
