#!/usr/bin/env python3
"""Authentications per second through Postfix 3.7 with smtpgate as its SASL backend
(``smtpd_sasl_type = dovecot`` on smtpgate's auth listener) vs the same Postfix with
Dovecot 2.3, in one run, printed as a ratio (bench/README.md, "Front door").

One run starts everything itself in temp dirs, on loopback, and stops it at the end:
``smtpgate init`` (the default install: uvloop, ``workers = 0``, default Argon2id)
with a ``[[auth_listeners]]`` Dovecot-protocol unix socket, and the test suite's
private Postfix+Dovecot (tests/peers/postfix_dovecot.py) with two smtpd services
that differ only in ``smtpd_sasl_path``. The account is the same on both sides.

Two layers, the same client for both targets, the targets interleaved round by round:

* **through Postfix**: SMTP sessions, each EHLO, STARTTLS, EHLO, AUTH PLAIN (with an
  initial response), QUIT; ``--concurrency`` at a time;
* **auth socket**: the AUTH PLAIN request Postfix sends, straight on each auth
  server's socket (one connection per concurrent client, requests in sequence, as
  Postfix's smtpd processes do).

Warm cache: one user logs in over and over, after a warm-up that is not counted.

Usage::

    .venv/bin/python bench/frontdoor_bench.py            # about a minute
    .venv/bin/python bench/frontdoor_bench.py --quick    # smoke run, figures too noisy
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.dovecot_ldap import AuthClient
from tests.peers.postfix_dovecot import GOOD, SCRAM_PASSWORD, SCRAM_USER, PostfixDovecot, running

BIN = Path(sys.executable).parent
SMTPGATE = str(BIN / "smtpgate")
TARGETS = ("dovecot", "smtpgate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] * 1000 if lat else float("nan")
        return {"ok": self.ok, "failed": self.failed, "seconds": round(self.seconds, 3),
                "per_second": round(self.rate, 1), "p50_ms": round(p50, 2)}


# --- smtpgate ------------------------------------------------------------------------


class Smtpgate:
    """``smtpgate init`` plus a Dovecot-protocol auth listener on a unix socket."""

    def __init__(self, root: Path, sock: Path) -> None:
        self.root, self.sock = root, sock
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "",
                        "--admin", "", "--submission",
                        f"127.0.0.1:{self.port}", "--submissions", f"127.0.0.1:{free_port()}"],
                       check=True, capture_output=True, timeout=60)
        cfg = root / "smtpgate.toml"
        cfg.write_text(cfg.read_text() + (
            f'\n[[auth_listeners]]\nprotocol = "dovecot"\naddress = "unix:{sock}"\n'
            'mode = "0660"\ngroup = "postfix"\n'))
        subprocess.run([SMTPGATE, "user", "add", SCRAM_USER, "--password-stdin", "--config",
                        str(cfg)], input=SCRAM_PASSWORD + "\n", text=True, check=True,
                       capture_output=True, timeout=60)

    def start(self) -> None:
        log = open(self.root / "serve.log", "ab")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(self.root / "smtpgate.toml")],
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("smtpgate did not start:\n"
                                   + (self.root / "serve.log").read_text(errors="replace")[-3000:])
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.proc = None


# --- the clients ---------------------------------------------------------------------


async def _reply(reader: asyncio.StreamReader) -> str:
    """One whole SMTP reply (its last line)."""
    while True:
        line = (await reader.readline()).decode()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != "-":
            return line.rstrip("\r\n")


async def smtp_login(port: int, ctx: ssl.SSLContext) -> bool:
    """One session through Postfix: EHLO, STARTTLS, EHLO, AUTH PLAIN, QUIT."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        for cmd in ("EHLO bench.test", "STARTTLS"):
            writer.write(f"{cmd}\r\n".encode())
            await _reply(reader)
        await writer.start_tls(ctx, server_hostname="localhost")
        writer.write(b"EHLO bench.test\r\n")
        await _reply(reader)
        resp = base64.b64encode(f"\0{SCRAM_USER}\0{SCRAM_PASSWORD}".encode()).decode()
        writer.write(f"AUTH PLAIN {resp}\r\n".encode())
        ok = (await _reply(reader)).startswith("235 ")
        writer.write(b"QUIT\r\n")
        await _reply(reader)
        return ok
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            await writer.wait_closed()


async def measure(n: int, concurrency: int, one: Callable[[], Awaitable[bool]]) -> Tally:
    tally = Tally()
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            t0 = time.perf_counter()
            try:
                ok = await one()
            except (ConnectionError, OSError, ssl.SSLError):
                ok = False
            tally.latencies.append(time.perf_counter() - t0)
            if ok:
                tally.ok += 1
            else:
                tally.failed += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    tally.seconds = time.perf_counter() - t0
    return tally


