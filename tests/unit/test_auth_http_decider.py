"""What nginx is told for each way a login ends (server/auth_http_door.py), with a
fake login path: the wording of the guard's refusal, a backend fault, success."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest

from smtpgate.auth.guard import Refusal
from smtpgate.auth.login import LoginResult
from smtpgate.auth.principal import Principal
from smtpgate.config import AuthListenerConfig
from smtpgate.frontdoor.auth_http import AuthHttpRequest
from smtpgate.sasl.base import CredentialAnswer, CredentialQuery, Verdict
from smtpgate.sasl.exchange import AuthResult
from smtpgate.server.auth_http_door import AuthHttpDecider
from smtpgate.server.front_doors import FrontDoor
from smtpgate.smtp import replies as R


@dataclass
class FakeAttempt:
    answer: CredentialAnswer
    result: LoginResult
    queries: list[CredentialQuery] = field(default_factory=list)
    #: The name the guard counted the attempt under (LoginAttempt.account).
    account: str = ""
    #: The exchange's outcomes given to finish() (what the auth log records).
    outcomes: list[Any] = field(default_factory=list)
    #: AUTH refused before any exchange (LoginAttempts.refused: its auth-log record).
    refused: list[tuple[str, str, str]] = field(default_factory=list)

    async def resolve(self, query: CredentialQuery) -> CredentialAnswer:
        self.queries.append(query)
        return self.answer

    async def finish(self, outcome: object) -> LoginResult:
        self.outcomes.append(outcome)
        return self.result


def decider(attempt: FakeAttempt, contexts: list[Any]) -> AuthHttpDecider:
    def begin(ctx: Any, alive: Any) -> FakeAttempt:
        contexts.append(ctx)
        return attempt

    def refused(ctx: Any, mechanism: str, username: str, reason: str) -> None:
        contexts.append(ctx)
        attempt.refused.append((mechanism, username, reason))

    runtime = SimpleNamespace(login=SimpleNamespace(begin=begin, refused=refused), guard=None)
    listener = AuthListenerConfig(protocol="auth_http", address="127.0.0.1:9143",
                                  upstream="127.0.0.1:2587")
    cfg = SimpleNamespace(auth=SimpleNamespace(mechanisms=["PLAIN", "LOGIN"]),
                          accounts=SimpleNamespace(withheld_mechanisms=frozenset()))
    return AuthHttpDecider(cast(FrontDoor, SimpleNamespace(
        listener=listener, runtime=runtime, cfg=cfg, secret=b"")))


def request(**kw: Any) -> AuthHttpRequest:
    base: dict[str, Any] = {
        "method": "plain", "user": "alice@example.org", "password": "pw", "salt": "",
        "protocol": "smtp", "attempt": 1, "client_ip": "192.0.2.5", "client_host": "",
        "tls_version": "TLSv1.3",
    }
    return AuthHttpRequest(**{**base, **kw})


def run(d: AuthHttpDecider, req: AuthHttpRequest) -> Any:
    return asyncio.run(d.decide(req, lambda: True))


def test_success_sends_nginx_to_the_upstream_and_the_guard_sees_client_ip() -> None:
    contexts: list[Any] = []
    ok = FakeAttempt(Verdict(ok=True, identity="alice@example.org"),
                     LoginResult(AuthResult.SUCCESS, Principal("alice@example.org", "PLAIN")))
    answer = run(decider(ok, contexts), request(user="ALICE@Example.org"))
    assert (answer.ok, answer.server, answer.port) == (True, "127.0.0.1", 2587)
    assert answer.account == "alice@example.org"  # Auth-User: the account, not as typed
    assert contexts[0].client_ip == "192.0.2.5" and contexts[0].front_door == "auth_http"
    assert contexts[0].tls_version == "TLSv1.3"


@pytest.mark.parametrize("kind, reply", [
    ("address", R.AUTH_BLOCKED), ("account", R.AUTH_ACCOUNT_LOCKED), ("throttle", R.AUTH_THROTTLED),
])
def test_a_guard_refusal_is_its_454_without_auth_wait(kind: str, reply: R.Reply) -> None:
    refused = FakeAttempt(Verdict(ok=False, reason="blocked", temporary=True),
                          LoginResult(AuthResult.TEMPFAIL, refusal=Refusal(kind, "blocked")))
    answer = run(decider(refused, []), request())
    assert (answer.ok, answer.text, answer.error_code, answer.wait) == (
        False, reply.text, "454 4.7.0", None)


def test_a_backend_fault_is_454_never_535() -> None:
    fault = FakeAttempt(Verdict(ok=False, reason="db down", temporary=True),
                        LoginResult(AuthResult.TEMPFAIL))
    answer = run(decider(fault, []), request())
    assert (answer.text, answer.error_code, answer.wait) == (R.AUTH_TEMPFAIL.text, "454 4.7.0", None)


def test_a_wrong_password_is_535_with_auth_wait() -> None:
    bad = FakeAttempt(Verdict(ok=False, reason="wrong password"), LoginResult(AuthResult.FAILURE))
    answer = run(decider(bad, []), request())
    assert (answer.error_code, answer.wait) == ("535 5.7.8", 1)  # no guard: 1 s
    late = run(decider(bad, []), request(attempt=10))
    assert late.wait is None


def test_a_password_without_tls_to_nginx_is_not_checked() -> None:
    never = FakeAttempt(Verdict(ok=True, identity="alice@example.org"),
                        LoginResult(AuthResult.SUCCESS, Principal("alice@example.org", "PLAIN")))
    contexts: list[Any] = []
    answer = run(decider(never, contexts), request(tls_version=None))
    assert answer.error_code == "530 5.7.0" and never.queries == []
    # In the auth log as an AUTH in clear on smtpgate's own port (found by the
    # h27authlog review: nothing was written, so fail2ban never saw it).
    assert never.refused == [("PLAIN", "alice@example.org", "AUTH before STARTTLS")]
    assert contexts[0].client_ip == "192.0.2.5" and contexts[0].front_door == "auth_http"


def test_a_disabled_mechanism_is_504() -> None:
    never = FakeAttempt(Verdict(ok=True), LoginResult(AuthResult.SUCCESS))
    answer = run(decider(never, []), request(method="cram-md5", salt="<1.2@mx>"))
    assert answer.error_code == "504 5.5.4" and never.queries == []
    assert never.refused == [("CRAM-MD5", "alice@example.org", "mechanism not offered")]
    answer = run(decider(never, []), request(method="external"))
    assert answer.error_code == "504 5.5.4"
    assert never.refused[-1] == ("EXTERNAL", "alice@example.org", "mechanism not offered")


def test_a_refused_mechanism_leaves_the_client_its_session_to_choose_another() -> None:
    """nginx advertises what its smtp_auth lists (the docs' example had cram-md5):
    a client that picked a mechanism smtpgate does not serve got the 504 and, with
    no Auth-Wait, nginx closed the session, so Python's smtplib, which tries
    CRAM-MD5 first, never got to PLAIN (SMTPServerDisconnected). nginx ends the
    session after MAX_WAITED_ATTEMPTS, as for wrong passwords."""
    never = FakeAttempt(Verdict(ok=True), LoginResult(AuthResult.SUCCESS))
    answer = run(decider(never, []), request(method="cram-md5", salt="<1.2@mx>"))
    assert (answer.error_code, answer.wait) == ("504 5.5.4", 1)
    assert run(decider(never, []), request(method="cram-md5", salt="<1.2@mx>",
                                           attempt=10)).wait is None
    # A protocol smtpgate does not serve is nginx's set-up: nothing to retry.
    assert run(decider(never, []), request(protocol="imap")).wait is None


def test_a_refused_auth_protocol_is_logged_without_controls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """nginx's header values are Latin-1 (a UTF-8 U+202E arrives as 'â\\x80®', with
    a C1 control): what the door logs of them is escaped, never raw."""
    attempt = FakeAttempt(Verdict(ok=True), LoginResult(AuthResult.SUCCESS))
    with caplog.at_level("WARNING"):
        answer = run(decider(attempt, []), request(protocol="sm\u202etp\x85x"))
    assert not answer.ok
    (line,) = [r.getMessage() for r in caplog.records]
    assert "\u202e" not in line and "\x85" not in line
    assert "sm\\u202etp\\x85x" in line


@dataclass
class NamedGuard:
    """A guard that refuses (the account locked) under one name only."""

    locked: str
    asked: list[str] = field(default_factory=list)

    async def check(self, client_ip: str, username: str) -> Any:
        self.asked.append(username)
        refusal = Refusal("account", "locked") if username == self.locked else None
        return SimpleNamespace(refusal=refusal, delay=4.0)


@pytest.mark.parametrize("typed", ["ALICE@Example.ORG", "\uff41lice@example.org", "alice"])
def test_auth_wait_is_read_under_the_account_the_attempt_was_counted_under(typed: str) -> None:
    """The wrong password that locked alice, typed in full-width letters (SASLprep
    makes them alice) or as a directory's other name for her (AD's
    sAMAccountName): nginx must get no Auth-Wait (nothing to retry), as for
    alice@example.org. The guard was asked under the name as typed (its own
    look-up key folds only letter case and IDN), which is no account, and
    Auth-Wait let the client try again. Now it is asked under the name the login
    path counted the attempt under."""
    bad = FakeAttempt(Verdict(ok=False, reason="wrong password"),
                      LoginResult(AuthResult.FAILURE), account="alice@example.org")
    d = decider(bad, [])
    guard = NamedGuard("alice@example.org")
    d.door.runtime.guard = guard  # type: ignore[attr-defined]
    answer = run(d, request(user=typed))
    assert guard.asked == ["alice@example.org"]
    assert (answer.error_code, answer.wait) == ("535 5.7.8", None)


def test_auth_wait_is_not_the_penalty_which_smtpgate_waits_itself() -> None:
    """Auth-Wait was the penalty, which nginx waited and then smtpgate again before
    the retry's check: it is 1 s now, the least that lets nginx retry."""
    bad = FakeAttempt(Verdict(ok=False, reason="wrong password"),
                      LoginResult(AuthResult.FAILURE), account="alice@example.org")
    d = decider(bad, [])
    d.door.runtime.guard = NamedGuard("someone-else@example.org")  # type: ignore[attr-defined]
    assert run(d, request()).wait == 1


