"""Migration: `smtpgate user import dovecot-passwd|sasldb`, and the upgrade of an
imported hash at the account's first login (auth/imports.py, admin.import_accounts,
the auth service's legacy hook)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from smtpgate.admin import AccountAdmin
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.credentials import ARGON2ID, SCRAM_SHA_1, SCRAM_SHA_256
from smtpgate.auth.imports import ImportSourceError, read_dovecot_passwd, read_sasldb
from smtpgate.auth.legacy_hashes import LEGACY
from smtpgate.auth.service import AuthContext, AuthService
from smtpgate.auth.store import AuditActor, SqliteAccountStore
from smtpgate.config import AuthConfig
from smtpgate.sasl.base import LookupScram, ScramCredentials, Verdict, VerifyPassword
from tests.integration.conftest import require_tool
from tests.unit.cli_support import FAST, run, write_config
from tests.unit.test_legacy_hashes import doveadm_pw

ACTOR = AuditActor("ops", "pytest")
CTX = AuthContext("submission", "192.0.2.7", 50123, "TLSv1.3", "sess-1")


def passwd_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "users"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def dovecot_line(user: str, field: str) -> str:
    """A line as Postfix+Dovecot set-ups write them: uid/gid, home, extra fields
    (one with colons of its own)."""
    return (f"{user}:{field}:5000:5000::/var/vmail/{user.split('@')[-1]}/{user}::"
            f"userdb_quota_rule=*:storage=1G allow_nets=127.0.0.0/8")


# --- reading a passwd-file ------------------------------------------------------------------


def test_passwd_file_lines_comments_extra_fields_and_bad_lines() -> None:
    text = "\n".join([
        "# Dovecot users",
        "",
        dovecot_line("alice@example.org", "{PLAIN}pencil"),
        dovecot_line("bob@example.org", "{SSHA}not base64"),          # line 4: bad value
        dovecot_line("carol", "{CLEAR}secret"),                       # line 5: no domain given
        "dave@example.org",                                           # line 6: no password field
        dovecot_line("erin@example.org", "{SHA}I7dElEdfX4dJgLdnbVEeI9iG2mQ="),
        dovecot_line("alice@example.org", "{PLAIN}again"),            # line 8: duplicate
        dovecot_line("frank@example.org", ""),                        # line 9: empty password
        dovecot_line("not an address@", "{PLAIN}x"),                  # line 10: bad name
    ])
    entries, problems = read_dovecot_passwd(text)
    assert [(e.line, e.name, e.scheme) for e in entries] == [
        (3, "alice@example.org", "PLAIN"), (7, "erin@example.org", "SHA"),
    ]
    assert entries[0].password == "pencil" and entries[0].credentials is None
    assert [p.line for p in problems] == [4, 5, 6, 8, 9, 10]
    assert "base64" in problems[0].message
    assert "--domain" in problems[1].message
    assert "already on line 3" in problems[3].message


def test_domain_option_completes_bare_names() -> None:
    entries, problems = read_dovecot_passwd("carol:{PLAIN}x\n", domain="Example.ORG")
    assert not problems
    assert entries[0].name == "carol@example.org"


# --- the CLI --------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def accounts(config: Path) -> dict[str, set[str]]:
    with sqlite3.connect(config.parent / "accounts.sqlite") as c:
        rows = c.execute("SELECT a.name, c.scheme FROM accounts a "
                         "LEFT JOIN credentials c ON c.account = a.name").fetchall()
    out: dict[str, set[str]] = {}
    for name, scheme in rows:
        out.setdefault(name, set()).add(scheme)
    return out


def stored(config: Path, name: str, scheme: str) -> str | None:
    with sqlite3.connect(config.parent / "accounts.sqlite") as c:
        row = c.execute("SELECT data FROM credentials WHERE account = ? AND scheme = ?",
                        (name, scheme)).fetchone()
    return None if row is None else str(row[0])


def test_import_reports_bad_lines_by_number_and_imports_the_good_ones(
    config: Path, tmp_path: Path
) -> None:
    f = passwd_file(tmp_path, [
        dovecot_line("alice@example.org", doveadm_pw("SHA512-CRYPT", "pencil")),
        dovecot_line("bob@example.org", "{SHA512-CRYPT}$6$broken"),
        dovecot_line("carol@example.org", "{PLAIN}pässwörd"),
    ])
    r = run(config, "import", "dovecot-passwd", str(f))
    assert r.exit_code == 1, r.output
    assert f"{f}:2: bob@example.org: " in r.output and "not imported" in r.output
    assert "created alice@example.org (SHA512-CRYPT, upgraded at first login)" in r.output
    assert "created carol@example.org (PLAIN, hashed now)" in r.output
    got = accounts(config)
    assert set(got) == {"alice@example.org", "carol@example.org"}
    assert got["alice@example.org"] == {LEGACY}
    # A plaintext password is hashed at import and never stored.
    assert got["carol@example.org"] == {ARGON2ID, SCRAM_SHA_1, SCRAM_SHA_256}
    dump = (config.parent / "accounts.sqlite").read_bytes()
    assert "pässwörd".encode() not in dump
    # `user list` says who still holds a legacy hash.
    listing = [json.loads(x) for x in run(config, "list", "--json").output.splitlines()]
    assert {a["name"]: a["legacy_hash"] for a in listing} == {
        "alice@example.org": True, "carol@example.org": False,
    }
    assert "yes (until first login)" in run(config, "list").output


def test_dry_run_changes_nothing(config: Path, tmp_path: Path) -> None:
    f = passwd_file(tmp_path, [dovecot_line("alice@example.org", "{PLAIN}pencil")])
    r = run(config, "import", "dovecot-passwd", str(f), "--dry-run")
    assert r.exit_code == 0, r.output
    assert "would create alice@example.org" in r.output
    assert "dry run: nothing changed" in r.output
    assert accounts(config) == {}


def test_dry_run_says_what_the_import_will_do(config: Path, tmp_path: Path) -> None:
    """A name that is another account's alias is skipped by the import: the dry
    run says so, not 'would create'."""
    assert run(config, "add", "alice@example.org", "--password-stdin", input="mine\n").exit_code == 0
    assert run(config, "alias", "add", "alice@example.org", "sales@example.org").exit_code == 0
    f = passwd_file(tmp_path, [dovecot_line("sales@example.org", "{PLAIN}pencil"),
                               dovecot_line("carol@example.org", "{PLAIN}crayon")])
    dry = run(config, "import", "dovecot-passwd", str(f), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would create sales@example.org" not in dry.output
    assert f"{f}:1: sales@example.org: " in dry.output and "skipped" in dry.output
    assert "would create carol@example.org" in dry.output
    assert "1 would create, 0 would update, 1 skipped, 0 bad" in dry.output
    assert set(accounts(config)) == {"alice@example.org"}
    real = run(config, "import", "dovecot-passwd", str(f))
    assert real.exit_code == 0, real.output
    assert "1 created, 0 updated, 1 skipped, 0 bad" in real.output
    # The dry run's lines are the import's, word for word but the verbs.
    assert dry.output.replace("would create", "created").replace(
        "would update", "updated").replace(" (dry run: nothing changed)", "") == real.output


def test_existing_account_is_skipped_unless_update(config: Path, tmp_path: Path) -> None:
    assert run(config, "add", "alice@example.org", "--password-stdin", input="mine\n").exit_code == 0
    before = stored(config, "alice@example.org", ARGON2ID)
    f = passwd_file(tmp_path, [dovecot_line("alice@example.org", "{SHA}I7dElEdfX4dJgLdnbVEeI9iG2mQ=")])
    r = run(config, "import", "dovecot-passwd", str(f))
    assert r.exit_code == 0, r.output
    assert "account exists" in r.output and "skipped" in r.output
    assert stored(config, "alice@example.org", ARGON2ID) == before
    r = run(config, "import", "dovecot-passwd", str(f), "--update")
    assert r.exit_code == 0, r.output
    assert "updated alice@example.org" in r.output
    assert accounts(config)["alice@example.org"] == {LEGACY}


def test_import_is_one_transaction(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure on the third account undoes the first two: never half-imported."""
    from smtpgate.auth import store as store_mod

    real = store_mod._SqliteWriter.create_account
    calls = []

    def failing(self: Any, name: str, *a: Any, **kw: Any) -> None:
        calls.append(name)
        if len(calls) == 3:
            raise sqlite3.OperationalError("disk I/O error")
        real(self, name, *a, **kw)

    monkeypatch.setattr(store_mod._SqliteWriter, "create_account", failing)
    f = passwd_file(tmp_path, [dovecot_line(f"u{i}@example.org", "{PLAIN}pw") for i in range(4)])
    r = run(config, "import", "dovecot-passwd", str(f))
    assert r.exit_code == 1
    assert len(calls) == 3
    assert accounts(config) == {}


