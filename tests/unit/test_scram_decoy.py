"""SCRAM's server-first message does not tell a real account from an unknown name.

The attack (issue 16): probe ``alice@example.org`` and ``alice@EXAMPLE.ORG``. A real
account is looked up with the domain lower-cased, so both spellings show its one
salt; an unknown name's decoy salt used to be keyed on the name as typed, so the two
spellings showed two salts, and "same salt" meant "the account exists".

The invariant, over generated names: for a real account and for an unknown name of
the same shape, every spelling of it (domain case, local-part case, the name as
typed) gives server-first messages that agree in everything but the salt's random
bytes: the same structure, nonce length, salt length and iteration count, and the
same pattern of which spellings share a salt. It runs through the real auth
service over a SQLite directory, so the look-up's normalisation and the decoy's are
the ones the server uses.
"""

from __future__ import annotations

import asyncio
import base64
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from smtpgate.admin import AccountAdmin
from smtpgate.auth.admin_store import AccountExists
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.credentials import SCRAM_SHA_1, SCRAM_SHA_256
from smtpgate.auth.names import InvalidAccountName, canonical_name
from smtpgate.auth.service import AuthContext, AuthService
from smtpgate.auth.store import AuditActor, SqliteAccountStore
from smtpgate.config import AccountsConfig, AuthConfig
from smtpgate.sasl.base import Challenge, NeedCredentials
from smtpgate.sasl.saslprep import SaslprepError, saslprep
from smtpgate.sasl.scram import SALT_OCTETS, ScramServer, ScramSha1Server, ScramSha256Server

CFG = AccountsConfig(
    argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1, scram_iterations=4096
)
CTX = AuthContext("submission", "192.0.2.7", 50123, "TLSv1.3", "sess-1")
SECRET = b"d" * 32
SERVERS: tuple[type[ScramServer], ...] = (ScramSha1Server, ScramSha256Server)
# r=<client nonce + server nonce>,s=<base64 salt>,i=<count>
SHAPE = re.compile(r"r=([!-+\--~]+),s=([A-Za-z0-9+/]+=*),i=([0-9]+)")


class Directory:
    """A real auth service over a SQLite file, driven from one event loop."""

    def __init__(self, root: Path) -> None:
        self.db = root / "accounts.sqlite"
        self.store = SqliteAccountStore(self.db, CFG)
        self.admin = AccountAdmin(SqliteAccountStore(self.db, CFG), CFG,
                                  actor=AuditActor("ops", "pytest"))
        self.loop = asyncio.new_event_loop()
        self.svc = AuthService(self.store, CFG, AuthConfig(), AuthLog(root / "auth.log"))

    def add(self, name: str) -> None:
        """Make the account unless it is one already (a name drawn twice)."""
        try:
            self.admin.add_account(name, "pencil")
        except AccountExists:
            pass

    def close(self) -> None:
        self.loop.run_until_complete(self.svc.close())
        self.loop.close()
        self.admin.close()

    def server_first(self, cls: type[ScramServer], name: str) -> str:
        """The server-first message ``name`` gets (client nonce ``probe``)."""
        mech = cls(decoy_secret=SECRET, decoy_iterations=CFG.scram_iterations)
        first = f"n,,n={name.replace('=', '=3D').replace(',', '=2C')},r=probe".encode()
        step = mech.start(first)
        assert isinstance(step, NeedCredentials), step
        answer = self.loop.run_until_complete(self.svc.resolve(step.query, CTX))
        challenge = mech.answer(answer)
        assert isinstance(challenge, Challenge), challenge
        return challenge.data.decode("ascii")


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Directory]:
    d = Directory(tmp_path_factory.mktemp("scram-decoy"))
    yield d
    d.close()


def shape(message: str) -> tuple[int, int, int]:
    """What may not differ: (nonce length, salt length, iteration count)."""
    m = SHAPE.fullmatch(message)
    assert m is not None, message
    return len(m[1]), len(base64.b64decode(m[2])), int(m[3])


