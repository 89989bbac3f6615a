"""Figures for ``smtpgate report``, computed from auth-log records.

The auth log (``auth/authlog.py``) holds one JSON object per AUTH attempt:
time, client address, account name given, mechanism, result and reason. The
report counts, for the records at or after ``since``:

- attempts by result; a ``tempfail`` whose reason starts with ``blocked:`` is a
  refusal by the guard and is counted as ``blocked``, not as a backend fault; a
  ``refused`` (an AUTH command refused before any exchange: in clear, a mechanism
  not offered, malformed) is counted apart, never as a failure: no password was
  tried, so it makes no brute force nor spraying;
- the addresses with the most refused AUTH commands, and their reasons;
- per account: successes, failures, blocked attempts, each name counted under
  its account's spelling (``account_of``: ``Alice@X`` is ``alice@x``);
- mechanisms of successful logins, and the accounts that still log in with a
  legacy mechanism (PLAIN, LOGIN, CRAM-MD5);
- logins made with app passwords, by account and app name;
- the addresses with the most failures, and how many accounts each tried; a SCRAM
  probe the guard counted against its address (``counted_probe``) is one of them;
- episodes: brute force is one address failing at least
  ``[guard].lockout_threshold`` times against one account; spraying is one
  address failing against at least ``[guard].spray_accounts`` accounts. They
  are counted over the whole report period.

Pure functions over plain data, so a test can feed records and compare figures.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smtpgate import mechanism_facts
from smtpgate.auth.guard import mail_login_key
from smtpgate.auth.names import prepared_name
from smtpgate.plural import count
from smtpgate.regular_file import open_regular

BLOCKED_PREFIX = "blocked: "
#: The end of the reason of a SCRAM probe the guard counted against the address (the
#: salt read, no proof: ``auth/login.py``); the fail2ban filter matches it too.
PROBE_SUFFIX = "(after the salt, without a proof: counted)"
#: The ``front_door`` of the web admin's login records (``web/login_log.py``).
WEB_ADMIN_DOOR = "web_admin"
_APP = re.compile(r"^app password '(.*)'$")
#: The ``result`` of an AUTH command refused before any exchange (``auth/authlog.py``).
REFUSED = "refused"
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


#: The longest line read as a record. smtpgate's own are a few kilobytes at most
#: (every string field bounded by ``authlog.MAX_FIELD_CHARS``, even fully escaped);
#: a longer line is skipped in pieces of this size, so that a line of gigabytes (a
#: file that is not an auth log, a disk block of zeros) does not take as much memory.
MAX_LINE_BYTES = 1 << 20


class LogUnreadable(Exception):
    """An auth log that exists but cannot be opened (permission denied, a directory)."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"cannot read {path}: {error.strerror or error}")
        self.path = path
        self.error = error


def parse_record(line: bytes) -> dict[str, Any] | None:
    """One auth-log line as a record, or None for anything else: no JSON, no object,
    or nesting deep enough that the decoder gives up (RecursionError, which is no
    ValueError: ``[[[[...`` in a garbage line ended the report in a traceback).

    A record never holds a NUL byte (JSON escapes it), so what comes before the last
    NUL of a line is dropped: after a crash the file may end in a block of zeros, and
    the server's next record is appended to it with no newline between; it was lost
    with the zeros."""
    if b"\0" in line:
        line = line.rpartition(b"\0")[2]
    try:
        rec = json.loads(line.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) else None


def _lines(f: io.BufferedIOBase) -> Iterator[bytes | None]:
    """The lines of ``f``, each at most ``MAX_LINE_BYTES``; None for a longer one,
    which is read past in pieces, never held whole. Of a longer one whose end follows
    a NUL byte (a record appended to a block of zeros), that end is given as a line
    of its own after the None (`parse_record`)."""
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
            yield line
            continue
        tail = line
        while line and not line.endswith(b"\n"):
            line = f.readline(MAX_LINE_BYTES)
            tail = (tail + line)[-MAX_LINE_BYTES:]  # a record may span two pieces
        yield None
        if b"\0" in tail:
            yield tail.rpartition(b"\0")[2]