def test_unknown_scheme_names_the_supported_ones(config: Path, tmp_path: Path) -> None:
    f = passwd_file(tmp_path, [dovecot_line("a@example.org", "{DES-CRYPT}abcdefghijklm")])
    r = run(config, "import", "dovecot-passwd", str(f))
    assert r.exit_code == 1
    assert ":1: a@example.org: scheme {DES-CRYPT} is not supported (supported:" in r.output


# --- sasldb2 made by the real saslpasswd2 ---------------------------------------------------


def make_sasldb(tmp_path: Path, users: dict[str, str], realm: str = "example.org") -> Path:
    saslpasswd2 = require_tool("saslpasswd2")
    path = tmp_path / "sasldb2"
    for user, password in users.items():
        subprocess.run([saslpasswd2, "-p", "-f", str(path), "-c", "-u", realm, user],
                       input=password, text=True, check=True)
    return path


def test_sasldb_from_saslpasswd2(config: Path, tmp_path: Path) -> None:
    require_tool("db_dump")
    db = make_sasldb(tmp_path, {"alice": "pässwörd", "bob": "x:y\\z"})
    entries, problems = read_sasldb(db)
    assert not problems
    assert {(e.name, e.password) for e in entries} == {
        ("alice@example.org", "pässwörd"), ("bob@example.org", "x:y\\z"),
    }
    r = run(config, "import", "sasldb", str(db))
    assert r.exit_code == 0, r.output
    assert accounts(config)["alice@example.org"] == {ARGON2ID, SCRAM_SHA_1, SCRAM_SHA_256}
    assert b"p\xc3\xa4ssw\xc3\xb6rd" not in (config.parent / "accounts.sqlite").read_bytes()


