"""Figures for ``smtpgate report``, computed from auth-log records.

The auth log (``auth/authlog.py``) holds one JSON object per AUTH attempt:
time, client address, account name given, mechanism, result and reason. The
report counts, for the records at or after ``since``:

- attempts by result; a ``tempfail`` whose reason starts with ``blocked:`` is a
  refusal by the guard and is counted as ``blocked``, not as a backend fault;
- per account: successes, failures, blocked attempts;
- mechanisms of successful logins, and the accounts that still log in with a
  legacy mechanism (PLAIN, LOGIN, CRAM-MD5);
- logins made with app passwords, by account and app name;
- the addresses with the most failures, and how many accounts each tried;
- episodes: brute force is one address failing at least
  ``[guard].lockout_threshold`` times against one account; spraying is one
  address failing against at least ``[guard].spray_accounts`` accounts. They
  are counted over the whole report period.

Pure functions over plain data, so a test can feed records and compare figures.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from smtpgate import mechanism_facts

BLOCKED_PREFIX = "blocked: "
_APP = re.compile(r"^app password '(.*)'$")
TOP_ADDRESSES = 10


def parse_time(text: str) -> datetime | None:
    """A record's time; one without a zone (not smtpgate's, which ends in Z: a line
    another tool or a person wrote) is read as UTC, since comparing it with
    ``--since`` raised TypeError, a traceback for the whole report."""
    try:
        t = datetime.fromisoformat(text)  # Python 3.11 reads the trailing Z
    except (ValueError, AttributeError):
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def read_records(
    paths: Iterable[Path], problems: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Records from JSON-lines files; unreadable lines are skipped. A file ending in
    ``.gz`` is read through gzip (logrotate's ``compress``, contrib/logrotate.d). A
    file that breaks off (a ``.gz`` cut short, or not gzip at all) gives what was
    read before, and a line naming it in ``problems``: the report must not look
    complete when it is not, nor end in a traceback."""
    for path in paths:
        try:
            f: TextIO = (
                gzip.open(path, "rt", encoding="utf-8", errors="replace")  # noqa: SIM115
                if path.suffix == ".gz"
                else path.open(encoding="utf-8", errors="replace")
            )
        except FileNotFoundError:
            continue
        with f:
            try:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict):
                        yield rec
            except (EOFError, OSError) as e:  # gzip's truncated stream, BadGzipFile
                if problems is not None:
                    problems.append(f"{path}: read only in part ({e})")


@dataclass(frozen=True, slots=True)
class Thresholds:
    brute_force_failures: int
    spray_accounts: int


def _outcome(rec: dict[str, Any]) -> str:
    result = str(rec.get("result", ""))
    if result == "tempfail" and str(rec.get("reason", "")).startswith(BLOCKED_PREFIX):
        return "blocked"
    return result


def build_report(
    records: Iterable[dict[str, Any]], *, since: datetime | None, thresholds: Thresholds
) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the module docstring)."""
    totals: Counter[str] = Counter()
    per_account: dict[str, Counter[str]] = defaultdict(Counter)
    mechanisms: Counter[str] = Counter()
    legacy: dict[str, set[str]] = defaultdict(set)
    apps: dict[str, Counter[str]] = defaultdict(Counter)
    fail_by_addr: Counter[str] = Counter()
    accounts_by_addr: dict[str, set[str]] = defaultdict(set)
    pair: Counter[tuple[str, str]] = Counter()
    # Times are compared as times, each kept with its text as the record wrote it
    # (what a grep of the log finds): as strings, 10:30+02:00 sorted after 09:00Z.
    span: dict[object, list[tuple[datetime, str]]] = {}
    first: tuple[datetime, str] | None = None
    last: tuple[datetime, str] | None = None
    for rec in records:
        stamp = str(rec.get("time", ""))
        t = parse_time(stamp)
        if t is None or (since is not None and t < since):
            continue
        at = (t, stamp)
        first = at if first is None or t < first[0] else first
        last = at if last is None or t > last[0] else last
        outcome = _outcome(rec)
        account = str(rec.get("username", ""))
        address = str(rec.get("client_ip", ""))
        mech = str(rec.get("mechanism", "")).upper()
        totals["attempts"] += 1
        totals[outcome] += 1
        if account:
            per_account[account][outcome] += 1
        if outcome == "success":
            mechanisms[mech] += 1
            if mech in mechanism_facts.LEGACY:
                legacy[account].add(mech)
            m = _APP.match(str(rec.get("reason", "")))
            if m:
                apps[account][m.group(1)] += 1
        elif outcome == "failure":
            fail_by_addr[address] += 1
            if account:
                accounts_by_addr[address].add(account)
                pair[(address, account)] += 1
            for key in (address, (address, account)):
                s = span.setdefault(key, [at, at])
                if t < s[0][0]:
                    s[0] = at
                if t > s[1][0]:
                    s[1] = at
    top = sorted(fail_by_addr.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ADDRESSES]
    brute = [
        {"address": a, "account": u, "failures": n, "first": span[(a, u)][0][1],
         "last": span[(a, u)][1][1]}
        for (a, u), n in sorted(pair.items(), key=lambda kv: (-kv[1], kv[0]))
        if n >= thresholds.brute_force_failures
    ]
    spray = [
        {"address": a, "accounts": len(us), "failures": fail_by_addr[a],
         "first": span[a][0][1], "last": span[a][1][1]}
        for a, us in sorted(accounts_by_addr.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        if len(us) >= thresholds.spray_accounts
    ]
    results = ("success", "failure", "blocked", "tempfail", "cancelled")
    return {
        "since": None if since is None else since.isoformat().replace("+00:00", "Z"),
        "first_record": None if first is None else first[1],
        "last_record": None if last is None else last[1],
        "totals": {k: totals[k] for k in ("attempts", *results)},
        "accounts": {
            a: {k: c[k] for k in ("success", "failure", "blocked")}
            for a, c in sorted(per_account.items())
        },
        "mechanisms": dict(sorted(mechanisms.items())),
        "legacy_mechanism_users": {a: sorted(m) for a, m in sorted(legacy.items())},
        "app_password_logins": {a: dict(sorted(c.items())) for a, c in sorted(apps.items())},
        "top_failing_addresses": [
            {"address": a, "failures": n, "accounts": len(accounts_by_addr.get(a, ()))}
            for a, n in top
        ],
        "episodes": {"brute_force": brute, "spraying": spray},
    }
