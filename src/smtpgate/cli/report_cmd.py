"""``smtpgate report``: what happened at the login door, from the auth log.

Readable tables on a terminal (rich), or ``--json`` for a SIEM. The figures
are defined in ``policy/report.py``; current blocks and lockouts come from the
guard database and locked accounts from the account database.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group, RenderableType

from smtpgate.cli.common import (
    NotFound,
    OperationalError,
    admin_service,
    config_missing,
    config_option,
    get_config,
    iso_time,
    parse_since,
)
from smtpgate.cli.output import Table, echo, text
from smtpgate.config import running_user
from smtpgate.plural import count
from smtpgate.policy.report import LogUnreadable, Thresholds, build_report, read_records
from smtpgate.policy.rotated_logs import rotated_siblings

#: The most rows a table of the text report shows. A spraying run of 200,000 made-up
#: names was a per-account table of 200,000 rows: a minute and 800 MB of rich's
#: layout for a screen nobody reads; ``--json`` keeps every row.
TEXT_ROWS = 100


def _capped(rows: list[tuple[object, ...]],
            busiest: Callable[[tuple[object, ...]], Any] | None = None,
            ) -> tuple[list[tuple[object, ...]], int]:
    """At most `TEXT_ROWS` of ``rows`` and how many were left out; over the limit,
    ordered by ``busiest`` first (when given) so the rows kept are the ones that
    matter, not the first names of the alphabet."""
    if len(rows) <= TEXT_ROWS:
        return rows, 0
    if busiest is not None:
        rows = sorted(rows, key=busiest)
    return rows[:TEXT_ROWS], len(rows) - TEXT_ROWS


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[object, ...]],
           busiest: Callable[[tuple[object, ...]], Any] | None = None) -> RenderableType:
    rows, left_out = _capped(rows, busiest)
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if i and isinstance(rows[0][i] if rows else "", int) else "left", overflow="fold")
    for row in rows:
        # The auth log keeps names as clients sent them (auth/authlog.py): shown
        # escaped, and as text, never as Rich markup (cli/output.py).
        table.add_row(*(str(x) for x in row))
    if not left_out:
        return table
    # A line of its own, not the table's caption, which wraps to the table's width.
    return Group(table, text(
        f"... and {count(left_out, 'more row')} ({'the busiest' if busiest else 'the first'} "
        f"{TEXT_ROWS} shown); `smtpgate report --json` lists every one"))


@click.command("report")
@click.option("--since", default="24h", show_default=True,
              help="Period: 24h, 7d, 30m ... ('all' for the whole log).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (for SIEMs).")
@click.option("--log", "logs", multiple=True,
              # readable=False: one the user may not read is "permission denied" (exit
              # 1, as for the config), said where the files are read (_unreadable).
              type=click.Path(dir_okay=False, readable=False, path_type=Path),
              help="Auth log file(s) to read (default: [auth].log_file and its rotated "
              "copies of the period); repeat for several (.gz too).")
@config_option
def report(since: str, as_json: bool, logs: tuple[Path, ...], config_path: Path | None) -> None:
    """Summarise authentication: successes and failures per account, mechanisms,
    legacy-mechanism users, top failing addresses, current locks and blocks, and
    brute-force and spraying episodes."""
    start = None if since == "all" else parse_since(since)
    cfg = get_config(config_path)
    paths = list(logs)
    if not paths:
        if cfg.auth.log_file is None or str(cfg.auth.log_file) in ("", "."):
            raise click.UsageError("no auth log: [auth].log_file is empty; pass --log PATH")
        current = cfg.path(cfg.auth.log_file)
        # The period may reach back past the last rotation (policy/rotated_logs.py).
        paths = [*rotated_siblings(current, start), current]
        if len(paths) > 1 and not current.is_file():
            paths.remove(current)  # rotated, the server not yet written again
    missing = [p for p in paths if config_missing(p)]
    paths = _distinct(paths)
    if missing:
        # An empty report from a wrong path would read as "no attacks".
        raise NotFound(
            f"no auth log at {missing[0]}",
            "the server writes it at its first login attempt; check --log or [auth].log_file",
        )
    problems: list[str] = []
    try:
        data = build_report(
            read_records(paths, problems),
            since=start,
            thresholds=Thresholds(cfg.guard.lockout_threshold, cfg.guard.spray_accounts),
        )
    except LogUnreadable as e:
        raise _unreadable(e) from None
    with admin_service(cfg) as admin:
        blocks = admin.guard_blocks()
        locked = [a.name for a in admin.list_accounts() if a.locked]
    data["current_blocks"] = [
        {"kind": b.kind, "key": b.key, "until": iso_time(b.until), "reason": b.reason}
        for b in blocks
    ]
    data["locked_accounts"] = locked
    for problem in problems:
        echo(f"warning: {problem}", err=True)
    if as_json:
        echo(json.dumps(data, sort_keys=True))
        return
    _print(data)


def _distinct(paths: list[Path]) -> list[Path]:
    """``paths`` without a second name of one file (``--log`` given twice, a rotated
    name that is a link to the current log), in order: read twice, each record was
    counted twice, doubling every figure and making brute force of half an attack."""
    seen: set[tuple[int, int]] = set()
    out: list[Path] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            out.append(path)  # read_records says what is wrong with it
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            out.append(path)
    return out


def _unreadable(e: LogUnreadable) -> OperationalError:
    """The error for an auth log that is there but cannot be read: a report without
    it would look complete (until 2026-12 a rotated copy the user may not read was a
    PermissionError traceback)."""
    if isinstance(e.error, PermissionError):
        return OperationalError(
            f"permission denied: user {running_user()} cannot read {e.path}",
            "run the report as a user that may read the auth log and its rotated "
            "copies (the server's user, or root), or give this user read access",
        )
    return OperationalError(str(e), "check --log or [auth].log_file")


def _busiest_account(row: tuple[object, ...]) -> tuple[int, int, str]:
    """Most refused attempts (failures and blocks) first, then most logins, then name."""
    _name, success, failure, blocked = row
    assert isinstance(success, int) and isinstance(failure, int) and isinstance(blocked, int)
    return (-(failure + blocked), -success, str(_name))


def _print(d: dict[str, Any]) -> None:
    console = Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 160)
    t = d["totals"]
    console.print(f"auth report since {d['since'] or 'the start of the log'}: "
                  f"{count(t['attempts'], 'attempt')}, {t['success']} succeeded, {t['failure']} failed, "
                  f"{t['blocked']} blocked, {t['tempfail']} temporary failures, {t['cancelled']} cancelled, "
                  f"{t['refused']} refused before a password was tried")
    accounts = d["accounts"]
    console.print(_table("per account", ("account", "success", "failure", "blocked"),
                         [(a, c["success"], c["failure"], c["blocked"]) for a, c in accounts.items()],
                         busiest=_busiest_account))
    console.print(_table("mechanisms of successful logins", ("mechanism", "logins"),
                         list(d["mechanisms"].items())))
    console.print(_table("accounts still using a legacy mechanism", ("account", "mechanisms"),
                         [(a, " ".join(m)) for a, m in d["legacy_mechanism_users"].items()]))
    console.print(_table("logins with app passwords", ("account", "app password", "logins"),
                         [(a, n, c) for a, apps in d["app_password_logins"].items() for n, c in apps.items()]))
    console.print(_table("top failing addresses", ("address", "failures", "accounts tried"),
                         [(x["address"], x["failures"], x["accounts"]) for x in d["top_failing_addresses"]]))
    console.print(_table("AUTH refused before a password was tried (in clear, mechanism not offered, malformed)",
                         ("address", "refused", "why"),
                         [(x["address"], x["refused"], ", ".join(f"{r} ({n})" for r, n in x["reasons"].items()))
                          for x in d["top_refused_addresses"]]))
    ep = d["episodes"]
    console.print(_table("brute-force episodes", ("address", "account", "failures", "first", "last"),
                         [(x["address"], x["account"], x["failures"], x["first"], x["last"]) for x in ep["brute_force"]]))
    console.print(_table("spraying episodes", ("address", "accounts", "failures", "first", "last"),
                         [(x["address"], x["accounts"], x["failures"], x["first"], x["last"]) for x in ep["spraying"]]))
    console.print(_table("blocks and lockouts in force", ("kind", "key", "until", "reason"),
                         [(b["kind"], b["key"], b["until"], b["reason"]) for b in d["current_blocks"]]))
    console.print(text("locked accounts (user lock): " + (", ".join(d["locked_accounts"]) or "none")))


COMMANDS: list[click.Command] = [report]
