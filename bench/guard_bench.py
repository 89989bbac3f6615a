#!/usr/bin/env python3
"""Legitimate logins per second, and their p99 latency, while another client floods
wrong passwords: what the guard buys.

Three scenarios, each on a fresh throw-away server (``smtpgate init --no-demo`` in a
temp dir, free loopback ports, the default Argon2id parameters and guard settings):

* ``baseline``  - the legitimate client alone;
* ``guard on``  - plus a flood of wrong passwords for the *same* account;
* ``guard off`` - the same flood with ``[guard] enabled = false``.

The legitimate client logs in from 127.0.0.3, an address the account has used
before (a warm-up login makes it known); it loops: connect (implicit TLS), EHLO,
AUTH PLAIN, QUIT, with ``--legit`` threads. The attacker connects from 127.0.0.2
with ``--flood`` connections in parallel, each sending AUTH PLAIN with a new wrong
password as soon as the previous one is answered. Everything stays on loopback
and every scenario is bounded by ``--seconds``.

Usage::

    .venv/bin/python bench/guard_bench.py                  # 3 x 15 s
    .venv/bin/python bench/guard_bench.py --seconds 5      # quick
    .venv/bin/python bench/guard_bench.py --json           # machine-readable
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
SMTPGATE = str(BIN / "smtpgate")
USER = "owner@bench.test"
LEGIT_ADDRESS = "127.0.0.3"
ATTACK_ADDRESS = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.root / "tls" / "cert.pem"))

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def start_server(root: Path, *, guard: bool, password: str) -> Server:
    sub, subs = free_port(), free_port()
    env = {**os.environ}
    env.pop("SMTPGATE_CONFIG", None)
    subprocess.run(
        [SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "", "--admin", "",
         "--submission", f"127.0.0.1:{sub}", "--submissions", f"127.0.0.1:{subs}"],
        check=True, capture_output=True, env=env, timeout=60,
    )
    cfg = root / "smtpgate.toml"
    cfg.write_text(cfg.read_text() + f"\n[guard]\nenabled = {'true' if guard else 'false'}\n")
    subprocess.run([SMTPGATE, "user", "add", USER, "--password-stdin", "--config", str(cfg)],
                   input=password + "\n", text=True, check=True, capture_output=True, timeout=60)
    srv = Server(root, subs)
    with open(root / "server.log", "ab") as log:
        srv.proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(cfg)], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while True:  # ready when a TLS greeting arrives
        try:
            with socket.create_connection(("127.0.0.1", subs), timeout=2) as s, \
                    srv.ctx().wrap_socket(s, server_hostname="localhost") as t:
                if t.recv(100).startswith(b"220"):
                    return srv
        except OSError:
            pass
        if time.monotonic() > deadline or srv.proc.poll() is not None:
            raise SystemExit("server did not start:\n" + (root / "server.log").read_text())
        time.sleep(0.1)


class Session:
    def __init__(self, srv: Server, source: str) -> None:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=30, source_address=(source, 0))
        self.sock = srv.ctx().wrap_socket(raw, server_hostname="localhost")
        self.buf = b""
        self.reply()
        self.cmd("EHLO bench.test")

    def reply(self) -> str:
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            if line[3:4] != b"-":
                return line.decode()

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def auth(self, user: str, password: str) -> str:
        return self.cmd("AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode())

    def close(self) -> None:
        try:
            self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self.sock.close()


@dataclass
class Result:
    scenario: str
    seconds: float
    logins: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    attempts: int = 0
    attack_replies: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies)
        p = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1)) if lat else (lambda q: None)
        return {
            "scenario": self.scenario,
            "legit_logins_per_s": round(self.logins / self.seconds, 1),
            "legit_p50_ms": p(0.50),
            "legit_p99_ms": p(0.99),
            "legit_errors": self.errors,
            "attack_attempts_per_s": round(self.attempts / self.seconds, 1),
            "attack_replies": dict(sorted(self.attack_replies.items())),
        }


def run_scenario(name: str, *, guard: bool, flood: int, legit: int, seconds: float) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="guard-bench-"))
    password = "bench " + secrets.token_urlsafe(12)
    srv = start_server(tmp / "sg", guard=guard, password=password)
    result = Result(name, seconds)
    lock = threading.Lock()
    try:
        s = Session(srv, LEGIT_ADDRESS)  # warm-up: the address becomes known, the cache warm
        assert s.auth(USER, password).startswith("235")
        s.close()
        stop = threading.Event()

        def legit_loop() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    sess = Session(srv, LEGIT_ADDRESS)
                    ok = sess.auth(USER, password).startswith("235")
                    sess.close()
                except (OSError, EOFError):
                    ok = False
                took = time.monotonic() - t0
                with lock:
                    if ok:
                        result.logins += 1
                        result.latencies.append(took)
                    else:
                        result.errors += 1

        def attack_loop() -> None:
            sess: Session | None = None
            while not stop.is_set():
                try:
                    if sess is None:
                        sess = Session(srv, ATTACK_ADDRESS)
                    reply = sess.auth(USER, secrets.token_hex(6))
                except (OSError, EOFError):
                    sess = None
                    reply = "closed"
                    time.sleep(0.05)
                code = reply[:9]
                with lock:
                    result.attempts += 1
                    result.attack_replies[code] = result.attack_replies.get(code, 0) + 1
                if reply.startswith("421") and sess is not None:
                    sess.sock.close()
                    sess = None
            if sess is not None:
                sess.sock.close()

        threads = [threading.Thread(target=attack_loop, daemon=True) for _ in range(flood)]
        threads += [threading.Thread(target=legit_loop, daemon=True) for _ in range(legit)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each scenario")
    ap.add_argument("--flood", type=int, default=10, help="attacker connections in parallel")
    ap.add_argument("--legit", type=int, default=2, help="legitimate client threads")
    ap.add_argument("--json", action="store_true", help="print one JSON object per scenario")
    args = ap.parse_args()
    scenarios = [("baseline", True, 0), ("flood, guard on", True, args.flood),
                 ("flood, guard off", False, args.flood)]
    rows = []
    for name, guard, flood in scenarios:
        r = run_scenario(name, guard=guard, flood=flood, legit=args.legit, seconds=args.seconds)
        rows.append(r.summary())
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print(f"nproc={os.cpu_count()} load={os.getloadavg()[0]:.2f} seconds={args.seconds} "
              f"flood={args.flood} legit={args.legit}")
        print(f"{'scenario':<18} {'logins/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
              f"{'attack/s':>9}  attacker replies")
        for x in rows:
            print(f"{x['scenario']:<18} {x['legit_logins_per_s']:>9} {x['legit_p50_ms']!s:>8} "
                  f"{x['legit_p99_ms']!s:>8} {x['legit_errors']:>7} {x['attack_attempts_per_s']:>9}  "
                  f"{x['attack_replies']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
