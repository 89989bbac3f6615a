"""Reading the JSON auth log (``[auth].log_file``) for the web admin's pages and charts.

Only the tail of the file is read (``TAIL_BYTES``): the pages are about what is
happening now, and a page must not read a year of log. Lines that are not one
JSON object (a partial last line, a hand edit) are skipped. Every value is shown
escaped by the templates; nothing here is trusted.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from smtpgate import mechanism_facts
from smtpgate.auth.names import canonical_name
from smtpgate.policy.report import account_of, counted_probe
from smtpgate.regular_file import open_regular

#: How much of the end of the auth log is read.
TAIL_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Attempt:
    """One auth-log record, as the pages use it."""

    time: datetime
    listener: str
    client_ip: str
    tls: str
    mechanism: str
    username: str
    result: str
    reason: str
    front_door: str


def _parse(line: bytes) -> Attempt | None:
    try:
        r = json.loads(line)
        t = datetime.fromisoformat(str(r["time"]))
    except (ValueError, KeyError, TypeError, RecursionError):
        # RecursionError: a garbage line nested too deep to decode ([[[[...), which
        # is no ValueError; uncaught, it made the overview a 500.
        return None
    if not isinstance(r, dict):
        return None
    return Attempt(
        time=t if t.tzinfo else t.replace(tzinfo=UTC),
        listener=str(r.get("listener", "")),
        client_ip=str(r.get("client_ip", "")),
        tls=str(r.get("tls") or ""),
        mechanism=str(r.get("mechanism", "")),
        username=str(r.get("username", "")),
        result=str(r.get("result", "")),
        reason=str(r.get("reason", "")),
        front_door=str(r.get("front_door", "smtp")),
    )


def read_attempts(path: Path | None) -> list[Attempt]:
    """The records in the tail of the log, oldest first ([] without a log file)."""
    if path is None:
        return []
    try:
        with open_regular(path) as f:  # a named pipe there hung the page
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if len(data) == TAIL_BYTES:
        lines = lines[1:]  # the first line is cut
    return [a for a in (_parse(line) for line in lines if line.strip()) if a is not None]


@dataclass(frozen=True, slots=True)
class Filter:
    account: str = ""
    address: str = ""
    result: str = ""
    mechanism: str = ""

    def matches(self, a: Attempt) -> bool:
        return (
            (not self.account or _names_account(self.account, a))
            and (not self.address or a.client_ip.startswith(self.address))
            and (not self.result or a.result == self.result)
            and (not self.mechanism or a.mechanism.upper() == self.mechanism.upper())
        )


def _names_account(term: str, a: Attempt) -> bool:
    """Whether ``a`` is a login as an account ``term`` is part of: the name as the
    client typed it, or its account's spelling (``report.account_of``), and
    ``term`` as typed or, when it is a whole name, in its account's spelling.

    Why: a failed login is recorded under the name as typed, a successful one
    under the account's name. An account of an internationalised domain is
    ``user@bücher.example``, while a client without SMTPUTF8, and many a mail
    program's settings, give ``user@xn--bcher-kva.example``: until 2026-12 the
    account's page, and the Auth log filtered by its name, showed its successful
    logins and none of the failed ones typed that way, the guesses an
    administrator looks there for."""
    term = term.lower()
    if term in a.username.lower():
        return True
    account = account_of(a.username, a.front_door)
    return bool(account) and (term in account or _as_account(term) in account)


@functools.lru_cache(maxsize=64)
def _as_account(term: str) -> str:
    """``term`` in its account's spelling if it is a whole name, else as it is (once
    per filter, not once per record: a name that is none raises)."""
    try:
        return canonical_name(term)
    except ValueError:
        return term


def of_account(attempts: Iterable[Attempt], account: str, limit: int = 50) -> list[Attempt]:
    """The newest ``limit`` logins as ``account`` (its name as stored), newest
    first, however the client spelled it (``report.account_of``: ``Demo@X``, an
    A-label domain), as the guard counts them."""
    out = [a for a in attempts if account_of(a.username, a.front_door) == account]
    return out[::-1][:limit]


def filtered(attempts: Iterable[Attempt], f: Filter, limit: int = 500) -> list[Attempt]:
    """The newest ``limit`` matching records, newest first."""
    out = [a for a in attempts if f.matches(a)]
    return out[::-1][:limit]


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    successes: int
    failures: int


def over_time(attempts: Sequence[Attempt], now: datetime, *, hours: int,
              buckets: int = 48) -> list[Bucket]:
    """Successes and failures in ``buckets`` equal slices of the last ``hours``
    (a refusal by the guard is a ``tempfail`` "blocked: ...", not a failure, as
    ``smtpgate report`` counts it)."""
    width = timedelta(hours=hours) / buckets
    start = now - width * buckets
    ok = [0] * buckets
    bad = [0] * buckets
    for a in attempts:
        if a.time < start or a.time > now:
            continue
        i = min(buckets - 1, int((a.time - start) / width))
        if a.result == "success":
            ok[i] += 1
        elif a.result == "failure":
            bad[i] += 1
    return [Bucket(start + width * i, ok[i], bad[i]) for i in range(buckets)]


def subnet_of(address: str, v4_prefix: int, v6_prefix: int) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    prefix = v4_prefix if ip.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def top_offenders(attempts: Iterable[Attempt], since: datetime, *, v4_prefix: int,
                  v6_prefix: int, n: int = 10) -> tuple[list[tuple[str, int]],
                                                         list[tuple[str, int]]]:
    """The addresses and the subnets with the most failures since ``since``."""
    by_ip: Counter[str] = Counter()
    by_net: Counter[str] = Counter()
    for a in attempts:
        if a.result == "failure" and a.time >= since:
            by_ip[a.client_ip] += 1
            by_net[subnet_of(a.client_ip, v4_prefix, v6_prefix)] += 1
    return by_ip.most_common(n), by_net.most_common(n)


@dataclass(frozen=True, slots=True)
class Spray:
    """An address that failed against several accounts: a password-spraying episode."""

    address: str
    accounts: int
    failures: int
    first: datetime
    last: datetime


def spraying(attempts: Iterable[Attempt], since: datetime, min_accounts: int) -> list[Spray]:
    """Addresses that failed against ``min_accounts`` or more names since ``since``.

    As ``smtpgate report`` counts an episode (``policy/report.py``; the overview
    passes ``[guard].spray_accounts``, as the report does): names as the clients
    sent them, each under its account's spelling (``report.account_of``: ``Demo@x``
    and ``demo@x`` are one account), failures and the SCRAM probes the guard counts
    (``report.counted_probe``) only (a refusal by the guard is a ``tempfail``), so both show the same episodes for the same log."""
    names: dict[str, set[str]] = defaultdict(set)
    count: Counter[str] = Counter()
    first: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    for a in attempts:
        if not (a.result == "failure" or counted_probe(a.result, a.reason)) or a.time < since:
            continue
        if account := account_of(a.username, a.front_door):
            names[a.client_ip].add(account)
        count[a.client_ip] += 1
        first.setdefault(a.client_ip, a.time)
        last[a.client_ip] = a.time
    out = [Spray(ip, len(u), count[ip], first[ip], last[ip])
           for ip, u in names.items() if len(u) >= min_accounts]
    return sorted(out, key=lambda s: (-s.accounts, s.address))


def is_legacy(a: Attempt) -> bool:
    """A login a client should move off: a plaintext-equivalent secret (CRAM-MD5), or
    a cleartext password with no TLS (through a front door that was not told of any)."""
    facts = mechanism_facts.facts(a.mechanism.upper())
    if facts is None:
        return False
    return facts.plaintext_equivalent or (facts.cleartext and not a.tls)


def legacy_users(attempts: Iterable[Attempt], since: datetime) -> list[tuple[str, str, int]]:
    """(account, mechanism with how, successful logins) of legacy logins since ``since``."""
    c: Counter[tuple[str, str]] = Counter()
    for a in attempts:
        if a.result == "success" and a.time >= since and is_legacy(a):
            how = a.mechanism.upper() + ("" if a.tls else " without TLS")
            if a.front_door != "smtp":
                how += f" via {a.front_door}"
            c[(a.username, how)] += 1
    return [(u, m, n) for (u, m), n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))]
