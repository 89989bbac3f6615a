#!/usr/bin/env python3
"""Logins per second and login latency: smtpgate on each account backend (SQLite,
PostgreSQL, OpenLDAP) side by side with Dovecot's own LDAP passdb on the same slapd.

One run starts everything itself in a temp dir, on loopback, and stops it at the end:
slapd and PostgreSQL (the test fixtures tests/peers/slapd.py, tests/postgres_server.py),
two Dovecot 2.3 auth servers (bench/dovecot_ldap.py: one on slapd, one on the slow
directory), a delaying proxy in front of slapd (bench/delay_proxy.py) and one
``smtpgate init`` directory per backend. See bench/README.md ("Logins") for what is
measured and why.

Two layers are measured:

* **auth layer**: smtpgate's own login path (``LoginAttempts`` with the guard, the
  auth service and the PLAIN mechanism, as the SMTP session runs it) called in this
  process, against Dovecot's auth server driven through its auth socket as Postfix
  drives it. Neither includes SMTP or TLS.
* **SMTP sessions**: ``smtpgate serve`` per backend (default install: uvloop,
  ``workers = 0``), each login a session: EHLO, STARTTLS, EHLO, AUTH PLAIN, QUIT.

Warm cache: one user logs in over and over (after one login that is not counted).
Cold cache: each login is a different user that never logged in through that target.

Usage::

    .venv/bin/python bench/login_bench.py            # about 3 minutes
    .venv/bin/python bench/login_bench.py --quick    # smoke run, figures too noisy
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.dovecot_ldap import AuthClient, DovecotLdap
from tests.peers.slapd import PEOPLE, SERVICE_DN, SERVICE_PW, Slapd, person_ldif

BIN = Path(sys.executable).parent
SMTPGATE = str(BIN / "smtpgate")
BENCH_OU = f"ou=bench,{PEOPLE}"
DOMAIN = "bench.test"

Login = tuple[str, str]  # (user, password)
#: Where the measured logins come from; the probe's wrong password comes from
#: ``PROBE_SOURCE``, so the guard's penalty for it never delays a measured login.
SOURCE = "127.0.0.1"
PROBE_SOURCE = "127.0.0.9"
DOVECOT = "dovecot ldap"
DOVECOT_NOCACHE = "dovecot ldap, no cache"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loadavg() -> float:
    return os.getloadavg()[0]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


# --- the accounts ------------------------------------------------------------------


@dataclass
class Users:
    """``warm``: the one user of the warm runs. ``cold_auth`` and ``cold_smtp``: users
    for the cold runs of each layer, so a user is new to every target it meets."""

    warm: Login
    cold_auth: list[Login]
    cold_smtp: list[Login]

    def all(self) -> list[Login]:
        return [self.warm, *self.cold_auth, *self.cold_smtp]


def make_users(n: int) -> Users:
    def one(i: int) -> Login:
        return f"u{i}@{DOMAIN}", f"Bench-{secrets.token_urlsafe(12)}-{i}"

    return Users(one(0), [one(i) for i in range(1, n + 1)], [one(i) for i in range(n + 1, 2 * n + 1)])


def load_ldap_users(slapd: Slapd, users: Users) -> None:
    """Directory entries with ``{SSHA}`` passwords (what the slapd fixture uses)."""
    ldif = [f"dn: {BENCH_OU}\nobjectClass: organizationalUnit\nou: bench\n"]
    for user, pw in users.all():
        ldif.append(person_ldif(f"uid={user.split('@')[0]},{BENCH_OU}", user, pw))
    slapd.add("\n".join(ldif))


def load_store_users(cfg_paths: list[Path], users: Users) -> None:
    """The same accounts in each smtpgate-managed store, as ``user add`` makes them
    (Argon2id with the config's parameters, SCRAM keys). Each password is hashed once
    and the stored forms written to every store: same cost at login, half the set-up."""
    from smtpgate.admin import default_actor
    from smtpgate.auth.accounts import open_account_store
    from smtpgate.auth.credentials import derive, wanted_schemes
    from smtpgate.auth.passwords import PasswordHasher
    from smtpgate.config import load_config

    cfgs = [load_config(p) for p in cfg_paths]
    accounts = cfgs[0].accounts
    hasher = PasswordHasher(accounts)
    logins = users.all()
    with ThreadPoolExecutor(2) as pool:
        creds = list(pool.map(lambda lp: derive(lp[1], wanted_schemes(False), accounts, hasher),
                              logins))
    for cfg in cfgs:
        store = open_account_store(cfg)
        try:
            with store.transaction(default_actor()) as w:
                for (user, _), c in zip(logins, creds, strict=True):
                    w.create_account(user, c, cram_md5_enabled=False, allowed_mechanisms=None)
        finally:
            store.close()


# --- smtpgate set-ups ----------------------------------------------------------------


@dataclass
class SgDir:
    """One ``smtpgate init`` directory on one backend."""

    name: str
    root: Path
    port: int  # submission (STARTTLS)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.root / "smtpgate.toml"

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SMTPGATE, *args, "--config", str(self.config)], input=stdin,
                              text=True, capture_output=True, timeout=120, check=True)

    def start(self) -> None:
        log = open(self.root / "serve.log", "ab")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(self.config)],
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"smtpgate serve ({self.name}) did not start:\n"
                           + (self.root / "serve.log").read_text(errors="replace")[-3000:])

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


def init_dir(tmp: Path, name: str, accounts_table: str | None) -> SgDir:
    """``smtpgate init --no-demo`` (the default config), the limits a single-address
    load generator would trip lifted, and ``[accounts]`` pointed at the backend."""
    root = tmp / f"sg-{name}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
    subprocess.run([SMTPGATE, "init", "--dir", str(root), "--no-demo", "--metrics", "", "--admin", "",
                    "--submission", f"127.0.0.1:{port}",
                    "--submissions", f"127.0.0.1:{free_port()}"],
                   check=True, capture_output=True, env=env, timeout=60)
    sg = SgDir(name, root, port)
    text = sg.config.read_text()
    if accounts_table is not None:
        backend, table = accounts_table.split("\n", 1)
        assert "\n[accounts]\n" in text
        text = text.replace("\n[accounts]\n", f'\n[accounts]\nbackend = "{backend}"\n', 1)
        text += "\n" + table
    text += ("\n[limits]\nmessages_per_hour = 0\nrecipients_per_hour = 0\n"
             "max_connections_per_ip = 100\n")
    sg.config.write_text(text)
    return sg


def ldap_table(url: str, slapd: Slapd) -> str:
    # Plain ldap:// on loopback for smtpgate and Dovecot alike (the delaying proxy
    # must see the LDAP messages' timing, and TLS to loopback is not the question).
    return (f"ldap\n[accounts.ldap]\nurl = \"{url}\"\nbind_dn = \"{SERVICE_DN}\"\n"
            f"bind_password_file = \"{slapd.root / 'service.pw'}\"\n"
            f"base_dn = \"{PEOPLE}\"\naddress_attributes = [\"mail\"]\n")


# --- what is measured ---------------------------------------------------------------


@dataclass
class Measurement:
    target: str
    layer: str  # "auth" | "smtp"
    cache: str  # "warm" | "cold"
    directory: str  # "fast" | "slow"
    attempted: int = 0
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    load: float = 0.0
    capped: bool = False
    #: SMTP rows: the AUTH command's own latency.
    note: str = ""

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target, "layer": self.layer, "cache": self.cache,
            "directory": self.directory, "attempted": self.attempted, "ok": self.ok,
            "failed": self.failed, "errors": self.errors[:5], "seconds": round(self.seconds, 3),
            "logins_per_s": round(self.rate, 1), "p50_ms": round(percentile(self.latencies_ms, 0.5), 2),
            "p99_ms": round(percentile(self.latencies_ms, 0.99), 2), "load": round(self.load, 2),
            "capped": self.capped, "note": self.note,
        }


#: Opens one concurrency slot for logins from a source address: its (user, password)
#: -> ok function, and its close.
SlotFactory = Callable[[str], Awaitable[tuple[Callable[[str, str], Awaitable[bool]],
                                          Callable[[], Awaitable[None]]]]]


async def measure(m: Measurement, make_slot: SlotFactory, logins: list[Login],
                  concurrency: int, cap: float) -> Measurement:
    """Run ``logins`` through ``concurrency`` slots (each its own connection), each slot
    one login at a time, stopping at ``cap`` seconds."""
    m.load = loadavg()
    it: Iterator[Login] = iter(logins)
    start = time.perf_counter()
    deadline = start + cap

    async def slot() -> None:
        login, close = await make_slot(SOURCE)
        try:
            for user, pw in it:
                if time.perf_counter() > deadline:
                    m.capped = True
                    return
                m.attempted += 1
                t = time.perf_counter()
                try:
                    ok = await login(user, pw)
                except Exception as e:  # noqa: BLE001 - counted and shown, the run goes on
                    m.errors.append(f"{user}: {type(e).__name__}: {e}")
                    continue
                m.latencies_ms.append((time.perf_counter() - t) * 1000)
                if ok:
                    m.ok += 1
                else:
                    m.failed += 1
        finally:
            await close()

    await asyncio.gather(*(slot() for _ in range(concurrency)))
    m.seconds = time.perf_counter() - start
    return m


class SgInProcess:
    """smtpgate's login path in this process: the guard, the auth service and the
    PLAIN mechanism as the SMTP session drives them, minus SMTP and TLS."""

    def __init__(self, config: Path) -> None:
        from smtpgate.config import load_config

        self.cfg = load_config(config)
        self.login: Any = None
        self.n = 0

    async def open(self) -> None:
        from smtpgate.auth.login import LoginAttempts
        from smtpgate.auth.service import build_auth_service
        from smtpgate.server.app import build_guard

        sys.setswitchinterval(0.0005)  # as smtpgate serve sets it
        auth = build_auth_service(self.cfg)
        self.login = LoginAttempts(auth, build_guard(self.cfg),
                                   failure_floor=self.cfg.auth.failure_floor)

    async def close(self) -> None:
        await self.login.auth.close()
        if self.login.guard is not None:
            await self.login.guard.close()

    async def plain(self, user: str, password: str, source: str = SOURCE) -> bool:
        from smtpgate.auth.service import AuthContext
        from smtpgate.sasl.base import ChannelBinding
        from smtpgate.sasl.exchange import NeedCredentials, Outcome, ServerExchange
        from smtpgate.sasl.registry import create_server_mechanism

        self.n += 1
        attempt = self.login.begin(AuthContext("submission", source, 40000 + self.n % 20000,
                                               "TLSv1.3", f"bench{self.n}"))
        ex = ServerExchange("PLAIN", create_server_mechanism("PLAIN", channel_binding=ChannelBinding()))
        step = ex.start(f"\0{user}\0{password}".encode())
        while isinstance(step, NeedCredentials):
            answer = await attempt.resolve(step.query)
            assert answer is not None
            step = ex.answer(answer)
        assert isinstance(step, Outcome), step
        result = await attempt.finish(step)
        return bool(result.result == "success")

    def slots(self) -> SlotFactory:
        async def make(source: str) -> tuple[Callable[[str, str], Awaitable[bool]],
                                             Callable[[], Awaitable[None]]]:
            async def login(user: str, pw: str) -> bool:
                return await self.plain(user, pw, source)

            async def nothing() -> None:
                return None
            return login, nothing
        return make


def dovecot_slots(path: Path) -> SlotFactory:
    """One auth-socket connection per slot, as one Postfix smtpd process keeps one."""
    async def make(source: str) -> tuple[Callable[[str, str], Awaitable[bool]],
                                         Callable[[], Awaitable[None]]]:
        client = await AuthClient.connect(path)

        async def login(user: str, pw: str) -> bool:
            return (await client.plain(user, pw, source))[0]
        return login, client.close
    return make


def smtp_slots(port: int, cafile: Path, auth_ms: list[float]) -> SlotFactory:
    """One SMTP session per login: EHLO, STARTTLS (certificate verified), EHLO,
    AUTH PLAIN, QUIT. ``auth_ms`` gets the AUTH command's own latency."""
    ctx = ssl.create_default_context(cafile=str(cafile))

    async def make(source: str) -> tuple[Callable[[str, str], Awaitable[bool]],
                                         Callable[[], Awaitable[None]]]:
        async def session(user: str, pw: str) -> bool:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=(source, 0))

            async def reply() -> str:
                while True:
                    line = (await reader.readline()).decode()
                    if not line:
                        raise ConnectionError("connection closed")
                    if line[3:4] != "-":
                        return line

            async def cmd(text: str) -> str:
                writer.write(text.encode() + b"\r\n")
                return await reply()

            try:
                if not (await reply()).startswith("220"):
                    return False
                await cmd(f"EHLO client.{DOMAIN}")
                if not (await cmd("STARTTLS")).startswith("220"):
                    return False
                await writer.start_tls(ctx, server_hostname="localhost")
                await cmd(f"EHLO client.{DOMAIN}")
                t = time.perf_counter()
                b64 = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
                answer = await cmd(f"AUTH PLAIN {b64}")
                auth_ms.append((time.perf_counter() - t) * 1000)
                await cmd("QUIT")
                return answer.startswith("235")
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                    await writer.wait_closed()

        async def nothing() -> None:
            return None
        return session, nothing
    return make


