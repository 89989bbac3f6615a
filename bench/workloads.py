"""Workloads C-TLS, D, E and F of issue 13 for bench/run.py (bench/README.md).

Each is an asyncio client in the harness process (loopback only, bounded by counts and
deadlines) that returns a JSON-able dict; run.py starts the servers, interleaves the
targets and reports the figures. None of these asserts a timing.

* C-TLS: bare TLS handshakes per second against ``tls_ref.py`` (same certificate);
* D: N idle authenticated sessions held open; RSS of the server's processes and the
  220 latency of new clients while they are held;
* E: one account's logins (connect to 235) alone, then while 10 connections from
  another loopback address send wrong passwords;
* F: SCRAM-SHA-256 server-side verifications per CPU-second: smtpgate's mechanism
  in-process with stored keys, Dovecot through its auth socket (CPU of its processes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SmtpFailed(Exception):
    """The server answered something other than what a login expects."""


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def lat_summary(ms: list[float]) -> dict[str, Any]:
    return {"n": len(ms), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99),
            "max_ms": round(max(ms), 2) if ms else None}


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise SmtpFailed("connection closed")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            break
    return int(lines[-1][:3]), b"".join(lines)


async def _cmd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes,
               expect: int) -> bytes:
    writer.write(line + b"\r\n")
    code, text = await _reply(reader)
    if code != expect:
        raise SmtpFailed(f"{line.split()[0]!r} -> {text[:80]!r}")
    return text


@dataclass
class Login:
    """An SMTP session taken to 235 (EHLO, STARTTLS, EHLO, AUTH PLAIN) and kept open."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    total_ms: float
    auth_ms: float

    def close(self) -> None:
        self.writer.close()


async def login(port: int, ctx: ssl.SSLContext, user: str, password: str,
                local_addr: str | None = None) -> Login:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(local_addr, 0) if local_addr else None)
    try:
        code, text = await _reply(reader)
        if code != 220:
            raise SmtpFailed(f"banner {text[:80]!r}")
        await _cmd(reader, writer, b"EHLO bench.test", 250)
        await _cmd(reader, writer, b"STARTTLS", 220)
        await writer.start_tls(ctx, server_hostname="localhost")
        await _cmd(reader, writer, b"EHLO bench.test", 250)
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        t1 = time.perf_counter()
        await _cmd(reader, writer, b"AUTH PLAIN " + token, 235)
        t2 = time.perf_counter()
    except BaseException:
        writer.close()
        raise
    return Login(reader, writer, (t2 - t0) * 1000, (t2 - t1) * 1000)


async def banner_ms(port: int, timeout: float) -> float | None:
    """Connect and wait for the 220: milliseconds, or None on timeout or refusal."""
    t0 = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            code, _ = await _reply(reader)
        return (time.perf_counter() - t0) * 1000 if code == 220 else None
    except (TimeoutError, OSError, SmtpFailed):
        return None
    finally:
        if writer is not None:
            writer.close()


def client_ctx(cafile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


# --------------------------------------------------------------------------- C-TLS


async def bare_tls(port: int, cafile: Path, count: int, concurrency: int) -> dict[str, Any]:
    """``count`` TLS handshakes (connect, handshake, close), ``concurrency`` at a time."""
    ctx = client_ctx(cafile)
    todo = iter(range(count))
    ok, errors, lat = 0, 0, []

    async def worker() -> None:
        nonlocal ok, errors
        for _ in todo:
            t0 = time.perf_counter()
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                     server_hostname="localhost")
                lat.append((time.perf_counter() - t0) * 1000)
                ok += 1
                w.close()
                with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
                    await w.wait_closed()
            except (OSError, ssl.SSLError):
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    return {"handshakes_ok": ok, "errors": errors, "seconds": round(seconds, 3),
            "handshakes_per_s": round(ok / seconds, 1) if seconds else None,
            "handshake": lat_summary(lat)}


# --------------------------------------------------------------------------- D


def pss_of_tree(root: int) -> int:
    """Summed PSS in KiB of ``root`` and its descendants: pages shared after fork are
    split between the processes that share them, so this is what they cost together
    (summed RSS counts every shared page once per process)."""
    kib = 0
    for pid in tree_of(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    kib += int(line.split()[1])
    return kib


def tree_of(root: int) -> set[int]:
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in tree} - tree
        grew = bool(more)
        tree |= more
    return tree


def rss_of_tree(root: int) -> tuple[int, int]:
    """(processes, summed VmRSS in KiB) of ``root`` and all its descendants."""
    tree = tree_of(root)
    n, kib = 0, 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
                    n += 1
        except (OSError, ValueError):
            continue
    return n, kib