def test_not_a_sasldb_is_one_error(config: Path, tmp_path: Path) -> None:
    require_tool("db_dump")
    junk = tmp_path / "junk"
    junk.write_text("hello")
    with pytest.raises(ImportSourceError, match="not a Berkeley DB file"):
        read_sasldb(junk)
    r = run(config, "import", "sasldb", str(junk))
    assert r.exit_code == 1
    assert "Traceback" not in r.output and "error:" in r.output


# --- first login: verified with the old hash, then upgraded ---------------------------------


@pytest.fixture
async def imported(tmp_path: Path) -> AsyncIterator[tuple[SqliteAccountStore, AuthService]]:
    store = SqliteAccountStore(tmp_path / "a.sqlite", FAST)
    entries, problems = read_dovecot_passwd(
        dovecot_line("alice@example.org", doveadm_pw("SSHA512", "pencil")) + "\n"
        + dovecot_line("bob@example.org", doveadm_pw("SCRAM-SHA-256", "pencil")) + "\n"
        + dovecot_line("carol@example.org", "{SSHA}@@@@") + "\n"
    )
    assert [p.line for p in problems] == [3]
    AccountAdmin(SqliteAccountStore(tmp_path / "a.sqlite", FAST), FAST, actor=ACTOR).import_accounts(
        entries, source="test")
    svc = AuthService(store, FAST, AuthConfig(), AuthLog(tmp_path / "auth.log"))
    yield store, svc
    await svc.close()


async def plain(svc: AuthService, user: str, pw: str) -> Verdict:
    v = await svc.resolve(VerifyPassword(user, pw, mechanism="PLAIN"), CTX)
    assert isinstance(v, Verdict)
    return v


async def test_first_login_upgrades_the_legacy_hash(
    imported: tuple[SqliteAccountStore, AuthService]
) -> None:
    store, svc = imported
    assert not (await plain(svc, "alice@example.org", "pencil!")).ok  # negative: wrong password
    assert store.get_account("alice@example.org").schemes == {LEGACY}  # type: ignore[union-attr]
    assert (await plain(svc, "alice@example.org", "pencil")).ok
    await svc.flush()
    account = store.get_account("alice@example.org")
    assert account is not None
    assert account.schemes == {ARGON2ID, SCRAM_SHA_1, SCRAM_SHA_256}
    # From now on the Argon2id hash decides: the old hash is gone.
    assert store.verify_password("alice@example.org", "pencil")
    found = await svc.resolve(LookupScram("alice@example.org", "sha256", "SCRAM-SHA-256"), CTX)
    assert isinstance(found, ScramCredentials)


async def test_imported_scram_keys_work_before_any_login(
    imported: tuple[SqliteAccountStore, AuthService]
) -> None:
    store, svc = imported
    found = await svc.resolve(LookupScram("bob@example.org", "sha256", "SCRAM-SHA-256"), CTX)
    assert isinstance(found, ScramCredentials)
    assert not (await plain(svc, "bob@example.org", "wrong")).ok
    assert (await plain(svc, "bob@example.org", "pencil")).ok
    await svc.flush()
    assert LEGACY not in store.get_account("bob@example.org").schemes  # type: ignore[union-attr]


