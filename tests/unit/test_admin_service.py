"""The admin service (smtpgate/admin.py): every operation is one transaction, so a
failed one changes nothing; `user rotate` above all (issue 9's defect)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from smtpgate.admin import AccountAdmin, AdminError, NotFoundError
from smtpgate.auth.guard_state import Block, GuardStoreError
from smtpgate.auth.store import AccountExists, AuditActor, NoSuchAccount, SqliteAccountStore

from .cli_support import FAST, write_config
from .test_policy_cli import run

BOB = "bob@example.org"
ACTOR = AuditActor("ops", "pytest")


def app_passwords(config: Path) -> list[tuple[str, str | None]]:
    """(name, expiry) of Bob's app passwords, read from the file as it is."""
    store = SqliteAccountStore(config.parent / "accounts.sqlite", FAST)
    try:
        return [(p.name, None if p.expires is None else p.expires.isoformat())
                for p in store.app_passwords(BOB)]
    finally:
        store.close()


def admin_actions(config: Path) -> list[str]:
    return [json.loads(x)["action"] for x in run(config, "admin-log", "--json").output.splitlines()]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    assert run(path, "user", "add", BOB, "--password-stdin", input="pw\n").exit_code == 0
    for name in ("phone", "laptop"):
        assert run(path, "app-password", "add", BOB, name).exit_code == 0
    return path


# --- the defect: `user rotate` was not atomic ---------------------------------------------


def test_rotate_onto_a_taken_name_changes_nothing(config: Path) -> None:
    before, actions = app_passwords(config), admin_actions(config)
    r = run(config, "user", "rotate", BOB, "--app", "phone", "--name", "laptop")
    assert r.exit_code == 1
    assert "already has an app password named 'laptop'" in r.stderr
    assert "hint: pass another --name" in r.stderr
    # Before the fix, 'phone' was renamed '... (rotated ...)' and given an expiry here,
    # with no replacement issued.
    assert app_passwords(config) == before
    assert admin_actions(config) == actions
    assert "new app password" not in r.output


def test_rotate_of_the_account_password_onto_a_taken_name_changes_nothing(config: Path) -> None:
    actions = admin_actions(config)
    r = run(config, "user", "rotate", BOB, "--name", "laptop")
    assert r.exit_code == 1
    shown = json.loads(run(config, "user", "show", BOB, "--json").output)
    assert shown["password_expires"] is None
    assert admin_actions(config) == actions


def test_rotate_renames_expires_and_issues_in_one_operation(config: Path) -> None:
    r = run(config, "user", "rotate", BOB, "--app", "phone", "--name", "phone-2", "--grace", "1h")
    assert r.exit_code == 0, r.output
    names = [n for n, _ in app_passwords(config)]
    assert "phone-2" in names and "laptop" in names
    (old,) = [(n, e) for n, e in app_passwords(config) if n.startswith("phone (rotated ")]
    assert old[1] is not None
    # Both changes carry the one command and the one time: one transaction.
    rows = [json.loads(x) for x in run(config, "admin-log", "--json").output.splitlines()][-2:]
    assert [x["action"] for x in rows] == ["app password expiry scheduled", "app password added"]
    assert rows[0]["time"] == rows[1]["time"]
    assert {x["command"] for x in rows} == {"smtpgate user rotate"}


def test_rotate_of_a_missing_app_password_exits_3(config: Path) -> None:
    r = run(config, "user", "rotate", BOB, "--app", "tablet")
    assert r.exit_code == 3 and "no app password named 'tablet'" in r.stderr


# --- the service itself ---------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> SqliteAccountStore:
    return SqliteAccountStore(tmp_path / "accounts.sqlite", FAST)


class FailingGuard:
    """A guard whose database fails when a lock is lifted."""

    def __init__(self) -> None:
        self.closed = False

    def active_blocks(self, now: float) -> list[Block]:
        return [Block("account", BOB, now - 1, now + 60, "lockout")]

    def unlock_account(self, account: str) -> int:
        raise GuardStoreError("guard database: disk I/O error")

    def unblock(self, key: str) -> int:
        raise GuardStoreError("guard database: disk I/O error")

    def forget_addresses(self, account: str) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class CountingGuard(FailingGuard):
    def unlock_account(self, account: str) -> int:
        return 2 if account == BOB else 0

    def unblock(self, key: str) -> int:
        return 1 if key == "192.0.2.1" else 0