# --- the run ------------------------------------------------------------------------


@dataclass
class Env:
    tmp: Path
    slapd: Slapd
    proxy: subprocess.Popen[bytes]
    proxy_port: int
    pg: Any
    dirs: dict[str, SgDir]
    dovecot: dict[str, DovecotLdap]
    users: Users


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[Env]:
    from tests.postgres_server import PostgresCluster, _bindir

    bindir = _bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (make debs)")
    tmp = Path(tempfile.mkdtemp(prefix="sglb-", dir="/tmp"))
    tmp.chmod(0o755)
    cleanup: list[Callable[[], object]] = []
    try:
        t0 = time.perf_counter()
        slapd = Slapd(tmp / "slapd")
        slapd.start()
        cleanup.append(slapd.close)
        proxy_port = free_port()
        proxy = subprocess.Popen(
            [sys.executable, str(HERE / "delay_proxy.py"), "--listen", f"127.0.0.1:{proxy_port}",
             "--upstream", f"127.0.0.1:{slapd.port}", "--delay", str(args.delay_ms / 1000)],
            stdout=subprocess.PIPE)

        def stop_proxy() -> None:
            proxy.terminate()
            proxy.wait(10)
        cleanup.append(stop_proxy)
        assert proxy.stdout is not None
        if proxy.stdout.readline().strip() != b"ready":
            raise RuntimeError("the delaying proxy did not start")
        pg = PostgresCluster(bindir)
        cleanup.append(pg.destroy)
        users = make_users(args.cold)
        load_ldap_users(slapd, users)
        dirs = {
            "sqlite": init_dir(tmp, "sqlite", None),
            "postgresql": init_dir(tmp, "postgresql", None),
            "ldap": init_dir(tmp, "ldap", ldap_table(slapd.url, slapd)),
            "ldap-slow": init_dir(tmp, "ldap-slow", ldap_table(f"ldap://127.0.0.1:{proxy_port}", slapd)),
        }
        pgdir = dirs["postgresql"]
        dsn = pg.create_database()
        pg.write_password_file(pgdir.root)
        text = pgdir.config.read_text().replace(
            "\n[accounts]\n", '\n[accounts]\nbackend = "postgresql"\n', 1)
        pgdir.config.write_text(text + f'\n[accounts.postgresql]\ndsn = "{dsn}"\n'
                                'password_file = "pg.password"\n')
        pgdir.cli("db", "migrate")
        for sg in dirs.values():
            cleanup.append(sg.stop)
        load_store_users([dirs["sqlite"].config, pgdir.config], users)
        dovecot = {}
        # Dovecot's own default is auth_cache_size = 0 (no cache): measured too.
        for name, port, cache in (("ldap", slapd.port, "10M"), ("ldap-nocache", slapd.port, "0"),
                                  ("ldap-slow", proxy_port, "10M")):
            dc = DovecotLdap(tmp / f"dc-{name}", uri=f"ldap://127.0.0.1:{port}", cache_size=cache,
                             bind_dn=SERVICE_DN, bind_password=SERVICE_PW, base=PEOPLE)
            dc.start()
            cleanup.append(dc.stop)
            dovecot[name] = dc
        print(f"set-up: {time.perf_counter() - t0:.1f} s ({len(users.all())} users per backend)",
              file=sys.stderr)
        yield Env(tmp, slapd, proxy, proxy_port, pg, dirs, dovecot, users)
    finally:
        for fn in reversed(cleanup):
            with contextlib.suppress(Exception):
                fn()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


