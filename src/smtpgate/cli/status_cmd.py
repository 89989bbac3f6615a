"""``smtpgate status``: the running server in one screen (or one JSON object).

What the server itself knows (processes, sessions, when and from which file its
config was loaded) comes from the status file it keeps beside the pid file
(`server/status_file.py`); the rest is read where it lives: the queue from the
spool, whether the account backend answers, the guard's blocks from the guard state
(each on its own line, so a failure names its own store), the certificate's expiry
from the certificate file. So it works with the server stopped too, and says so.

Exit status: 0 running, 3 not running (as ``smtpgate reload``), 1 running but
its status file is stale (the main loop has not written it for three intervals),
one of its processes is stuck (silent past its ``alive`` interval) or gone,
waiting to be restarted.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from cryptography import x509

from smtpgate.auth.accounts import accounts_key, open_account_store
from smtpgate.auth.directory import StoreError
from smtpgate.auth.guard_state import GuardStoreError
from smtpgate.auth.state_backend import open_guard_state
from smtpgate.cli.common import (
    ExitCode,
    config_file,
    config_missing,
    config_option,
    get_config,
    iso_time,
)
from smtpgate.cli.output import echo
from smtpgate.cli.reload_cmd import moved_note
from smtpgate.config import Config
from smtpgate.plural import count
from smtpgate.queue.manage import QueueManager
from smtpgate.queue.space import MIN_FREE_INODES, free_bytes, free_inodes
from smtpgate.queue.spool import Spool, SpoolError
from smtpgate.server import status_file
from smtpgate.server.pidfile import NotRunning, find_running, pid_path
from smtpgate.smtp import replies as R


def _server(cfg: Config, config: Path | None) -> tuple[dict[str, Any], int]:
    path = pid_path(cfg)
    try:
        found = find_running(path, config)
    except NotRunning as e:
        # Printed as "not running (why)": the error's own "smtpgate is not running
        # (...)" wrapper would say it twice.
        why = str(e)
        prefix = "smtpgate is not running ("
        if why.startswith(prefix) and why.endswith(")"):
            why = why[len(prefix):-1]
        return {"running": False, "why": why}, ExitCode.NOT_FOUND
    pid = found.pid
    out: dict[str, Any] = {"running": True, "pid": pid}
    if not found.at_pid_file:
        # Its status file is beside the pid file it started with, which this config
        # no longer names: running, its state unknown here (exit 1, as stale).
        out["stale"] = True
        out["why"] = moved_note(path, pid).removeprefix("note: ")
        return out, ExitCode.ERROR
    try:
        doc = status_file.read(status_file.status_path(cfg))
    except (OSError, ValueError) as e:
        out["stale"] = True
        out["why"] = f"no status file yet ({e})"
        return out, ExitCode.ERROR
    updated = doc.get("updated", 0)
    if isinstance(updated, bool) or not isinstance(updated, int | float):
        # Not what the server writes (a damaged file, another version's): its other
        # fields cannot be trusted either. float() of it was a traceback.
        out["stale"] = True
        out["why"] = (f"the status file {status_file.status_path(cfg)} is damaged "
                      f"(updated: {updated!r}); the server rewrites it every few seconds")
        return out, ExitCode.ERROR
    age = time.time() - float(updated)
    stale = doc.get("pid") != pid or age > 3 * status_file.INTERVAL
    out.update(doc, pid=pid, stale=stale)
    if stale:
        out["why"] = f"the status file was last written {age:.0f} s ago"
    stuck = any(_silent(p) for p in out.get("processes") or [] if isinstance(p, dict))
    return out, ExitCode.ERROR if stale or stuck or _down(out) else ExitCode.OK


def _silent(process: dict[str, Any]) -> bool:
    """A process whose event loop the supervisor has not heard from in time."""
    silent = process.get("silent", 0)
    return isinstance(silent, int | float) and not isinstance(silent, bool) and silent > 0


def _down(server: dict[str, Any]) -> list[dict[str, Any]]:
    """The processes the status file says are gone (a worker or the delivery
    process between its death and its restart); none from an older server's file."""
    down = server.get("down")
    if not isinstance(down, list):
        return []
    return [d for d in down if isinstance(d, dict) and isinstance(d.get("name"), str)
            and isinstance(d.get("ended"), int | float)
            and isinstance(d.get("restart_at"), int | float)]


