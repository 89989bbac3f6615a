#!/usr/bin/env python3
"""The parts of a message's cost that no change inside smtpgate's design can remove,
measured on this machine, for `bench/run.py`'s "what bounds it" report.

Each figure is a floor, not a profile of smtpgate:

* ``fdatasync_ms``: p50 of one fdatasync of a fresh 1.3 KB file in the spool's
  directory (the one sync a 250 costs, docs/delivery.md: the promise that the
  message is on disk);
* ``hop_ms`` / ``hop_cpu_ms``: p50 wall time and mean CPU of one round trip from a
  uvloop event loop to a thread and back (the seal's way to the disk: the loop
  itself never waits on a disk);
* ``aio_sync_ms`` / ``aio_cpu_ms``: p50 wall time and mean CPU (this process's
  only: the kernel worker that runs the sync is not counted) of writing a fresh
  1.3 KB file and syncing it with a Linux AIO fdatasync completed on a uvloop loop
  (`smtpgate.queue.aio_sync`, the seal's way on Linux; null where AIO cannot be
  used): the sync and its hand-off together, without a thread;
* ``engine_cpu_ms``: CPU per message of the sans-IO SMTP engine alone (MAIL, RCPT,
  DATA and a 1 KiB body fed one read each, as a non-pipelining client sends them,
  the replies taken out): the protocol work the canned ceiling server skips;
* ``tls_kib``: RSS per idle server-side TLS connection on smtpgate's own session
  (``bench/probes/tls_memory.py``), what each of workload D's sessions holds in
  OpenSSL;
* ``bare_process_mb``: RSS of a fresh interpreter that imported only asyncio, ssl
  and uvloop: what any process of a Python TLS server holds before its own code.

Usage: floors.py SPOOL_DIR (prints one JSON object).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from smtpgate.sasl import base as sasl
from smtpgate.sasl.registry import create_server_mechanism
from smtpgate.smtp import replies as R
from smtpgate.smtp.engine import EngineSettings, ServerEngine, TlsInfo
from smtpgate.smtp.events import (
    NEED_DATA,
    PAUSED,
    AuthFinished,
    AuthQuery,
    MailFrom,
    MessageReceived,
    RcptTo,
)

_USER, _PASSWORD = "a@test.local", "pw"
_BODY = (b"From: a@test.local\r\nTo: b@example.com\r\nSubject: x\r\n\r\n"
         + (b"x" * 76 + b"\r\n") * 12 + b".\r\n")
_LINES = (b"MAIL FROM:<a@test.local>\r\n", b"RCPT TO:<b@example.com>\r\n", b"DATA\r\n", _BODY)


def fdatasync_ms(directory: Path, files: int = 300) -> float:
    """p50 of write + fdatasync of a fresh file, in a scratch directory beside the
    spool (same filesystem), removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix="floor-", dir=directory))
    times: list[float] = []
    data = b"x" * 1300
    try:
        for i in range(files):
            fd = os.open(scratch / f"{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                t = time.perf_counter()
                os.fdatasync(fd)
                times.append(time.perf_counter() - t)
            finally:
                os.close(fd)
    finally:
        for p in scratch.iterdir():
            p.unlink()
        scratch.rmdir()
    return statistics.median(times) * 1e3


def hop_ms(hops: int = 3000) -> tuple[float, float]:
    """(p50 wall ms, mean CPU ms) of a no-op sent to the loop's executor and back."""

    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        for _ in range(200):
            await loop.run_in_executor(None, int)
        times = []
        cpu0 = time.process_time()
        for _ in range(hops):
            t = time.perf_counter()
            await loop.run_in_executor(None, int)
            times.append(time.perf_counter() - t)
        cpu = time.process_time() - cpu0
        return statistics.median(times) * 1e3, cpu / hops * 1e3

    return uvloop.run(run())


def aio_sync_ms(directory: Path, files: int = 300) -> tuple[float | None, float | None]:
    """(p50 wall ms, mean CPU ms) of write + AIO fdatasync of a fresh file, awaited on
    a uvloop loop, in a scratch directory beside the spool; (None, None) without AIO."""
    from smtpgate.queue.aio_sync import AioSync

    scratch = Path(tempfile.mkdtemp(prefix="floor-aio-", dir=directory))
    data = b"x" * 1300

    async def run() -> tuple[float | None, float | None]:
        aio = AioSync.open()
        if aio is None:
            return None, None
        times: list[float] = []
        cpu = 0.0
        try:
            for i in range(files):
                fd = os.open(scratch / f"{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    c = time.process_time()
                    t = time.perf_counter()
                    os.write(fd, data)
                    await aio.fdatasync(fd)
                    times.append(time.perf_counter() - t)
                    cpu += time.process_time() - c
                finally:
                    os.close(fd)
        finally:
            aio.close()
        return statistics.median(times) * 1e3, cpu / files * 1e3

    try:
        return uvloop.run(run())
    finally:
        for p in scratch.iterdir():
            p.unlink()
        scratch.rmdir()


def _pump(engine: ServerEngine) -> None:
    """Answer the engine's decision events as a server that accepts everything would."""
    while True:
        ev = engine.next_event()
        if ev is NEED_DATA or ev is PAUSED:
            return
        if isinstance(ev, AuthQuery):
            engine.auth_answer(sasl.Verdict(ok=True, identity=_USER))
        elif isinstance(ev, MessageReceived):
            engine.respond(R.MESSAGE_ACCEPTED)
        elif isinstance(ev, (AuthFinished, MailFrom, RcptTo)):
            engine.respond(None)


def engine_cpu_ms(messages: int = 5000) -> float:
    """CPU per message of the engine alone, after a login."""
    tls = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384",
                  sasl.ChannelBinding({"tls-exporter": b"x" * 32}))
    settings = EngineSettings(
        hostname="mx.test",
        mechanism_factory=lambda name, cb, plus: create_server_mechanism(
            name, channel_binding=cb, hostname="mx.test", plus_advertised=plus))
    engine = ServerEngine(settings, tls=tls)
    engine.greeting()
    login = base64.b64encode(f"\0{_USER}\0{_PASSWORD}".encode())
    for line in (b"EHLO c.test\r\n", b"AUTH PLAIN " + login + b"\r\n"):
        engine.receive_data(line)
        _pump(engine)
    engine.data_to_send()
    if not engine.identity:
        raise SystemExit("floors: the engine did not log in")

    def one() -> None:
        for line in _LINES:
            engine.receive_data(line)
            _pump(engine)
            engine.data_to_send()

    for _ in range(200):
        one()
    cpu0 = time.process_time()
    for _ in range(messages):
        one()
    return (time.process_time() - cpu0) / messages * 1e3


def tls_kib(connections: int = 2000) -> float:
    """RSS KiB per idle server-side TLS connection (smtpgate's production session)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository
    from bench.probes.tls_memory import kib_per_connection

    return float(kib_per_connection("stdlib", connections))


def bare_process_mb() -> float:
    """RSS of a fresh interpreter with asyncio, ssl and uvloop imported."""
    code = ("import asyncio, ssl, uvloop\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') "
            "if l.startswith('VmRSS')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    return int(out.stdout) / 1024


def main() -> None:
    spool = Path(sys.argv[1])
    hop_wall, hop_cpu = hop_ms()
    aio_wall, aio_cpu = aio_sync_ms(spool)
    out = {
        "fdatasync_ms": round(fdatasync_ms(spool), 4),
        "hop_ms": round(hop_wall, 4),
        "hop_cpu_ms": round(hop_cpu, 4),
        "aio_sync_ms": None if aio_wall is None else round(aio_wall, 4),
        "aio_cpu_ms": None if aio_cpu is None else round(aio_cpu, 4),
        "engine_cpu_ms": round(engine_cpu_ms(), 4),
        "tls_kib": round(tls_kib(), 2),
        "bare_process_mb": round(bare_process_mb(), 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