async def run_auth_layer(env: Env, args: argparse.Namespace, out: list[Measurement]) -> None:
    """In-process smtpgate per backend vs Dovecot's auth socket, warm then cold; then
    both again with the directory behind the delaying proxy."""
    c, cap = args.concurrency, args.cap
    warm = [env.users.warm] * args.count
    cold = env.users.cold_auth
    for directory, names in (("fast", ("sqlite", "postgresql", "ldap")), ("slow", ("ldap-slow",))):
        sgs = {n: SgInProcess(env.dirs[n].config) for n in names}
        for sg in sgs.values():
            await sg.open()
        dc = env.dovecot["ldap" if directory == "fast" else "ldap-slow"]
        targets: list[tuple[str, SlotFactory]] = [
            *((f"smtpgate {n.removesuffix('-slow')}", sg.slots()) for n, sg in sgs.items()),
            (DOVECOT, dovecot_slots(dc.socket)),
        ]
        if directory == "fast":
            targets.append((DOVECOT_NOCACHE, dovecot_slots(env.dovecot["ldap-nocache"].socket)))
        try:
            for name, slots in targets:
                await probe(name, slots, env.users.warm)
            for cache, logins in (("warm", warm), ("cold", cold)):
                for name, slots in targets:
                    m = await measure(Measurement(name, "auth", cache, directory), slots, logins,
                                      c, cap)
                    out.append(m)
                    report(m)
        finally:
            for sg in sgs.values():
                await sg.close()