def test_unlock_with_a_failing_guard_keeps_the_admin_lock(store: SqliteAccountStore) -> None:
    guard = FailingGuard()
    admin = AccountAdmin(store, FAST, actor=ACTOR, open_guard=lambda: guard)
    admin.add_account(BOB, "pw")
    admin.lock(BOB, "phished")
    before = store.admin_log()
    with pytest.raises(GuardStoreError):
        admin.unlock(BOB)
    account = store.get_account(BOB)
    assert account is not None and account.locked and account.lock_reason == "phished"
    assert store.admin_log() == before
    assert guard.closed


def test_unlock_lifts_guard_lockouts_and_records_them(store: SqliteAccountStore) -> None:
    admin = AccountAdmin(store, FAST, actor=ACTOR, open_guard=CountingGuard)
    admin.add_account(BOB, "pw")
    assert admin.unlock(BOB)  # no admin lock, but two guard blocks
    last = store.admin_log()[-1]
    assert (last.action, last.target, last.details) == ("guard lockout lifted", BOB, {"blocks": 2})
    with pytest.raises(NoSuchAccount):
        admin.unlock("ghost@example.org")
    assert admin.unblock("192.0.2.1") == 1
    with pytest.raises(NotFoundError, match="not blocked"):
        admin.unblock("192.0.2.9")
    assert [e.action for e in store.admin_log()][-2:] == ["guard lockout lifted", "guard block lifted"]


def test_enable_cram_md5_with_a_wrong_password_changes_nothing(store: SqliteAccountStore) -> None:
    admin = AccountAdmin(store, FAST, actor=ACTOR)
    admin.add_account(BOB, "pw")
    with pytest.raises(AdminError, match="does not match"):
        admin.enable_cram_md5(BOB, "wrong")
    account = store.get_account(BOB)
    assert account is not None and not account.cram_md5_enabled


def test_enable_cram_md5_while_the_password_changes_changes_nothing(
    store: SqliteAccountStore,
) -> None:
    """The secret is derived from the password checked; if another admin changes the
    password meanwhile, neither the opt-in nor the (stale) secret is stored. Before,
    the opt-in was committed and only the secret refused."""
    other = AccountAdmin(SqliteAccountStore(store.path, FAST), FAST, actor=ACTOR)
    other.add_account(BOB, "pw")

    class Racing(SqliteAccountStore):
        def verify_password(self, name: str, password: str) -> bool:
            ok = super().verify_password(name, password)
            other.set_password(BOB, "new")  # lands between the check and the write
            return ok

    racing = Racing(store.path, FAST)
    try:
        with pytest.raises(AdminError, match="changed while enabling"):
            AccountAdmin(racing, FAST, actor=ACTOR).enable_cram_md5(BOB, "pw")
        account = store.get_account(BOB)
        assert account is not None and not account.cram_md5_enabled
        assert "cram-md5" not in account.schemes
    finally:
        racing.close()
        other.close()


def test_a_change_with_a_bad_value_changes_nothing(store: SqliteAccountStore) -> None:
    from smtpgate.admin import RequireOAuth, RestrictNetworks

    admin = AccountAdmin(store, FAST, actor=ACTOR)
    admin.add_account(BOB, "pw")
    before = store.admin_log()
    with pytest.raises(ValueError):
        admin.change_access(BOB, [RequireOAuth(True), RestrictNetworks(("not-a-network",))])
    account = store.get_account(BOB)
    assert account is not None and not account.require_oauth
    assert store.admin_log() == before