@pytest.mark.parametrize("user, password, reason", [
    ("alice\0bob@example.org", "pw", "NUL in Auth-User"),
    ("alice@example.org", "p\0w", "NUL in Auth-Pass"),
    ("alice@example.org", "", "empty Auth-User or Auth-Pass"),
])
def test_a_nul_or_empty_field_is_logged_as_what_it_is(
        user: str, password: str, reason: str) -> None:
    """A NUL in nginx's Auth-User or Auth-Pass was logged as "PLAIN: empty authcid
    or password" (the door sent the exchange an empty PLAIN message for it); the
    auth log now names the header and what is wrong with it, and nothing is
    looked up."""
    bad = FakeAttempt(Verdict(ok=False, reason="unused"), LoginResult(AuthResult.FAILURE))
    answer = run(decider(bad, []), request(user=user, password=password))
    assert answer.error_code == "535 5.7.8"
    (outcome,) = bad.outcomes
    assert (outcome.result, outcome.malformed) == (AuthResult.FAILURE, True)
    assert outcome.reason == f"PLAIN: {reason}"
    assert bad.queries == []


@pytest.mark.parametrize("method, unreadable", [
    ("plain", "Auth-Pass"), ("plain", "Auth-User"), ("cram-md5", "Auth-User")])
def test_a_login_that_is_no_utf8_is_a_counted_failure_with_auth_wait(
        method: str, unreadable: str) -> None:
    """A client's Latin-1 login through nginx: 535 5.7.8 and Auth-Wait as for a
    wrong password, the failure given to the login path (the auth log, the guard's
    count), nothing looked up; it was an HTTP 400, nginx's 451 to the client."""
    bad = FakeAttempt(Verdict(ok=False, reason="unused"), LoginResult(AuthResult.FAILURE))
    d = decider(bad, [])
    d.door.cfg.auth.mechanisms.append("CRAM-MD5")  # type: ignore[attr-defined]
    answer = run(d, request(method=method, salt="<1.2@mx.test>", unreadable=unreadable,
                            **{"user" if unreadable == "Auth-User" else "password": ""}))
    assert (answer.error_code, answer.wait) == ("535 5.7.8", 1)
    (outcome,) = bad.outcomes
    assert (outcome.result, outcome.malformed) == (AuthResult.FAILURE, True)
    assert outcome.reason == f"{'CRAM-MD5' if method == 'cram-md5' else 'PLAIN'}: {unreadable} is not UTF-8"
    assert bad.queries == []