def _queue(cfg: Config) -> dict[str, Any]:
    spool_dir = cfg.path(cfg.queue.spool)
    if not spool_dir.is_dir():  # not made here (``queue_cmd._manager`` says why)
        return {"error": f"no spool at {spool_dir} (`smtpgate serve` creates it at its "
                         "first start; check [queue].spool)"}
    try:
        manager = QueueManager(Spool(cfg.path(cfg.queue.spool), prefill=False, tidy=False))
        entries = manager.entries()
        aside, _ = manager.set_aside()
    except (OSError, SpoolError) as e:
        return {"error": str(e)}
    now = time.time()
    ages = [now - e.envelope.received_at for e in entries]
    try:
        free: int | None = free_bytes(cfg.path(cfg.queue.spool))
        inodes = free_inodes(cfg.path(cfg.queue.spool))
    except OSError:
        free = inodes = None
    return {
        "messages": len(entries),
        "unreadable": len(manager.unreadable),
        # Moved to corrupt/ by the delivery worker: not queued, never delivered.
        "set_aside": len(aside),
        "held": sum(1 for e in entries if e.state.held),
        "bytes": sum(e.size for e in entries),
        "oldest_age": int(max(ages)) if ages else None,
        # queue.min_free_space: under it, MAIL is answered 452 4.3.1 (queue/space.py).
        "free_bytes": free,
        # Under MIN_FREE_INODES, MAIL is answered 452 4.3.1 too; None: not counted.
        "free_inodes": inodes,
        "reserve_bytes": cfg.queue.free_space_reserve(cfg.limits.max_message_size),
    }


def _space(free: int | None, reserve: int) -> str:
    kept = f"{reserve // 1_000_000} MB kept in reserve (queue.min_free_space)"
    if free is None:
        return f"free space unreadable; {kept}"
    line = f"{free // 1_000_000} MB free, {kept}"
    if reserve and free < reserve:
        full = R.INSUFFICIENT_STORAGE
        line += f": MAIL is answered {full.code} {full.enhanced} until there is room"
    return line


def _inodes(free: int | None, reserve: int) -> str:
    if free is None:
        return ""
    line = f"; {free} inodes free"
    if reserve and free < MIN_FREE_INODES:
        full = R.INSUFFICIENT_STORAGE
        line += (f", under {MIN_FREE_INODES}: MAIL is answered {full.code} {full.enhanced} "
                 "until files are removed")
    return line


def _accounts(cfg: Config) -> dict[str, Any]:
    """Whether the account backend opens and answers one read, named by the key that
    says where it is: a database that is down is reported as itself, not as the guard
    (which, read through the admin service, opened the account database first)."""
    out: dict[str, Any] = {"backend": cfg.accounts.backend, "key": accounts_key(cfg)}
    path = cfg.path(cfg.accounts.database)
    if cfg.accounts.backend == "sqlite" and config_missing(path):
        # Not opened: that would create it, and a typo in the path would read as
        # "sqlite answers" (and config check pass) from then on.
        out["error"] = f"no account database at {path} (`smtpgate user add` creates it)"
        return out
    try:
        # quiet: this line says it; the directory's outage log would say it again.
        store = open_account_store(cfg, quiet=True)
        try:
            store.get_account("postmaster")
        finally:
            store.close()
    except StoreError as e:
        out["error"] = str(e)
        # A key of its own (a CA file, the service account's password file, base_dn)
        # when that is what the directory refused.
        key = getattr(e, "key", None)
        if isinstance(key, str) and key.startswith("accounts."):
            out["key"] = key
    return out


def _guard(cfg: Config) -> dict[str, Any]:
    """The blocks in force, read from the guard state alone (``[guard].database``, or
    Redis with ``[state]``), so a failure here is the guard's own."""
    where = ("state.redis_url" if cfg.state.backend == "redis"
             else f"guard.database {cfg.path(cfg.guard.database)}")
    try:
        guard = open_guard_state(cfg)
        try:
            blocks = guard.active_blocks(time.time())
        finally:
            guard.close()
    except GuardStoreError as e:
        return {"error": f"{where}: {e}"}
    kinds: dict[str, int] = {}
    for b in blocks:
        kinds[b.kind] = kinds.get(b.kind, 0) + 1
    return {"blocks": len(blocks), "by_kind": kinds}


def _certificate(cfg: Config) -> dict[str, Any]:
    path = cfg.path(cfg.tls.cert)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        return {"file": str(path), "error": str(e)}
    until = cert.not_valid_after_utc
    return {
        "file": str(path),
        "subject": cert.subject.rfc4514_string(),
        "not_after": iso_time(until),
        "days_left": (until - datetime.now(UTC)).days,
    }


def _ago(t: float) -> str:
    seconds = int(time.time() - t)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _reload_line(last: Any) -> str | None:
    """The last reload's outcome, or None before the first.

    Why on screen: a reload sent by logrotate's or certbot's hook (``systemctl
    reload`` reports only that the signal was sent) can fail, and the server then
    keeps its old certificate and configuration while the ``certificate:`` line reads
    the new file from disk; without this line `status` looked healthy."""
    if not isinstance(last, dict) or not isinstance(last.get("at"), int | float):
        return None
    when = _ago(last["at"])
    if not last.get("ok"):
        return (f"FAILED {when}: {last.get('error') or 'see the server log'}; the "
                "running configuration and certificate are kept")
    kept = [str(k) for k in last.get("kept") or []]
    return f"ok {when}" + (f"; kept as running until a restart: {', '.join(kept)}"
                           if kept else "")