def test_app_password_names_are_unique_per_account(store: SqliteAccountStore) -> None:
    admin = AccountAdmin(store, FAST, actor=ACTOR)
    admin.add_account(BOB, "pw")
    admin.add_app_password(BOB, "phone")
    with pytest.raises(AccountExists):
        admin.add_app_password(BOB, "phone")
    deadline_before = time.time()
    rotation = admin.rotate_app_password(BOB, "phone", grace=timedelta(hours=1))
    assert rotation.app_password.name == "phone"  # the new one takes the old name
    assert rotation.deadline.timestamp() >= deadline_before + 3600 - 1
    names = sorted(p.name for p in store.app_passwords(BOB))
    assert names[0] == "phone" and names[1].startswith("phone (rotated ")


# --- a second rotation never lengthens the first one's grace -----------------------------


def test_a_second_rotation_does_not_revive_an_expired_account_password(config: Path) -> None:
    """`user rotate --grace 0` ended the account password at once; a second `user
    rotate` (the default grace of 7 days) used to set its expiry anew, so the old
    password logged in again for a week. The earlier deadline now stands."""
    assert run(config, "user", "rotate", BOB, "--grace", "0").exit_code == 0
    store = SqliteAccountStore(config.parent / "accounts.sqlite", FAST)
    try:
        first = store.get_account(BOB)
        assert first is not None and first.password_expires is not None
        r = run(config, "user", "rotate", BOB, "--name", "second")
        assert r.exit_code == 0, r.output
        second = store.get_account(BOB)
        assert second is not None
        assert second.password_expires == first.password_expires
    finally:
        store.close()
    stamp = first.password_expires.strftime("%Y-%m-%d %H:%M")
    assert f"the account password stops working at {stamp} UTC" in r.output


def test_rotation_reports_the_old_app_passwords_own_earlier_expiry(
    store: SqliteAccountStore,
) -> None:
    """An app password that expires before the grace ends keeps its expiry (the
    store never lengthens it); the rotation said the grace's end all the same."""
    admin = AccountAdmin(store, FAST, actor=ACTOR)
    admin.add_account(BOB, "pw")
    admin.add_app_password(BOB, "phone", expires=datetime.now(UTC) + timedelta(hours=1))
    rotation = admin.rotate_app_password(BOB, "phone", grace=timedelta(days=7))
    (old,) = [p for p in store.app_passwords(BOB) if p.name.startswith("phone (rotated ")]
    assert old.expires is not None
    assert rotation.deadline == old.expires


# --- a rotation keeps the app password's lifetime ------------------------------------------


@pytest.mark.parametrize(("lifetime", "grace"), [
    (timedelta(hours=1), timedelta(days=7)),   # its own expiry comes first
    (timedelta(days=30), timedelta(hours=1)),  # the grace ends first
])
def test_rotation_keeps_the_app_passwords_lifetime(
    store: SqliteAccountStore, lifetime: timedelta, grace: timedelta,
) -> None:
    """An app password made with an expiry was replaced by one with none when its
    expiry came before the grace's end: a rotation turned a 1-hour password into a
    permanent one. The old one ends at the earlier of its expiry and the grace's
    end; the new one keeps the old one's expiry."""
    admin = AccountAdmin(store, FAST, actor=ACTOR)
    admin.add_account(BOB, "pw")
    now = datetime.now(UTC)
    admin.add_app_password(BOB, "phone", expires=now + lifetime)
    (before,) = store.app_passwords(BOB)
    rotation = admin.rotate_app_password(BOB, "phone", grace=grace)
    by_name = {p.name: p for p in store.app_passwords(BOB)}
    (old,) = [p for n, p in by_name.items() if n.startswith("phone (rotated ")]
    assert before.expires is not None and old.expires is not None
    assert old.expires == min(before.expires, rotation.deadline) == rotation.deadline
    assert abs(old.expires - (now + min(lifetime, grace))) < timedelta(seconds=5)
    assert by_name["phone"].expires == before.expires
    assert rotation.app_password.expires == before.expires