@pytest.mark.parametrize("typed", ["admin:root", "Admin:Root"])
def test_a_login_as_a_web_admins_guard_key_does_not_read_the_admins_lockout(typed: str) -> None:
    """``admin:root`` is the web admin root's key in the guard, no mail account's:
    a login typed so is counted under its address only, and its Auth-Wait is read
    there too, never from the admin's lockout (which it could not have caused)."""
    bad = FakeAttempt(Verdict(ok=False, reason="wrong password"), LoginResult(AuthResult.FAILURE))
    d = decider(bad, [])
    guard = NamedGuard("admin:root")
    d.door.runtime.guard = guard  # type: ignore[attr-defined]
    answer = run(d, request(user=typed))
    assert guard.asked == [""]
    assert (answer.error_code, answer.wait) == ("535 5.7.8", 1)


def test_a_client_ip_that_is_the_balancers_is_warned_about_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """nginx behind a PROXY-protocol balancer without set_real_ip_from sends the
    balancer's address as Client-IP and the client's in Proxy-Protocol-Addr (seen
    with nginx 1.22): the guard counted every client as one and the auth log named
    the balancer, without a word. The address is not taken from the header (nginx
    takes it from anyone who reaches its port); the log says what to set."""
    from smtpgate.frontdoor.auth_http import parse_request

    head = (b"GET /auth HTTP/1.0\r\nAuth-Method: plain\r\nAuth-User: a\r\nAuth-Pass: b\r\n"
            b"Auth-Protocol: smtp\r\nClient-IP: 10.0.0.5\r\n"
            b"Proxy-Protocol-Addr: ::ffff:203.0.113.9\r\nProxy-Protocol-Port: 41111")
    parsed = parse_request(head)
    assert (parsed.client_ip, parsed.proxy_client_ip) == ("10.0.0.5", "203.0.113.9")
    bad = FakeAttempt(Verdict(ok=False, reason="wrong password"), LoginResult(AuthResult.FAILURE))
    contexts: list[Any] = []
    d = decider(bad, contexts)
    caplog.set_level("WARNING", logger="smtpgate.session")
    for _ in range(3):
        run(d, request(client_ip="10.0.0.5", proxy_client_ip="203.0.113.9"))
    warned = [r.getMessage() for r in caplog.records if "Proxy-Protocol-Addr" in r.getMessage()]
    assert len(warned) == 1 and "set_real_ip_from 10.0.0.5;" in warned[0], warned
    assert {c.client_ip for c in contexts} == {"10.0.0.5"}  # never the header's
    caplog.clear()
    for same in ("10.0.0.5", ""):  # set_real_ip_from in place, or no balancer
        run(decider(bad, []), request(client_ip="10.0.0.5", proxy_client_ip=same))
    assert not [r for r in caplog.records if "Proxy-Protocol-Addr" in r.getMessage()]
