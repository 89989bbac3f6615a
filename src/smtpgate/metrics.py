"""The server's Prometheus metrics: every count is made through the functions here.

Theory of operation
-------------------
The asyncio layer and the services (``server/``, ``auth/login.py``, the guard's and
rate counters' store calls, the queue) call one function per event
(``auth_attempt``, ``message_accepted``...); the sans-IO cores never do. Labels
are bounded sets: a listener's or front door's name from the config, a mechanism
from ``mechanism_facts`` (anything else is ``other``), a result or kind from a
fixed list. Never an account, an address or a client's text.

The metric objects are ``prometheus_client``'s. With the default value class they
live in this process's memory (the CLI, the unit tests: nothing reads them).
``smtpgate serve`` calls ``use_multiprocess(directory)`` before it forks, with
``[metrics] listen`` or without (so that a reload can open the endpoint with the
counts since start-up): each process then keeps its values in a file of its own
there (prometheus_client's multiprocess mode), and whichever process answers a
scrape adds them up (``server/metrics_http.py``).
docs/operations.md, "Metrics", gives the figures behind that choice.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, values

from smtpgate.mechanism_facts import KNOWN as _KNOWN_MECHANISMS

#: Results of an AUTH attempt (``smtpgate_auth_attempts_total{result}``).
#: ``refused_protocol``: an AUTH command refused before any exchange (no STARTTLS
#: yet, a mechanism not offered, a login already made), the auth log's ``refused``.
AUTH_RESULTS = ("success", "failure", "temporary", "refused_guard", "refused_policy",
                "cancelled", "refused_protocol")
#: Why a connection was refused (``server/limits.py``): the limit it hit.
CONNECTION_REFUSALS = ("total", "per_ip", "rate")
#: The web admin's logins (``web/login_log.py``) are counted with the SMTP ones,
#: under a mechanism and a front door of their own, as the auth log records them.
ADMIN_MECHANISM = "PASSWORD+TOTP"
ADMIN_FRONT_DOOR = "web_admin"
#: The results an admin login can have (it has no policy refusal, no cancel).
ADMIN_RESULTS = ("success", "failure", "refused_guard")
#: How one recipient's delivery attempt ended (``queue/state.py`` outcome kinds).
DELIVERY_OUTCOMES = ("delivered", "deferred", "bounced", "expired")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _Metrics:
    """Every metric of the server (not registered: the scrape reads them)."""

    def __init__(self) -> None:
        self.connections = Counter(
            "smtpgate_connections", "SMTP connections accepted, by listener.",
            ["listener"], registry=None)
        self.connections_refused = Counter(
            "smtpgate_connections_refused",
            "SMTP connections refused by a connection limit (reason: "
            + ", ".join(CONNECTION_REFUSALS) + ").",
            ["listener", "reason"], registry=None)
        self.sessions_active = Gauge(
            "smtpgate_sessions_active", "SMTP sessions open now, by listener.",
            ["listener"], registry=None, multiprocess_mode="livesum")
        self.sessions = Counter(
            "smtpgate_sessions",
            "SMTP sessions ended, by listener and the TLS version they used ('none').",
            ["listener", "tls_version"], registry=None)
        self.auth_attempts = Counter(
            "smtpgate_auth_attempts", "AUTH attempts, by mechanism, front door and result.",
            ["mechanism", "front_door", "result"], registry=None)
        self.login_seconds = Histogram(
            "smtpgate_login_duration_seconds",
            "From an attempt's first credential look-up to its verdict (guard check, "
            "penalty, directory, hashing), by result.",
            ["result"], registry=None, buckets=_LATENCY_BUCKETS)
        self.guard_blocks = Counter(
            "smtpgate_guard_blocks_started",
            "Blocks the guard started, by kind (address, subnet, account, account-new, "
            "throttle).", ["kind"], registry=None)
        self.rate_limited = Counter(
            "smtpgate_rate_limit_refusals",
            "MAIL or RCPT refused by an hourly rate limit (limit: messages, recipients).",
            ["limit"], registry=None)
        self.sender_policy = Counter(
            "smtpgate_sender_policy_violations",
            "Senders the account does not own, by where they were found (mail_from, from, "
            "sender, resent_from, resent_sender, no_from) and what was done (refused; logged: policy in 'log' mode).",
            ["field", "action"], registry=None)
        self.messages = Counter(
            "smtpgate_messages_accepted", "Messages accepted (250 after DATA), by listener.",
            ["listener"], registry=None)
        self.message_bytes = Counter(
            "smtpgate_messages_accepted_bytes",
            "Bytes of the messages accepted, as spooled, by listener.",
            ["listener"], registry=None)
        self.spool_failures = Counter(
            "smtpgate_spool_failures", "Messages the spool failed to commit (451 sent).",
            registry=None)
        self.spool_commit = Histogram(
            "smtpgate_spool_commit_duration_seconds",
            "From the end of DATA to the message durable in the spool (fsynced).",
            registry=None, buckets=_FAST_BUCKETS)
        self.deliveries = Counter(
            "smtpgate_deliveries", "Delivery attempts per recipient, by outcome.",
            ["outcome"], registry=None)
        self.backend_seconds = Histogram(
            "smtpgate_backend_duration_seconds",
            "Calls to a store (directory, guard_state, rate_counters), by operation.",
            ["store", "operation"], registry=None, buckets=_FAST_BUCKETS)
        self.backend_errors = Counter(
            "smtpgate_backend_errors",
            "Store calls that failed or timed out, by store and operation.",
            ["store", "operation"], registry=None)


#: Where the sending policy finds a sender the account does not own.
SENDER_FIELDS = ("mail_from", "from", "sender", "resent_from", "resent_sender", "no_from")

_m = _Metrics()


def use_multiprocess(directory: Path) -> None:
    """Keep every value of this process, and of the processes it forks, in files in
    ``directory`` (prometheus_client's multiprocess mode). Call once, before any
    fork and before counting; ``directory`` exists and holds no stale files."""
    global _m
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue(  # type: ignore[no-untyped-call]
        process_identifier=_current_pid)
    _m = _Metrics()


#: What names this process's files (``counter_ID.db``...): its process id, kept up
#: to date across fork() (``os.register_at_fork``), or the supervisor's slot it
#: fills (``count_as``). prometheus_client asks for it on every count to notice a
#: fork; ``os.getpid`` is a system call each time (28 a session in a worker,
#: counted with ``strace -c``).
_identity: int | str = os.getpid()

#: A slot's name: letters then digits, never ``_`` (which separates the parts of
#: a file name) and never all digits (a process id's files).
_SLOT = re.compile(r"[a-z]+[0-9]*")


def _current_pid() -> int | str:
    return _identity


def _forked() -> None:
    global _identity
    _identity = os.getpid()


os.register_at_fork(after_in_child=_forked)


def count_as(slot: str) -> None:
    """In a supervised child, before it counts anything: keep its values in the
    files of ``slot`` (``w1``, ``delivery``), not of its process id.

    A worker that dies is restarted in its slot. Under its process id each
    start left a set of files behind (128 KiB), which had to stay for the
    counters' totals not to go down (Prometheus reads a fall as a reset); a
    worker crash-looping piled them up until the next server start. Under the
    slot's name the replacement opens the dead one's files and counts on from its
    values (prometheus_client reads a file's values when it opens it), so the
    totals never go down and the directory holds one set of files per slot. The
    live gauges of the dead one are dropped before (``metrics_http.mark_dead``):
    its open sessions are not the replacement's.
    """
    global _identity
    if not _SLOT.fullmatch(slot):
        raise ValueError(f"{slot!r} cannot name a slot's metric files")
    _identity = slot


#: The stores ``backend_call`` names, and their operations.
_BACKENDS = (("directory", "read"), ("guard_state", "read"), ("guard_state", "write"),
             ("rate_counters", "read"), ("rate_counters", "write"))


def prime(
    listeners: Iterable[str],
    *,
    sessions: Iterable[tuple[str, str]] = (),
    logins: Iterable[tuple[str, str]] = (),
) -> None:
    """Make the bounded label sets appear at 0 from the start, so that a rate or a
    dashboard panel has a series before the first event (Prometheus' advice): an
    alert on ``rate(smtpgate_auth_attempts_total{result="failure"}[5m])`` has
    nothing to compute until a series exists, and the first failure after a start
    would be counted from 1, not from 0, so ``increase()`` missed it.

    ``sessions``: the (listener, TLS version or "none") pairs a session can end
    with; ``logins``: the (mechanism, front door) pairs an attempt can be counted
    under, each with every result of ``AUTH_RESULTS``. In multiprocess mode each
    serving process calls it after the fork, so the zeros are in its own file.
    """
    for listener, tls_version in sessions:
        _m.sessions.labels(listener, tls_version)
    for mechanism, front_door in logins:
        for result in AUTH_RESULTS:
            _m.auth_attempts.labels(_mechanism(mechanism), front_door, result)
    for result in AUTH_RESULTS:
        if result != "refused_protocol":  # never reaches a look-up: no latency
            _m.login_seconds.labels(result)
    for name in listeners:
        _m.connections.labels(name)
        _m.sessions_active.labels(name)
        for reason in CONNECTION_REFUSALS:
            _m.connections_refused.labels(name, reason)
        _m.messages.labels(name)
        _m.message_bytes.labels(name)
    for limit in ("messages", "recipients"):
        _m.rate_limited.labels(limit)
    for field in SENDER_FIELDS:
        for action in ("refused", "logged"):
            _m.sender_policy.labels(field, action)
    for outcome in DELIVERY_OUTCOMES:
        _m.deliveries.labels(outcome)
    for kind in ("address", "subnet", "account", "account-new", "throttle"):
        _m.guard_blocks.labels(kind)
    for store, operation in _BACKENDS:
        _m.backend_errors.labels(store, operation)
        _m.backend_seconds.labels(store, operation)


def _mechanism(name: str) -> str:
    upper = name.upper()
    return upper if upper in _KNOWN_MECHANISMS else "other"


# --- the counting calls -----------------------------------------------------------------


def connection_opened(listener: str) -> None:
    _m.connections.labels(listener).inc()
    _m.sessions_active.labels(listener).inc()


def connection_refused(listener: str, reason: str) -> None:
    _m.connections_refused.labels(listener, reason).inc()


def session_ended(listener: str, tls_version: str | None) -> None:
    """A session that was counted open ended (``tls_version``: None in clear)."""
    _m.sessions_active.labels(listener).dec()
    _m.sessions.labels(listener, tls_version or "none").inc()


def auth_attempt(mechanism: str, front_door: str, result: str, seconds: float | None) -> None:
    """One finished AUTH attempt (``result`` from ``AUTH_RESULTS``); ``seconds``: its
    login latency, None if it never reached a credential look-up."""
    _m.auth_attempts.labels(_mechanism(mechanism), front_door, result).inc()
    if seconds is not None:
        _m.login_seconds.labels(result).observe(seconds)


def admin_login(result: str) -> None:
    """One web admin login attempt (``result`` from ``ADMIN_RESULTS``)."""
    _m.auth_attempts.labels(ADMIN_MECHANISM, ADMIN_FRONT_DOOR, result).inc()


def prime_admin_logins() -> None:
    """The web admin's login series at 0, in the process that serves it."""
    for result in ADMIN_RESULTS:
        _m.auth_attempts.labels(ADMIN_MECHANISM, ADMIN_FRONT_DOOR, result)


def guard_block_started(kind: str) -> None:
    _m.guard_blocks.labels(kind).inc()


def sender_policy_violation(field: str, enforced: bool) -> None:
    """``field``: one of SENDER_FIELDS; ``enforced``: refused, not only logged."""
    _m.sender_policy.labels(field, "refused" if enforced else "logged").inc()


def rate_limited(limit: str) -> None:
    """``limit``: "messages" or "recipients"."""
    _m.rate_limited.labels(limit).inc()


def message_accepted(listener: str, size: int, seconds: float) -> None:
    _m.messages.labels(listener).inc()
    _m.message_bytes.labels(listener).inc(size)
    _m.spool_commit.observe(seconds)


def spool_failed() -> None:
    _m.spool_failures.inc()


def delivered(outcome: str) -> None:
    """One recipient's attempt ended (``outcome`` from ``DELIVERY_OUTCOMES``)."""
    _m.deliveries.labels(outcome).inc()


def backend_call(store: str, operation: str, seconds: float, *, failed: bool) -> None:
    _m.backend_seconds.labels(store, operation).observe(seconds)
    if failed:
        _m.backend_errors.labels(store, operation).inc()