async def probe(name: str, make_slot: SlotFactory, user: Login) -> None:
    """Before any figure: the right password logs in and a wrong one does not (this
    is also the warm user's first login, which no warm measurement counts)."""
    login, close = await make_slot(SOURCE)
    try:
        right = await login(*user)
    finally:
        await close()
    login, close = await make_slot(PROBE_SOURCE)
    try:
        wrong = await login(user[0], user[1] + "-wrong")
    finally:
        await close()
    if not right or wrong:
        raise RuntimeError(f"{name}: right password {'OK' if right else 'refused'}, "
                           f"wrong password {'OK' if wrong else 'refused'}")


async def run_smtp_layer(env: Env, args: argparse.Namespace, out: list[Measurement]) -> None:
    """``smtpgate serve`` per backend, one at a time, a session per login."""
    for name in ("sqlite", "postgresql", "ldap"):
        sg = env.dirs[name]
        sg.start()
        try:
            cafile = sg.root / "tls" / "cert.pem"
            await probe(f"smtpgate serve {name}", smtp_slots(sg.port, cafile, []), env.users.warm)
            for cache, logins in (("warm", [env.users.warm] * args.count),
                                  ("cold", env.users.cold_smtp)):
                auth_ms: list[float] = []
                m = await measure(Measurement(f"smtpgate {name}", "smtp", cache, "fast"),
                                  smtp_slots(sg.port, cafile, auth_ms), logins,
                                  args.concurrency, args.cap)
                m.note = (f"AUTH alone p50 {percentile(auth_ms, 0.5):.1f}, "
                          f"p99 {percentile(auth_ms, 0.99):.1f} ms")
                out.append(m)
                report(m)
        finally:
            sg.stop()