def _print(doc: dict[str, Any]) -> None:
    srv = doc["server"]
    if not srv["running"]:
        echo(f"server:       not running ({srv['why']})")
    else:
        line = f"server:       running, pid {srv['pid']}"
        if "version" in srv:
            line += f", smtpgate {srv['version']}, up since {_ago(srv['started'])}"
        echo(line + (f"  [STALE: {srv['why']}]" if srv.get("stale") else ""))
        if "config_file" in srv:
            echo(f"config:       {srv['config_file'] or '(embedded)'}, loaded "
                       f"{_ago(srv['config_loaded'])}")
            if (reload := _reload_line(srv.get("last_reload"))) is not None:
                echo(f"reload:       {reload}")
            for lst in srv["listeners"]:
                echo(f"listener:     {lst['name']} {lst['address']} "
                     f"({lst['tls']}{status_file.proxy_note(lst)})")
            for door in srv["auth_listeners"]:
                echo(f"front door:   {door['name']} {door['address']} "
                     f"({door['protocol']}{status_file.proxy_note(door)})")
            for label, key in (("web admin:", "admin"), ("metrics:", "metrics")):
                if srv.get(key):
                    echo(f"{label:<14}{srv[key]}")
            procs = srv["processes"] or [{"name": "single process", "pid": srv["pid"],
                                          "ready": True}]
            for p in procs:
                echo(f"process:      {p['name']} pid {p['pid']}"
                           + ("" if p["ready"] else " (starting)")
                           + (f" (STUCK: silent for {p['silent']:.0f} s)" if _silent(p) else ""))
            for d in _down(srv):
                due = max(0, round(d["restart_at"] - time.time()))
                echo(f"process:      {d['name']} DOWN since {_ago(d['ended'])}: "
                     f"{d.get('how') or 'ended'}; restarted in {due} s")
            echo(f"sessions:     {srv['sessions']} open")
    q = doc["queue"]
    if "error" in q:
        echo(f"queue:        cannot read: {q['error']}")
    else:
        oldest = "" if q["oldest_age"] is None else f", oldest {q['oldest_age']} s"
        bad = f", {q['unreadable']} unreadable" if q.get("unreadable") else ""
        if q.get("set_aside"):
            bad += f", {q['set_aside']} set aside in corrupt/"
        echo(f"queue:        {count(q['messages'], 'message')} ({q['held']} held, "
             f"{count(q['bytes'], 'byte')}{bad}){oldest}")
        echo(f"spool disk:   {_space(q['free_bytes'], q['reserve_bytes'])}"
             f"{_inodes(q.get('free_inodes'), q['reserve_bytes'])}")
    a = doc["accounts"]
    if "error" in a:
        echo(f"accounts:     cannot read ({a['backend']}, {a['key']}): {a['error']}")
    else:
        echo(f"accounts:     {a['backend']} answers ({a['key']})")
    g = doc["guard"]
    if "error" in g:
        echo(f"guard:        cannot read: {g['error']}")
    else:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(g["by_kind"].items()))
        echo(f"guard:        {count(g['blocks'], 'block or lockout', 'blocks and lockouts')} in force"
                   + (f" ({kinds})" if kinds else ""))
    c = doc["certificate"]
    if "error" in c:
        echo(f"certificate:  {c['file']}: cannot read: {c['error']}")
    else:
        warn = "  [EXPIRED]" if c["days_left"] < 0 else (
            "  [renew soon]" if c["days_left"] < 14 else "")
        echo(f"certificate:  {c['subject']}, valid until {c['not_after']} "
                   f"({count(c['days_left'], 'day')}){warn}")


def _iso_times(doc: dict[str, Any]) -> dict[str, Any]:
    """The status file keeps seconds since the epoch; the JSON gives its times as
    every command's JSON does (ISO 8601 with the zone, docs/cli.md)."""
    server = dict(doc["server"])
    for key in ("started", "config_loaded", "updated"):
        if isinstance(server.get(key), int | float):
            server[key] = iso_time(server[key])
    last = server.get("last_reload")
    if isinstance(last, dict) and isinstance(last.get("at"), int | float):
        server["last_reload"] = {**last, "at": iso_time(last["at"])}
    if isinstance(server.get("processes"), list):
        server["processes"] = [
            {**p, "started": iso_time(p["started"])}
            if isinstance(p, dict) and isinstance(p.get("started"), int | float) else p
            for p in server["processes"]]
    if "down" in server:
        server["down"] = [{**d, "ended": iso_time(d["ended"]),
                           "restart_at": iso_time(d["restart_at"])} for d in _down(server)]
    return {**doc, "server": server}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object (docs/operations.md).")
@config_option
def status(as_json: bool, config_path: Path | None) -> None:
    """Listeners, processes, sessions, queue, accounts, guard and certificate expiry."""
    cfg = get_config(config_path)
    server, code = _server(cfg, config_file(config_path))
    doc = {"server": server, "queue": _queue(cfg), "accounts": _accounts(cfg),
           "guard": _guard(cfg),
           "certificate": _certificate(cfg)}
    if as_json:
        echo(json.dumps(_iso_times(doc), sort_keys=True))
    else:
        _print(doc)
    raise SystemExit(int(code))


COMMANDS = [status]