def salt(message: str) -> str:
    m = SHAPE.fullmatch(message)
    assert m is not None, message
    return m[2]


def spellings(local: str, domain: str, flips: list[bool]) -> list[str]:
    """The name as typed, its domain in other cases, its local part in other cases."""
    mixed = "".join(c.upper() if f else c.lower() for c, f in zip(domain, flips * 64, strict=False))
    return [
        f"{local}@{domain}",
        f"{local}@{domain.upper()}",
        f"{local}@{mixed}",
        f"{local.swapcase()}@{domain}",
        f"{local.upper()}@{domain.lower()}",
    ]


def usable(name: str) -> bool:
    """A name SCRAM passes to the directory unchanged and the directory accepts."""
    try:
        canonical_name(name)
        return saslprep(name, allow_unassigned=True) == name
    except (InvalidAccountName, SaslprepError):
        return False


LETTERS = st.characters(categories=("Ll", "Lu", "Nd"), max_codepoint=0x24F)
LOCAL = st.text(LETTERS, min_size=1, max_size=12)
LABEL = st.text(LETTERS, min_size=1, max_size=10)
DOMAIN = st.lists(LABEL, min_size=2, max_size=3).map(".".join)


def pattern(directory: Directory, cls: type[ScramServer], names: list[str]) -> tuple[object, ...]:
    """Everything a prober can compare between the spellings of one name."""
    msgs = [directory.server_first(cls, n) for n in names]
    salts = [salt(m) for m in msgs]
    return (
        tuple(shape(m) for m in msgs),
        tuple(salts.index(s) for s in salts),  # which spellings share a salt
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(local=LOCAL, domain=DOMAIN, flips=st.lists(st.booleans(), min_size=1))
# U+01F0 upper-cases to "J" + a combining caron, which lower-cases back decomposed:
# a spelling of the real name that was another account's (its salt told it exists).
@example(local="\u01f0", domain="0.0", flips=[False])
def test_real_and_unknown_names_look_alike_in_server_first(
    directory: Directory, local: str, domain: str, flips: list[bool]
) -> None:
    # Twins that differ in one letter, so every spelling of one has its twin of the
    # same shape; only names starting with "r" are ever made accounts.
    real, unknown = f"r{local}", f"u{local}"
    assume(usable(f"{real}@{domain}") and usable(f"{unknown}@{domain}"))
    directory.add(canonical_name(f"{real}@{domain}"))
    for cls in SERVERS:
        assert pattern(directory, cls, spellings(real, domain, flips)) == pattern(
            directory, cls, spellings(unknown, domain, flips)
        )


def test_the_reported_probe(directory: Directory) -> None:
    """alice@example.org vs alice@EXAMPLE.ORG: one salt whether or not she exists."""
    for local in ("alice", "nobody"):
        if local == "alice":
            directory.add("alice@example.org")
        for cls in SERVERS:
            a = directory.server_first(cls, f"{local}@example.org")
            b = directory.server_first(cls, f"{local}@EXAMPLE.ORG")
            assert salt(a) == salt(b), (local, cls.name)
            assert shape(a) == shape(b) == (len("probe") + 32, SALT_OCTETS, 4096)


def test_an_account_without_scram_keys_looks_unknown(directory: Directory) -> None:
    """An account made before SCRAM keys (or an LDAP one before its first PLAIN
    login) gets a decoy keyed like an unknown name's, for every spelling."""
    directory.add("keyless@example.org")
    with sqlite3.connect(directory.db) as c:
        c.execute(
            "DELETE FROM credentials WHERE account = ? AND scheme IN (?, ?)",
            ("keyless@example.org", SCRAM_SHA_1, SCRAM_SHA_256),
        )
    for cls in SERVERS:
        keyless = pattern(directory, cls, spellings("keyless", "example.org", [True]))
        unknown = pattern(directory, cls, spellings("ueyless", "example.org", [True]))
        assert keyless == unknown