async def idle_sessions(port: int, cafile: Path, user: str, password: str, n: int,
                        root_pid: int | None, probes: int = 50, setup_concurrency: int = 100,
                        setup_deadline: float = 60.0, probe_timeout: float = 2.0
                        ) -> dict[str, Any]:
    """Hold ``n`` authenticated sessions, then time ``probes`` new clients' 220."""
    ctx = client_ctx(cafile)
    result: dict[str, Any] = {"requested": n}
    if root_pid is not None:
        result["rss_before_kib"] = rss_of_tree(root_pid)[1]
        result["pss_before_kib"] = pss_of_tree(root_pid)
    held: list[Login] = []
    failures: dict[str, int] = {}
    sem = asyncio.Semaphore(setup_concurrency)

    async def one() -> None:
        async with sem:
            try:
                async with asyncio.timeout(10):
                    held.append(await login(port, ctx, user, password))
            except (TimeoutError, OSError, SmtpFailed, ssl.SSLError) as e:
                key = type(e).__name__ + (f": {str(e)[:60]}" if isinstance(e, SmtpFailed) else "")
                failures[key] = failures.get(key, 0) + 1

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    _done, pending = await asyncio.wait(tasks, timeout=setup_deadline)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    result["setup_seconds"] = round(time.perf_counter() - t0, 1)
    result["authenticated"] = len(held)
    result["not_started_or_cut_at_deadline"] = len(pending)
    result["failures"] = failures
    try:
        await asyncio.sleep(1.0)  # let the server settle after the burst
        if root_pid is not None:
            procs, kib = rss_of_tree(root_pid)
            result["processes"] = procs
            result["rss_held_kib"] = kib
            result["rss_held_mb"] = round(kib / 1024, 1)
            pss = pss_of_tree(root_pid)
            result["pss_held_mb"] = round(pss / 1024, 1)
            if held:
                result["rss_per_1000_sessions_mb"] = round(
                    (kib - result["rss_before_kib"]) / 1024 / len(held) * 1000, 1)
                result["pss_per_1000_sessions_mb"] = round(
                    (pss - result["pss_before_kib"]) / 1024 / len(held) * 1000, 1)
        lat: list[float] = []
        timeouts = 0
        for _ in range(probes):
            ms = await banner_ms(port, probe_timeout)
            if ms is None:
                timeouts += 1
                if timeouts >= 5 and not lat:
                    break  # a server that greets nobody new: 5 are enough to say so
            else:
                lat.append(ms)
        result["new_client_220"] = lat_summary(lat)
        result["new_client_220_timeouts"] = timeouts
        result["new_client_220_tried"] = len(lat) + timeouts
        result["probe_timeout_s"] = probe_timeout
        # Still alive? A NOOP on a sample of the held sessions.
        sample = held[:: max(1, len(held) // 20)]
        alive = 0
        for s in sample:
            try:
                async with asyncio.timeout(5):
                    await _cmd(s.reader, s.writer, b"NOOP", 250)
                alive += 1
            except (TimeoutError, OSError, SmtpFailed):
                pass
        result["noop_sample_alive"] = f"{alive}/{len(sample)}"
    finally:
        for s in held:
            s.close()
        await asyncio.sleep(0.5)
    return result


# --------------------------------------------------------------------------- E


async def login_latencies(port: int, ctx: ssl.SSLContext, user: str, password: str,
                          count: int) -> tuple[list[float], list[float], dict[str, int]]:
    total: list[float] = []
    auth: list[float] = []
    failures: dict[str, int] = {}
    for _ in range(count):
        try:
            async with asyncio.timeout(30):
                s = await login(port, ctx, user, password)
            total.append(s.total_ms)
            auth.append(s.auth_ms)
            s.writer.write(b"QUIT\r\n")
            s.close()
        except (TimeoutError, OSError, SmtpFailed, ssl.SSLError) as e:
            key = type(e).__name__ + (f": {str(e)[:60]}" if isinstance(e, SmtpFailed) else "")
            failures[key] = failures.get(key, 0) + 1
    return total, auth, failures


async def wrong_password_flood(port: int, ctx: ssl.SSLContext, user: str, stop: asyncio.Event,
                               source: str, counts: dict[str, int],
                               live: set[asyncio.StreamWriter]) -> None:
    """One flooding connection: STARTTLS, then AUTH PLAIN with wrong passwords until the
    server closes it; reconnect; until ``stop``."""
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=(source, 0))
            live.add(writer)
            await _reply(reader)
            await _cmd(reader, writer, b"EHLO flood.test", 250)
            await _cmd(reader, writer, b"STARTTLS", 220)
            await writer.start_tls(ctx, server_hostname="localhost")
            await _cmd(reader, writer, b"EHLO flood.test", 250)
            counts["sessions"] += 1
            while not stop.is_set():
                token = base64.b64encode(f"\0{user}\0wrong-{secrets.token_hex(4)}".encode())
                writer.write(b"AUTH PLAIN " + token + b"\r\n")
                code, _ = await _reply(reader)
                key = f"auth_{code}"
                counts[key] = counts.get(key, 0) + 1
                if code == 235:
                    raise SmtpFailed("a wrong password was accepted")
                if code == 421:
                    break
        except (OSError, SmtpFailed, ssl.SSLError, ValueError):
            counts["closed_or_failed"] += 1
            await asyncio.sleep(0.01)
        finally:
            if writer is not None:
                live.discard(writer)
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
                    await writer.wait_closed()


async def login_under_flood(port: int, cafile: Path, user: str, password: str, count: int,
                            flooders: int = 10, source: str = "127.0.0.9") -> dict[str, Any]:
    ctx = client_ctx(cafile)
    await login_latencies(port, ctx, user, password, 3)  # warm the cache, not counted
    quiet_total, quiet_auth, quiet_fail = await login_latencies(port, ctx, user, password,
                                                                count)
    stop = asyncio.Event()
    counts = {"sessions": 0, "closed_or_failed": 0}
    live: set[asyncio.StreamWriter] = set()
    flood = [asyncio.create_task(wrong_password_flood(port, ctx, user, stop, source, counts,
                                                      live))
             for _ in range(flooders)]
    await asyncio.sleep(1.0)  # let the flood start
    try:
        busy_total, busy_auth, busy_fail = await login_latencies(port, ctx, user, password,
                                                                 count)
    finally:
        stop.set()
        # Abort the flooders' connections so each loop ends by itself and closes its
        # socket (a task cancelled inside start_tls would leak it).
        for w in list(live):
            w.transport.abort()
        _done, pending = await asyncio.wait(flood, timeout=15)
        for t in pending:
            t.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
    qp99, bp99 = pct(quiet_total, 0.99), pct(busy_total, 0.99)
    return {
        "unloaded_login": lat_summary(quiet_total), "unloaded_auth": lat_summary(quiet_auth),
        "flooded_login": lat_summary(busy_total), "flooded_auth": lat_summary(busy_auth),
        "unloaded_failures": quiet_fail, "flooded_failures": busy_fail,
        "flood": counts, "flooders": flooders, "flood_source": source,
        "p99_ratio_flooded_unloaded": round(bp99 / qp99, 2) if qp99 and bp99 else None,
    }


# --------------------------------------------------------------------------- F


@dataclass
class _ScramClientKeys:
    """A SCRAM client with its salted password precomputed: the client's per-exchange
    cost is two HMACs and a hash, so the measurement is the server's."""

    user: str
    salted: bytes
    client_key: bytes = field(init=False)
    stored_key: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.client_key = hmac.new(self.salted, b"Client Key", "sha256").digest()
        self.stored_key = hashlib.sha256(self.client_key).digest()

    def first(self) -> tuple[str, str]:
        nonce = secrets.token_urlsafe(18)
        bare = f"n={self.user},r={nonce}"
        return bare, "n,," + bare

    def final(self, bare: str, server_first: str) -> str:
        without = f"c=biws,r={dict(a.split('=', 1) for a in server_first.split(','))['r']}"
        auth_message = f"{bare},{server_first},{without}".encode()
        sig = hmac.new(self.stored_key, auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(self.client_key, sig, strict=True))
        return f"{without},p={base64.b64encode(proof).decode()}"


def scram_inprocess(count: int, iterations: int = 4096) -> dict[str, Any]:
    """smtpgate's ScramSha256Server, stored keys answered at once, ``count`` exchanges;
    CPU seconds of the server's calls only (one thread, so per core)."""
    from smtpgate.sasl.base import (
        Challenge,
        LookupScram,
        NeedCredentials,
        ProofArrived,
        ScramCredentials,
        Success,
        Verdict,
    )
    from smtpgate.sasl.scram import ScramSha256Server

    salt = secrets.token_bytes(16)
    user = "scram@test.local"
    salted = hashlib.pbkdf2_hmac("sha256", b"Sc-Only-Pass1", salt, iterations)
    client = _ScramClientKeys(user, salted)
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    creds = ScramCredentials(salt=salt, iterations=iterations, stored_key=client.stored_key,
                             server_key=server_key)
    ok = 0
    cpu = 0.0
    wall0 = time.perf_counter()
    for _ in range(count):
        bare, first = client.first()
        c0 = time.process_time()
        srv = ScramSha256Server()
        step = srv.start(first.encode())
        assert isinstance(step, NeedCredentials) and isinstance(step.query, LookupScram)
        step = srv.answer(creds)
        cpu += time.process_time() - c0
        assert isinstance(step, Challenge)
        final = client.final(bare, step.data.decode())
        c0 = time.process_time()
        step = srv.step(final.encode())
        assert isinstance(step, NeedCredentials) and isinstance(step.query, ProofArrived)
        step = srv.answer(Verdict(ok=True))  # the guard's go-ahead for the proof
        assert isinstance(step, NeedCredentials)
        step = srv.answer(Verdict(ok=True, identity=user))
        cpu += time.process_time() - c0
        if isinstance(step, Success):
            ok += 1
    wall = time.perf_counter() - wall0
    return {"verifications_ok": ok, "server_cpu_seconds": round(cpu, 4),
            "per_cpu_second": round(ok / cpu, 0) if cpu else None,
            "wall_seconds_incl_client": round(wall, 3)}


def _cpu_of_children(parent: int) -> float:
    """utime + stime (seconds) of ``parent``'s direct children (Dovecot's auth processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(f[1]) == parent:
                total += int(f[11]) + int(f[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / tick


async def scram_dovecot(socket_path: Path, master_pid: int, user: str, password: str,
                        salt_iterations: tuple[bytes, int] | None, count: int,
                        concurrency: int = 4) -> dict[str, Any]:
    """``count`` SCRAM-SHA-256 exchanges on Dovecot's auth socket, ``concurrency``
    connections; Dovecot's CPU seconds from /proc (its master's children)."""
    from bench.dovecot_ldap import AuthClient

    salted_cache: dict[tuple[bytes, int], _ScramClientKeys] = {}
    ok, failed = 0, 0
    todo = iter(range(count))

    async def exchange(c: AuthClient, rid: int) -> bool:
        # Uses the client's private stream: the auth protocol is line-based.
        r, w = c._reader, c._writer
        nonce = secrets.token_urlsafe(18)
        bare = f"n={user},r={nonce}"
        w.write(f"AUTH\t{rid}\tSCRAM-SHA-256\tservice=smtp\tnologin\tlip=127.0.0.1\t"
                f"rip=127.0.0.1\tsecured\tresp={base64.b64encode(('n,,' + bare).encode()).decode()}"
                "\n".encode())
        f = (await r.readline()).decode().rstrip("\n").split("\t")
        if f[0] != "CONT":
            return False
        server_first = base64.b64decode(f[2]).decode()
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        key = (base64.b64decode(attrs["s"]), int(attrs["i"]))
        if key not in salted_cache:
            salted_cache[key] = _ScramClientKeys(
                user, hashlib.pbkdf2_hmac("sha256", password.encode(), key[0], key[1]))
        final = salted_cache[key].final(bare, server_first)
        w.write(f"CONT\t{rid}\t{base64.b64encode(final.encode()).decode()}\n".encode())
        f = (await r.readline()).decode().rstrip("\n").split("\t")
        if f[0] == "CONT":  # server-final as a challenge; an empty response ends it
            w.write(f"CONT\t{rid}\t\n".encode())
            f = (await r.readline()).decode().rstrip("\n").split("\t")
        return f[0] == "OK"

    clients = [await AuthClient.connect(socket_path) for _ in range(concurrency)]
    # one exchange each first: the client derives its salted password here, not counted
    for i, c in enumerate(clients):
        await exchange(c, 10_000_000 + i)
    ids = iter(range(1, 10_000_000))

    async def worker(c: AuthClient) -> None:
        nonlocal ok, failed
        for _ in todo:
            if await exchange(c, next(ids)):
                ok += 1
            else:
                failed += 1

    cpu0 = _cpu_of_children(master_pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    wall = time.perf_counter() - t0
    cpu = _cpu_of_children(master_pid) - cpu0
    for c in clients:
        await c.close()
    return {"verifications_ok": ok, "failed": failed, "dovecot_cpu_seconds": round(cpu, 3),
            "per_cpu_second": round(ok / cpu, 0) if cpu > 0 else None,
            "wall_per_second": round(ok / wall, 1) if wall else None,
            "wall_seconds": round(wall, 3), "concurrency": concurrency}


def run_async(coro_factory: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        return await coro_factory()

    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def median_of(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 2) if vals else None