async def socket_run(path: Path, n: int, concurrency: int) -> Tally:
    """``n`` AUTH PLAIN requests over ``concurrency`` auth-socket connections."""
    clients = [await AuthClient.connect(path) for _ in range(concurrency)]
    free: asyncio.Queue[AuthClient] = asyncio.Queue()
    for c in clients:
        free.put_nowait(c)

    async def one() -> bool:
        client = await free.get()
        try:
            return (await client.plain(SCRAM_USER, SCRAM_PASSWORD))[0]
        finally:
            free.put_nowait(client)

    try:
        return await measure(n, concurrency, one)
    finally:
        for c in clients:
            await c.close()


# --- one run ---------------------------------------------------------------------------


async def run(pd: PostfixDovecot, sockets: dict[str, Path], args: argparse.Namespace
              ) -> dict[str, dict[str, Tally]]:
    ctx = ssl.create_default_context(cafile=str(pd.ca))
    ctx.check_hostname = False  # Postfix's test certificate names "localhost"
    layers: dict[str, dict[str, Tally]] = {"postfix": {}, "socket": {}}
    for target in TARGETS:  # warm-up: first logins, process starts, caches
        port = pd.ports[target]
        await measure(args.concurrency, args.concurrency, partial(smtp_login, port, ctx))
        await socket_run(sockets[target], args.concurrency, args.concurrency)
    for _ in range(args.rounds):
        for target in TARGETS:
            port = pd.ports[target]
            t = await measure(args.sessions, args.concurrency, partial(smtp_login, port, ctx))
            _add(layers["postfix"], target, t)
            t = await socket_run(sockets[target], args.requests, args.concurrency)
            _add(layers["socket"], target, t)
    return layers


def _add(into: dict[str, Tally], target: str, t: Tally) -> None:
    acc = into.setdefault(target, Tally())
    acc.ok += t.ok
    acc.failed += t.failed
    acc.seconds += t.seconds
    acc.latencies += t.latencies


def report(layers: dict[str, dict[str, Tally]]) -> tuple[str, dict[str, Any]]:
    lines = [f"{'layer':<16}{'target':<10}{'auths/s':>10}{'p50 ms':>10}{'ok':>7}{'failed':>8}"]
    ratios: dict[str, float] = {}
    for layer, name in (("postfix", "through Postfix"), ("socket", "auth socket")):
        for target in TARGETS:
            s = layers[layer][target].summary()
            lines.append(f"{name:<16}{target:<10}{s['per_second']:>10}{s['p50_ms']:>10}"
                         f"{s['ok']:>7}{s['failed']:>8}")
        ref = layers[layer]["dovecot"].rate
        ratios[layer] = layers[layer]["smtpgate"].rate / ref if ref else float("nan")
        lines.append(f"{name}: smtpgate / Dovecot = {ratios[layer]:.2f}")
    return "\n".join(lines), {
        "layers": {k: {t: v.summary() for t, v in d.items()} for k, d in layers.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=200, help="SMTP sessions per target and round")
    p.add_argument("--requests", type=int, default=1000, help="auth-socket requests per round")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a smoke run: figures too noisy to quote")
    p.add_argument("--json", type=Path, help="write the results here (default: bench/results/)")
    args = p.parse_args()
    if args.quick:
        args.sessions, args.requests, args.rounds = 20, 100, 1
    if os.geteuid() != 0:
        sys.exit("frontdoor_bench: Postfix and Dovecot need root (they drop to their own users)")
    sockdir = Path(tempfile.mkdtemp(prefix="sgfb-", dir="/tmp"))
    sockdir.chmod(0o755)
    sg = Smtpgate(sockdir / "sg", sockdir / "auth")
    try:
        sg.start()
        services = {"dovecot": GOOD, "smtpgate": {**GOOD, "smtpd_sasl_path": str(sg.sock)}}
        with running(services) as pd:
            sockets = {"dovecot": pd.root / "dovecot" / "auth-postfix", "smtpgate": sg.sock}
            started = datetime.now(UTC)
            layers = asyncio.run(run(pd, sockets, args))
    finally:
        sg.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
    text, data = report(layers)
    print(text)
    data.update(started=started.isoformat(), args=vars(args) | {"json": str(args.json)},
                loadavg=os.getloadavg()[0])
    path = args.json or HERE / "results" / f"frontdoor-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
