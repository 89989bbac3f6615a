"""Look-alike names (``admin_store.LookAlikes``), on every backend smtpgate writes.

An account or alias whose name reads as another account's name or alias, by a
letter of another script drawn as an ASCII one (``аlice`` with the Cyrillic a),
is refused: its holder would send mail no reader can tell from alice's, and
``user list`` would show two alices (found by the h29i18n review: ``user add
аlice@example.org`` beside alice@example.org was ``added account``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.admin import AccountAdmin
from smtpgate.auth import postgres_schema, postgres_store
from smtpgate.auth.admin_store import AccountExists, AccountStore, AliasTaken
from smtpgate.auth.imports import ImportEntry
from smtpgate.auth.names import InvalidAccountName, look_alike, look_alike_key
from smtpgate.auth.store import SqliteAccountStore
from smtpgate.config import PostgresConfig
from tests.contract.directories import ACTOR, CFG

CYRILLIC_A = "\u0430"  # а, drawn as a
GREEK_O = "\u03bf"  # ο, drawn as o
CYRILLIC_O_DIAERESIS = "\u04e7"  # ӧ, drawn as ö


def _store(kind: str, tmp_path: Path) -> AccountStore:
    if kind == "sqlite":
        return SqliteAccountStore(tmp_path / "accounts.sqlite", CFG)
    from tests.postgres_server import shared_cluster

    cluster = shared_cluster()
    pg = PostgresConfig(dsn=cluster.create_database(),
                        password_file=cluster.write_password_file(tmp_path), timeout=2)
    postgres_schema.migrate(pg)
    return postgres_store.PostgresAccountStore(pg, CFG)


@pytest.fixture(params=["sqlite", "postgresql"])
def admin(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AccountAdmin]:
    a = AccountAdmin(_store(request.param, tmp_path), CFG, actor=ACTOR)
    a.add_account("alice@example.org", None)
    a.add_account("jörg@münchen.example", None)
    yield a
    a.close()


def test_the_key_reads_as_a_reader_reads() -> None:
    assert look_alike_key(f"{CYRILLIC_A}lice@example.org") == "alice@example.org"
    assert look_alike_key("ａlice@example.org") == "alice@example.org"  # full-width
    assert look_alike(f"j{CYRILLIC_O_DIAERESIS}rg@x.example", "jörg@x.example")
    assert not look_alike("jorg@x.example", "jörg@x.example")  # the diaeresis shows
    assert not look_alike("user1@x.example", "userl@x.example")  # ASCII: the font's to tell
    assert not look_alike("alice@example.org", "alice@example.org")


@pytest.mark.parametrize("name", [
    f"{CYRILLIC_A}lice@example.org",
    "alice@\u0435xample.org",  # Cyrillic ie in the domain
    f"j{CYRILLIC_O_DIAERESIS}rg@münchen.example",
    f"j{CYRILLIC_O_DIAERESIS}rg@xn--mnchen-3ya.example",
])
def test_an_account_that_reads_as_another_is_refused(admin: AccountAdmin, name: str) -> None:
    with pytest.raises(AccountExists, match="reads the same as .*U\\+04"):
        admin.add_account(name, None)
    with pytest.raises(AccountExists, match="reads the same as"):
        admin.check_new_account(name)  # what `user add` asks before the password
    assert len(admin.list_accounts()) == 2


def test_an_ascii_name_that_reads_as_an_existing_look_alike_is_refused(
    admin: AccountAdmin,
) -> None:
    admin.add_account(f"b{GREEK_O}b@example.org", None)
    with pytest.raises(AccountExists, match="U\\+03BF GREEK SMALL LETTER OMICRON"):
        admin.add_account("bob@example.org", None)
    admin.add_account("jorg@münchen.example", None)  # another name: the diaeresis shows


def test_an_alias_that_reads_as_another_account_s_name_or_alias_is_refused(
    admin: AccountAdmin,
) -> None:
    admin.add_account("mallory@example.org", None)
    with pytest.raises(AliasTaken, match="reads the same as alice@example.org"):
        admin.add_alias("mallory@example.org", f"{CYRILLIC_A}lice@example.org")
    admin.add_alias("alice@example.org", "sales@example.org")
    with pytest.raises(AliasTaken, match="reads the same as sales@example.org"):
        admin.add_alias("mallory@example.org", f"s{CYRILLIC_A}les@example.org")
    with pytest.raises(AccountExists, match="reads the same as sales@example.org"):
        admin.add_account(f"s{CYRILLIC_A}les@example.org", None)
    # Its own look-alike passes for nobody else.
    assert admin.add_alias("alice@example.org", f"{CYRILLIC_A}lice@example.org") is True
    # A name freed is free for a look-alike again.
    assert admin.remove_alias("alice@example.org", "sales@example.org") is True
    assert admin.add_alias("mallory@example.org", f"s{CYRILLIC_A}les@example.org") is True


def test_an_import_refuses_look_alikes_of_each_other_and_of_the_accounts(
    admin: AccountAdmin,
) -> None:
    entries = [ImportEntry(1, "carol@example.org", "plain", password="x"),
               ImportEntry(2, f"car{GREEK_O}l@example.org", "plain", password="x"),
               ImportEntry(3, f"{CYRILLIC_A}lice@example.org", "plain", password="x")]
    result = admin.import_accounts(entries, source="test")
    assert [e.name for e in result.created] == ["carol@example.org"]
    assert [(e.line, "reads the same as" in why) for e, why in result.skipped] == [
        (2, True), (3, True)]


def test_an_alias_or_import_with_a_character_drawn_as_nothing_is_refused(
    admin: AccountAdmin,
) -> None:
    """``alias add mallory alice<U+034F>@example.org`` (a combining grapheme
    joiner: no look-alike letter, and not a format character) was taken, and
    mallory sent as what reads alice@example.org (found by the h29i18n review)."""
    admin.add_account("mallory@example.org", None)
    for name in ("alice\u034f@example.org", "alice\u115f@example.org", "bob\u2800@example.org"):
        with pytest.raises(InvalidAccountName, match="draws as nothing"):
            admin.add_alias("mallory@example.org", name)
    entries = [ImportEntry(1, "dave\u17b4@example.org", "plain", password="x")]
    result = admin.import_accounts(entries, source="test")
    assert not result.created and "draws as nothing" in result.skipped[0][1]
