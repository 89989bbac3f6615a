"""A backend that is down under login load is logged once, then summarised at most
once a minute with a count, then once when it answers: the LDAP backend logged a
WARNING per failed operation, and the PostgreSQL account database and an OAuth
issuer's key set fetch logged nothing of their own at all."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from smtpgate.auth import postgres_store
from smtpgate.auth.directory import StoreUnavailable
from smtpgate.auth.oauth import RETRY_FAILED_FETCH, TokenVerifierUnavailable
from smtpgate.auth.outage_log import SUMMARY_EVERY, OutageLog
from smtpgate.config import AccountsConfig

from .test_oauth_verifier import Clock, FakeFetch, claims, issuer, mint, verifier
from .test_postgres_outage import PG, down  # noqa: F401 - a fixture

LOG = logging.getLogger("smtpgate.test.outage")


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_first_failure_at_once_then_a_summary_a_minute_then_once_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)
    ticks = Ticks()
    outage = OutageLog("LDAP directory ldap://x", LOG, clock=ticks)
    outage.answered()  # nothing to say while it answers
    for _ in range(480):  # a login storm against a directory that is down: 8 a second
        outage.failed("Connection refused")
        ticks.now += 0.125
    # Just under a minute: the first failure only.
    assert lines(caplog, LOG.name) == ["LDAP directory ldap://x unavailable: Connection refused"]
    outage.failed("Connection refused")
    got = lines(caplog, LOG.name)
    assert len(got) == 2
    assert got[1] == ("LDAP directory ldap://x still unavailable: 480 failed operation(s) "
                      f"in the last {SUMMARY_EVERY:.0f} s, the last: Connection refused")
    ticks.now += 10
    assert outage.down
    outage.answered()
    outage.answered()
    got = lines(caplog, LOG.name)
    assert got[2] == "LDAP directory ldap://x answering again after 70 s; 481 operation(s) failed meanwhile"
    assert len(got) == 3 and not outage.down
    outage.failed("timeout")  # a new outage is logged at once again
    assert lines(caplog, LOG.name)[3] == "LDAP directory ldap://x unavailable: timeout"


def test_the_effect_is_said_on_the_first_line_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)
    ticks = Ticks()
    outage = OutageLog("LDAP directory ldap://x", LOG, clock=ticks,
                       effect="logins get 454 4.7.0 until it answers")
    outage.failed("Connection refused")
    ticks.now += SUMMARY_EVERY
    outage.failed("Connection refused")
    outage.answered()
    got = lines(caplog, LOG.name)
    assert got[0] == ("LDAP directory ldap://x unavailable: Connection refused "
                      "(logins get 454 4.7.0 until it answers)")
    assert len(got) == 3 and not any("454" in line for line in got[1:])


def test_a_backwards_clock_step_neither_floods_nor_silences() -> None:
    """Monotonic time by default; with any clock, time going back makes no line."""
    ticks = Ticks()
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    log = logging.getLogger("smtpgate.test.outage.step")
    log.addHandler(Collect())
    log.propagate = False
    outage = OutageLog("x", log, clock=ticks)
    outage.failed("a")
    ticks.now -= 3600
    for _ in range(10):
        outage.failed("a")
    assert len(records) == 1


@pytest.fixture
def pg_store(down: None) -> Iterator[postgres_store.PostgresAccountStore]:  # noqa: F811
    s = postgres_store.PostgresAccountStore(PG, AccountsConfig(), outage_ok=True)
    yield s
    s.close()


def test_postgres_outage_is_logged_once_not_per_login(
    pg_store: postgres_store.PostgresAccountStore, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="smtpgate.auth.postgres")
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            pg_store.get_account("alice@example.org")
    got = [m for m in lines(caplog, "smtpgate.auth.postgres") if "unavailable" in m]
    assert len(got) == 1, got
    # Opened in an outage, a login tries the server itself and fails as soon as it
    # is refused, not after the pool's timeout: the line quotes that refusal.
    assert got[0].startswith("PostgreSQL database accounts on 127.0.0.1:26987 unavailable: "
                             "connection failed: "), got
    assert "Connection refused" in got[0], got


def test_oauth_key_set_outage_is_logged_once_and_its_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtpgate.auth.oauth")
    fetch, clock = FakeFetch(), Clock()
    fetch.error = OSError("connection refused")
    v = verifier(issuer(jwks_refresh_seconds=100), fetch=fetch, clock=clock)
    for _ in range(3):
        for _ in range(5):
            with pytest.raises(TokenVerifierUnavailable):
                v.verify(mint())
        clock.now += RETRY_FAILED_FETCH
    assert len(fetch.calls) == 3
    got = lines(caplog, "smtpgate.auth.oauth")
    assert len(got) == 1 and got[0].endswith("unavailable: connection refused"), got
    assert got[0].startswith("key set of ")
    fetch.error = None
    assert v.verify(mint(claims(exp=int(clock.now) + 300))).ok
    got = lines(caplog, "smtpgate.auth.oauth")
    assert len(got) == 2 and "answering again after" in got[1] and "3 operation(s)" in got[1]