def read_records(
    paths: Iterable[Path], problems: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Records from JSON-lines files, read line by line (memory stays bounded however
    large the file or its lines); unreadable lines are skipped. A file ending in
    ``.gz`` is read through gzip (logrotate's ``compress``, contrib/logrotate.d). A
    file that breaks off (a ``.gz`` cut short or corrupt, or not gzip at all) gives
    what was read before, and a line naming it in ``problems``: the report must not
    look complete when it is not, nor end in a traceback. Lines too long to be a
    record are counted there too.

    Raises:
        LogUnreadable: a file exists but cannot be opened (a report that silently
            left it out would look complete).
    """
    for path in paths:
        try:
            # Not path.open(): a named pipe there hung the report forever.
            raw = open_regular(path)
        except FileNotFoundError:
            continue  # rotated away since it was listed
        except OSError as e:
            raise LogUnreadable(path, e) from None
        f: io.BufferedIOBase = (
            gzip.GzipFile(fileobj=raw, mode="rb")
            if path.suffix == ".gz"
            else raw
        )
        long_lines = 0
        with raw, f:
            try:
                for line in _lines(f):
                    if line is None:
                        long_lines += 1
                        continue
                    rec = parse_record(line)
                    if rec is not None:
                        yield rec
            except (EOFError, OSError, zlib.error) as e:
                # gzip's truncated stream (EOFError), BadGzipFile, a CRC mismatch
                # (OSError), a corrupt deflate stream (zlib.error), a read error.
                if problems is not None:
                    problems.append(
                        f"{path}: read only in part ({e}); the figures leave out the rest of it"
                    )
        if long_lines and problems is not None:
            problems.append(
                f"{path}: {count(long_lines, 'line')} longer than {MAX_LINE_BYTES} bytes "
                "skipped (no auth record is that long)"
            )


@dataclass(frozen=True, slots=True)
class Thresholds:
    brute_force_failures: int
    spray_accounts: int


def account_of(name: str, front_door: str = "smtp") -> str:
    """The account a login name counts under: its canonical spelling
    (``auth/names.py``), as the guard counts it, else the name as given (a name of
    no account's form, an admin's ``admin:NAME``). A mail login (any door but the
    web admin's) named ``admin:...`` counts under no account ("", as the guard's
    ``mail_login_key``): it was the web admin's account of that name in the report,
    so guesses at SMTP AUTH as ``admin:root`` read as a brute force on the admin page.

    Why: a failed attempt's record keeps the name as typed, and ``Demo@x``,
    ``DEMO@x`` and ``demo@X`` are one account to the guard, which locks it after
    ``lockout_threshold`` of them; counted as typed, ten such guesses from one
    address made ten accounts of one failure each, a spraying episode and no
    brute force against the account the guard had locked. The name is SASLprep'd
    first, as every login path looks it up (``prepared_name``): ``bob@example.org``
    with a zero-width space, a soft hyphen or in full-width letters logs in to bob
    and is counted under bob by the guard, but was a name of its own here."""
    if front_door != WEB_ADMIN_DOOR and not mail_login_key(name):
        return ""
    return prepared_name(name)


def counted_probe(result: str, reason: str) -> bool:
    """A ``cancelled`` attempt that the guard counted against its address (a SCRAM
    probe): a failure of the address for the top failing addresses and spraying,
    as the guard counts it toward ``spray_accounts``, but no guess at the account
    (no brute force), and still ``cancelled`` in the totals. Until 2026-12 an
    address the guard blocked for harvesting salts showed no failure at all."""
    return result == "cancelled" and reason.endswith(PROBE_SUFFIX)


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
    refused_by_addr: Counter[str] = Counter()
    refused_reasons: dict[str, Counter[str]] = defaultdict(Counter)
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
        account = account_of(str(rec.get("username", "")), str(rec.get("front_door", "smtp")))
        address = str(rec.get("client_ip", ""))
        mech = str(rec.get("mechanism", "")).upper()
        totals["attempts"] += 1
        totals[outcome] += 1
        if account:
            per_account[account][outcome] += 1
        if outcome == REFUSED:
            refused_by_addr[address] += 1
            # "AUTH before STARTTLS: invalid base64" is an AUTH in clear, as the rest.
            refused_reasons[address][str(rec.get("reason", "")).partition(":")[0]] += 1
        elif outcome == "success":
            mechanisms[mech] += 1
            if mech in mechanism_facts.LEGACY:
                legacy[account].add(mech)
            m = _APP.match(str(rec.get("reason", "")))
            if m:
                apps[account][m.group(1)] += 1
        elif outcome == "failure" or counted_probe(outcome, str(rec.get("reason", ""))):
            fail_by_addr[address] += 1
            if account:
                accounts_by_addr[address].add(account)
                if outcome == "failure":
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
    refusing = sorted(refused_by_addr.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ADDRESSES]
    results = ("success", "failure", "blocked", "tempfail", "cancelled", REFUSED)
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
        "top_refused_addresses": [
            {"address": a, "refused": n, "reasons": dict(sorted(refused_reasons[a].items()))}
            for a, n in refusing
        ],
        "episodes": {"brute_force": brute, "spraying": spray},
    }
