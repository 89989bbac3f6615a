#!/usr/bin/env python3
"""One node vs two nodes behind HAProxy, and what the shared Redis state costs.

One run starts, in a temp dir on loopback: a private Redis (tests/peers/redis_server.py),
a PostgreSQL database for the accounts (tests/postgres_server.py), HAProxy in TCP mode with
``send-proxy-v2`` (tests/peers/haproxy.py), and three targets, each a default install
(uvloop, ``workers = 0``) with the same certificate and account:

* ``sqlite``: one node, guard state and counters in SQLite (the default);
* ``redis``: one node, guard state and counters in Redis (``[state] backend = "redis"``);
* ``2 nodes``: two Redis nodes behind HAProxy, round robin.

Each target gets the same two workloads from ``/work/shared/bench/loadgen.py`` (STARTTLS,
AUTH PLAIN, 1 KiB messages), interleaved per repetition, the median of ``--repeat`` runs
reported: *logins* (N sessions × 1 message at concurrency 10: sessions/s and the AUTH
latency p50/p99) and *messages* (10 sessions × M messages: messages/s, per-message p50/p99).
Redis round trips per login and per message are counted from Redis's own command
statistics (``INFO commandstats``) over the ``redis`` target's logins workload.

On a 2-core machine the second node shows the overhead of the extra hop and processes, not a
speed-up: the nodes, HAProxy, Redis, PostgreSQL and the load generator share two cores.

Usage::

    .venv/bin/python bench/scale_bench.py              # about 3 minutes
    .venv/bin/python bench/scale_bench.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis

from tests.integration.backends import set_accounts
from tests.integration.conftest import SMTPGATE, Server, make_server
from tests.peers.haproxy import HAProxy
from tests.peers.redis_server import PASSWORD as REDIS_PASSWORD
from tests.peers.redis_server import RedisServer

LOADGEN = Path("/work/shared/bench/loadgen.py")
USER, SECRET = "loadgen@test.local", "violet-harbor-quartz-58"  # loadgen writes that From
LIFTED = """
[limits]
messages_per_hour = 0
recipients_per_hour = 0
max_connections_per_ip = 1000
"""


@dataclass
class Target:
    name: str
    port: int
    cafile: Path
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def loadavg() -> float:
    return os.getloadavg()[0]


def start(srv: Server, proxied: bool) -> None:
    if not proxied:
        srv.start()
        return
    with open(srv.log_path, "ab") as log:
        srv.proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(srv.config)],
                                    stdout=log, stderr=log, env=srv.env)
    status = srv.root / "smtpgate.status.json"
    deadline = time.monotonic() + 60
    while True:
        if srv.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(srv.log_text())
        try:
            doc = json.loads(status.read_text())
            if doc["pid"] == srv.proc.pid and all(p["ready"] for p in doc["processes"]):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)


def node(root: Path, name: str, *, redis_server: RedisServer | None, dsn: str,
         pg_password: Path, proxied: bool, cert_from: Server | None) -> Server:
    srv = make_server(root / name, LIFTED)
    (srv.root / "pg.password").write_text(pg_password.read_text())
    (srv.root / "pg.password").chmod(0o600)
    set_accounts(srv, "postgresql", f'[accounts.postgresql]\ndsn = "{dsn}"\n'
                                    'password_file = "pg.password"\n')
    text = srv.config.read_text()
    if proxied:
        for tls in ("starttls", "implicit"):
            text = text.replace(f'tls = "{tls}"', f'tls = "{tls}"\nproxy_protocol = true\n'
                                'trusted_proxies = ["127.0.0.1/32"]')
    if redis_server is not None:
        text += (f'\n[state]\nbackend = "redis"\nredis_url = "{redis_server.url}"\n'
                 f'password_file = "{redis_server.password_file}"\nkey_prefix = "bench:"\n'
                 f'node_name = "{name}"\n')
    srv.config.write_text(text)
    if cert_from is not None:
        for part in ("cert.pem", "key.pem"):
            (srv.root / "tls" / part).write_bytes((cert_from.root / "tls" / part).read_bytes())
    return srv


def loadgen(target: Target, sessions: int, messages: int, concurrency: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(LOADGEN), "--port", str(target.port), "--mode", "starttls",
         "--sessions", str(sessions), "--concurrency", str(concurrency), "--messages",
         str(messages), "--user", USER, "--password", SECRET, "--cafile", str(target.cafile),
         "--max-seconds", "120", "--uvloop", "--json"],
        capture_output=True, text=True, timeout=300, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def redis_calls(client: redis.Redis) -> tuple[int, int]:
    """(round trips, commands): scripts (EVALSHA) plus commands sent on their own,
    and every command including those a script runs, from ``INFO commandstats``.
    (The -PLUS fallback's one ZSCORE per STARTTLS session is sent on its own; it is
    among the commands, not the round trips.)"""
    stats = client.info("commandstats")
    admin = ("cmdstat_info", "cmdstat_ping", "cmdstat_auth", "cmdstat_hello",
             "cmdstat_client|setinfo", "cmdstat_scan", "cmdstat_script|load")
    total = sum(int(v["calls"]) for k, v in stats.items() if k not in admin)
    trips = sum(int(stats.get(k, {}).get("calls", 0)) for k in ("cmdstat_evalsha", "cmdstat_eval"))
    return trips, total


def median(runs: list[dict[str, Any]], key: str) -> float:
    """``key`` is a top-level figure (``sessions_per_s``) or ``auth_p50`` for
    ``auth_ms.p50``."""
    if key.endswith(("_p50", "_p99")):
        what, p = key.rsplit("_", 1)
        return float(statistics.median(float(r[f"{what}_ms"][p]) for r in runs))
    return float(statistics.median(float(r[key]) for r in runs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sessions, messages, repeat = (40, 20, 1) if args.quick else (200, 100, args.repeat)
    from tests.postgres_server import shared_cluster

    load_before = loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="smtpgate-scale-bench-"))
    redis_server = RedisServer(tmp / "redis")
    redis_server.start()
    pg = shared_cluster()
    dsn = pg.create_database()
    pw = pg.write_password_file(tmp)
    servers: list[Server] = []
    proxy: HAProxy | None = None
    try:
        first = node(tmp, "sqlite", redis_server=None, dsn=dsn, pg_password=pw, proxied=False,
                     cert_from=None)
        assert first.cli("db", "migrate", check=False).returncode == 0
        first.add_user(USER, SECRET)
        one_redis = node(tmp, "redis", redis_server=redis_server, dsn=dsn, pg_password=pw,
                         proxied=False, cert_from=first)
        a = node(tmp, "a", redis_server=redis_server, dsn=dsn, pg_password=pw, proxied=True,
                 cert_from=first)
        b = node(tmp, "b", redis_server=redis_server, dsn=dsn, pg_password=pw, proxied=True,
                 cert_from=first)
        for srv, proxied in ((first, False), (one_redis, False), (a, True), (b, True)):
            start(srv, proxied)
            servers.append(srv)
        proxy = HAProxy(tmp / "haproxy", [("a", a.submission, a.submissions),
                                          ("b", b.submission, b.submissions)])
        proxy.start()
        targets = [Target("sqlite", first.submission, first.ca),
                   Target("redis", one_redis.submission, first.ca),
                   Target("2 nodes", proxy.submission, first.ca)]
        for t in targets:  # warm-up: first logins, imports, connections to Redis
            loadgen(t, 8, 2, 4)
        client = redis.Redis(port=redis_server.port, password=REDIS_PASSWORD)
        trips: dict[str, float] = {}

        for _ in range(repeat):
            for t in targets:
                before = redis_calls(client)
                run = loadgen(t, sessions, 1, 10)
                if t.name == "redis":
                    after = redis_calls(client)
                    trips["script round trips per session (login + 1 message)"] = (
                        (after[0] - before[0]) / sessions)
                    trips["commands per session, inside scripts included"] = (
                        (after[1] - before[1]) / sessions)
                t.runs.setdefault("logins", []).append(run)
            for t in targets:
                before = redis_calls(client)
                run = loadgen(t, 10, messages, 10)
                if t.name == "redis":
                    after = redis_calls(client)
                    trips["script round trips per message (long sessions)"] = (
                        (after[0] - before[0]) / (10 * messages))
                t.runs.setdefault("messages", []).append(run)
    finally:
        if proxy is not None:
            proxy.stop()
        for srv in servers:
            if srv.proc is not None:
                srv.stop()
        redis_server.stop()
    load_after = loadavg()
    for t in targets:
        for kind, runs in t.runs.items():
            for r in runs:
                if r.get("errors"):
                    print(f"{t.name} {kind}: errors {r['errors']}", file=sys.stderr)
    rows = []
    base = targets[0]
    for t in targets:
        row = {
            "target": t.name,
            "sessions_per_s": median(t.runs["logins"], "sessions_per_s"),
            "auth_p50_ms": median(t.runs["logins"], "auth_p50"),
            "auth_p99_ms": median(t.runs["logins"], "auth_p99"),
            "messages_per_s": median(t.runs["messages"], "messages_per_s"),
            "message_p50_ms": median(t.runs["messages"], "message_p50"),
            "message_p99_ms": median(t.runs["messages"], "message_p99"),
        }
        rows.append(row)
    print(f"\nscale-out bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {load_before:.2f} "
          f"before, {load_after:.2f} after; median of {repeat}")
    print("| target | sessions/s | vs sqlite | AUTH p50 / p99 ms | messages/s | vs sqlite "
          "| message p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|")
    b_rows = rows[0]
    for r in rows:
        print(f"| {r['target']} | {r['sessions_per_s']:.1f} | "
              f"{r['sessions_per_s'] / b_rows['sessions_per_s']:.2f}x | "
              f"{r['auth_p50_ms']:.1f} / {r['auth_p99_ms']:.1f} | {r['messages_per_s']:.1f} | "
              f"{r['messages_per_s'] / b_rows['messages_per_s']:.2f}x | "
              f"{r['message_p50_ms']:.1f} / {r['message_p99_ms']:.1f} |")
    for what, n in trips.items():
        print(f"Redis, {what}: {n:.1f}")
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    out = results / f"scale-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps({"rows": rows, "redis_commands": trips, "base": base.name,
                               "load": [load_before, load_after],
                               "raw": {t.name: t.runs for t in targets}}, indent=1))
    print(f"raw results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