def report(m: Measurement) -> None:
    s = m.summary()
    flag = " CAPPED" if m.capped else ""
    bad = f" failed={m.failed} errors={len(m.errors)}" if m.failed or m.errors else ""
    print(f"  {m.layer:4} {m.directory:4} {m.cache:4} {m.target:20} {s['ok']:4}/{s['attempted']:<4}"
          f" {s['logins_per_s']:8.1f}/s  p50 {s['p50_ms']:8.2f}  p99 {s['p99_ms']:8.2f} ms"
          f"  load {s['load']:.2f}{flag}{bad} {m.note}", file=sys.stderr, flush=True)


def table(results: list[Measurement]) -> str:
    """Markdown: every measurement, and for smtpgate's auth-layer rows the ratio of its
    logins/s to Dovecot's LDAP passdb in the same conditions (with and without the
    auth cache)."""
    head = ("| layer | directory | cache | target | logins/s | p50 ms | p99 ms | sg/dovecot "
            "| sg/dovecot no cache | note |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]

    def ratio(m: Measurement, ref_name: str) -> str:
        ref = next((r for r in results if r.target == ref_name and r.cache == m.cache
                    and r.directory == m.directory), None)
        if ref is None or not ref.rate or m.layer != "auth" or not m.target.startswith("smtpgate"):
            return "-"
        r = m.rate / ref.rate
        return f"**{r:.3f}**" if r < 0.1 else f"**{r:.2f}**"

    for m in results:
        s = m.summary()
        lines.append(f"| {m.layer} | {m.directory} | {m.cache} | {m.target} | {s['logins_per_s']} "
                     f"| {s['p50_ms']} | {s['p99_ms']} | {ratio(m, DOVECOT)} "
                     f"| {ratio(m, DOVECOT_NOCACHE)} "
                     f"| {m.note}{' capped' if m.capped else ''}{' ERRORS' if m.errors else ''} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=200, help="logins per warm measurement")
    p.add_argument("--cold", type=int, default=80,
                   help="logins per cold measurement (= users per layer)")
    p.add_argument("--concurrency", type=int, default=10, help="logins in flight")
    p.add_argument("--cap", type=float, default=30.0, help="seconds per measurement, at most")
    p.add_argument("--delay-ms", type=float, default=200.0, help="the slow directory's delay")
    p.add_argument("--quick", action="store_true", help="40 warm, 10 cold logins")
    p.add_argument("--no-smtp", action="store_true", help="the auth layer only")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = p.parse_args()
    if args.quick:
        args.count, args.cold = 40, 10
    if os.geteuid() != 0:
        raise SystemExit("run as root: Dovecot and PostgreSQL drop to their own users")
    started = datetime.now(UTC)
    load_start = loadavg()
    results: list[Measurement] = []

    async def go(env: Env) -> None:
        await run_auth_layer(env, args, results)
        if not args.no_smtp:
            await run_smtp_layer(env, args, results)

    t0 = time.perf_counter()
    with environment(args) as env:
        try:
            import uvloop

            uvloop.run(go(env))
        except ImportError:
            asyncio.run(go(env))
    total = time.perf_counter() - t0
    print(table(results))
    print(f"\nload average {load_start:.2f} at the start, {loadavg():.2f} at the end; "
          f"{total:.0f} s in all; nproc {os.cpu_count()}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    path = args.results_dir / f"login-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps({
        "started": started.isoformat(), "git": rev, "args": {k: str(v) for k, v in vars(args).items()},
        "load_start": load_start, "load_end": loadavg(), "seconds": total, "nproc": os.cpu_count(),
        "results": [m.summary() for m in results],
    }, indent=1))
    print(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