def test_an_expired_app_password_is_not_rotated(config: Path) -> None:
    """Its successor would have been born expired (or, before, with no expiry at
    all); the rotation is refused and nothing changes."""
    store = SqliteAccountStore(config.parent / "accounts.sqlite", FAST)
    try:
        AccountAdmin(store, FAST, actor=ACTOR).expire_app_password(
            BOB, "phone", datetime.now(UTC) - timedelta(seconds=1))
    finally:
        store.close()
    before = app_passwords(config)
    r = run(config, "user", "rotate", BOB, "--app", "phone")
    assert r.exit_code == 1
    assert "app password 'phone' of bob@example.org expired at " in r.stderr
    assert "hint: 'smtpgate app-password add' issues a new one" in r.stderr
    assert app_passwords(config) == before


# --- two rotations in one second ------------------------------------------------------------


def test_two_rotations_in_one_second_get_names_of_their_own(store: SqliteAccountStore) -> None:
    """The names a rotation makes up are the time to the second: the second of two
    rotations in one second failed with 'already has an app password named
    rotated-...' (and 'pass another --name', though none was passed). Each now
    gets a name of its own; a --name the admin chose is still refused if taken."""
    instant = datetime(2026, 12, 2, 16, 22, 37, tzinfo=UTC)
    admin = AccountAdmin(store, FAST, actor=ACTOR, clock=lambda: instant)
    admin.add_account(BOB, "pw")
    first = admin.rotate_password(BOB, grace=timedelta(days=7))
    second = admin.rotate_password(BOB, grace=timedelta(days=7))
    third = admin.rotate_password(BOB, grace=timedelta(days=7))
    assert [first.app_password.name, second.app_password.name, third.app_password.name] == [
        "rotated-20261202-162237", "rotated-20261202-162237-2", "rotated-20261202-162237-3"]
    with pytest.raises(AccountExists):
        admin.rotate_password(BOB, new_name="rotated-20261202-162237", grace=timedelta(days=7))

    admin.add_app_password(BOB, "phone")
    for _ in range(3):
        assert admin.rotate_app_password(BOB, "phone", grace=timedelta(days=7)).app_password.name \
            == "phone"
    assert sorted(p.name for p in store.app_passwords(BOB) if p.name.startswith("phone")) == [
        "phone", "phone (rotated 2026-12-02 16:22:37 #2)", "phone (rotated 2026-12-02 16:22:37 #3)",
        "phone (rotated 2026-12-02 16:22:37)"]


def test_two_cli_rotations_in_a_row_both_succeed(config: Path) -> None:
    """The same through the command, at the real clock: back to back they are
    usually within one second."""
    names = set()
    for _ in range(3):
        r = run(config, "user", "rotate", BOB)
        assert r.exit_code == 0, r.output + r.stderr
        (line,) = [x for x in r.output.splitlines() if x.startswith("new app password")]
        names.add(line.split("'")[1])
    assert len(names) == 3


# --- a new account does not inherit the guard's lockout of its name -------------------


def guess_at(config: Path, name: str) -> None:
    """A wrong password for ``name`` from a new address, with a threshold of one: the
    guard locks the name for new addresses, as it locks a name that is no account."""
    from smtpgate.auth.guard import count_failure, thresholds
    from smtpgate.auth.guard_store import RecordedFailure, SqliteGuardStore
    from smtpgate.config import GuardConfig

    guard = SqliteGuardStore(config.parent / "guard.sqlite")
    try:
        count_failure(guard, RecordedFailure(time.time(), "192.0.2.1", "192.0.2.0/24", name,
                                             False, True),
                      thresholds(GuardConfig(lockout_threshold=1)))
    finally:
        guard.close()


def locked_names(config: Path) -> set[str]:
    r = run(config, "guard", "list", "--json")
    assert r.exit_code == 0, r.output
    return {json.loads(x)["key"] for x in r.output.splitlines() if x.strip()}