async def test_corrupt_stored_legacy_hash_is_temporary(
    imported: tuple[SqliteAccountStore, AuthService], tmp_path: Path
) -> None:
    _, svc = imported
    with sqlite3.connect(tmp_path / "a.sqlite") as c:
        c.execute("UPDATE credentials SET data = '{SSHA}@@@' WHERE account = 'alice@example.org'")
    v = await plain(svc, "alice@example.org", "pencil")
    assert (v.ok, v.temporary) == (False, True)


def test_a_name_that_differs_from_an_account_only_in_case_is_skipped(
    config: Path, tmp_path: Path
) -> None:
    assert run(config, "add", "alice@example.org", "--password-stdin", input="mine\n").exit_code == 0
    f = passwd_file(tmp_path, [dovecot_line("Alice@example.org", "{PLAIN}pencil"),
                               dovecot_line("bob@example.org", "{PLAIN}crayon")])
    r = run(config, "import", "dovecot-passwd", str(f))
    assert r.exit_code == 0, r.output
    # Login names have no letter case: Alice@example.org is alice's account.
    assert "alice@example.org: account exists" in r.output
    assert "created bob@example.org" in r.output
    assert set(accounts(config)) == {"alice@example.org", "bob@example.org"}


async def test_a_legacy_hash_over_a_space_logs_in_typed_with_a_non_breaking_space(
    tmp_path: Path
) -> None:
    """docs/mechanisms.md: a password is one password whether its space is typed as
    U+0020 or U+00A0 (SASLprep maps one to the other). A hash doveadm made over
    "pass word" was checked only against the password as sent, so the same
    password typed with U+00A0 failed until some other login upgraded it. A hash
    made over U+00A0 itself logs in with that; after the first login re-hashed it,
    with either."""
    store = SqliteAccountStore(tmp_path / "a.sqlite", FAST)
    entries, problems = read_dovecot_passwd(
        dovecot_line("alice@example.org", doveadm_pw("SHA512-CRYPT", "pass word")) + "\n"
        + dovecot_line("bob@example.org", doveadm_pw("SSHA256", "pass\u00a0word")) + "\n"
    )
    assert not problems
    AccountAdmin(SqliteAccountStore(tmp_path / "a.sqlite", FAST), FAST, actor=ACTOR).import_accounts(
        entries, source="test")
    svc = AuthService(store, FAST, AuthConfig(), AuthLog(tmp_path / "auth.log"))
    try:
        assert not (await plain(svc, "alice@example.org", "pass\u00a0words")).ok
        assert (await plain(svc, "alice@example.org", "pass\u00a0word")).ok
        assert not (await plain(svc, "bob@example.org", "pass word")).ok  # not knowable
        assert (await plain(svc, "bob@example.org", "pass\u00a0word")).ok
        await svc.flush()
        for name in ("alice@example.org", "bob@example.org"):
            assert LEGACY not in store.get_account(name).schemes  # type: ignore[union-attr]
            assert (await plain(svc, name, "pass word")).ok
            assert (await plain(svc, name, "pass\u00a0word")).ok
    finally:
        await svc.close()


def test_a_name_scram_clients_send_as_another_is_skipped(config: Path, tmp_path: Path) -> None:
    """SASLprep turns the U+FB01 ligature into "fi" before a SCRAM client sends the
    name (auth/scram_names.py): imported, the account could never log in with SCRAM."""
    f = passwd_file(tmp_path, [dovecot_line("\ufb01sh@example.org", "{PLAIN}pencil"),
                               dovecot_line("bob@example.org", "{PLAIN}crayon")])
    r = run(config, "import", "dovecot-passwd", str(f))
    assert r.exit_code == 0, r.output
    assert "SCRAM clients send this name as fish@example.org" in r.output
    assert set(accounts(config)) == {"bob@example.org"}


def test_a_name_no_mail_from_can_give_is_skipped(config: Path, tmp_path: Path) -> None:
    """Imported, ``a)b@example.org`` would log in but never send as itself."""
    f = passwd_file(tmp_path, [dovecot_line("a)b@example.org", "{PLAIN}pencil"),
                               dovecot_line("bob@example.org", "{PLAIN}crayon")])
    r = run(config, "import", "dovecot-passwd", str(f))
    assert r.exit_code == 0, r.output
    assert "a)b@example.org" in r.output and "allows only in a quoted local part" in r.output
    assert set(accounts(config)) == {"bob@example.org"}