def test_a_new_account_starts_without_the_lockout_of_guesses_at_its_name(
    config: Path, tmp_path: Path
) -> None:
    """Guesses at a name that was no account yet locked the account made under it
    afterwards: its owner's first login (from an address new to it, as every one is)
    got 454 for lockout_duration, and a guesser who knew the naming scheme could lock
    new hires before they existed. `user add` and `user import` lift it, as `user
    remove` does for a name that goes."""
    new, imported = "newhire@example.org", "imported@example.org"
    guess_at(config, new)
    guess_at(config, imported)
    assert {new, imported} <= locked_names(config)
    assert run(config, "user", "add", new, "--password-stdin", input="pw\n").exit_code == 0
    assert new not in locked_names(config)
    assert ("guard lockout lifted", new) in [
        (json.loads(x)["action"], json.loads(x)["target"])
        for x in run(config, "admin-log", "--json").output.splitlines()]
    users = tmp_path / "users"
    users.write_text(f"{imported}:{{PLAIN}}pencil-Quartz-71\n")
    r = run(config, "user", "import", "dovecot-passwd", str(users), "--dry-run")
    assert r.exit_code == 0, r.output
    assert imported in locked_names(config)  # a dry run changes nothing
    r = run(config, "user", "import", "dovecot-passwd", str(users))
    assert r.exit_code == 0, r.output
    assert imported not in locked_names(config)


def test_a_new_account_is_made_when_the_guard_fails(store: SqliteAccountStore) -> None:
    """Lifting a stale lockout is best effort: a guard that fails does not undo the
    account (the lockout ends by itself; `user unlock` lifts it)."""
    admin = AccountAdmin(store, FAST, actor=ACTOR, open_guard=FailingGuard)
    admin.add_account(BOB, "pw")
    assert store.get_account(BOB) is not None


class RecordingGuard(FailingGuard):
    """A guard that had a lockout under every key it is asked to lift."""

    lifted: ClassVar[list[str]] = []

    def unlock_account(self, account: str) -> int:
        self.lifted.append(account)
        return 1


def test_a_new_web_admin_and_account_start_without_lockouts_under_their_keys(
    store: SqliteAccountStore,
) -> None:
    """Each is lifted under the key the guard counts its logins by: an account's one
    spelling, an admin's ``admin:NAME`` (never a mail account's name)."""
    RecordingGuard.lifted = []
    admin = AccountAdmin(store, FAST, actor=ACTOR, open_guard=RecordingGuard)
    admin.add_account("NewHire@Example.ORG", "pw")
    admin.add_web_admin("ops", "Correct-Horse-Battery-91")
    assert RecordingGuard.lifted == ["newhire@example.org", "admin:ops"]
    assert [(e.action, e.target) for e in store.admin_log()
            if e.action == "guard lockout lifted"] == [
        ("guard lockout lifted", "newhire@example.org"), ("guard lockout lifted", "admin:ops")]


@pytest.mark.parametrize("change", [["admin", "passwd", "root", "--password-stdin"],
                                    ["admin", "reset-totp", "root"],
                                    ["admin", "remove", "root"]])
def test_an_admins_new_credentials_or_removal_forget_its_known_addresses(
    config: Path, change: list[str]
) -> None:
    """As ``user passwd`` does for a mail account: an address that logged in with a
    leaked password or TOTP key stays no "known" address of the admin (the higher
    known_lockout_threshold, the trusted verification slot) after the reset, nor
    of a new admin added under a removed one's name. Until 2026-12 it stayed."""
    from smtpgate.auth.guard_store import SqliteGuardStore

    assert run(config, "admin", "add", "root", "--password-stdin",
               input="a pass phrase\n").exit_code == 0
    guard = SqliteGuardStore(config.parent / "guard.sqlite")
    try:
        guard.record_success("192.0.2.66", "admin:root", time.time(), reset_penalty=False)
        guard.record_success("192.0.2.66", BOB, time.time(), reset_penalty=False)
    finally:
        guard.close()
    r = run(config, *change, input="another pass phrase\n")
    assert r.exit_code == 0, r.output
    guard = SqliteGuardStore(config.parent / "guard.sqlite")
    try:
        assert guard.forget_addresses("admin:root") == 0  # gone already
        assert guard.forget_addresses(BOB) == 1  # a mail account's are not touched
    finally:
        guard.close()
    assert admin_actions(config)[-1] == "guard known addresses forgotten"
