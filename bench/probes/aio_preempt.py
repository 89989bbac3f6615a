#!/usr/bin/env python3
"""What submitting one Linux AIO fdatasync (`smtpgate.queue.aio_sync`, the seal's
way to the disk) costs the event loop that submits it: the wall time of the
``io_submit`` call, the thread's CPU in it, and the context switches it causes.

Why measure it: under workload C the seal's submission took 0.6-1.0 ms of wall
time on average in each worker (p90 2-3.6 ms) for 55-60 µs of CPU (bench/README.md,
2026-12-04 11:03). The kernel queues the sync as a work item on the submitting
CPU and wakes a kernel worker there, which preempts the loop's thread (one
involuntary switch per submission, none voluntary); on a loaded machine the loop
then waits for its turn behind the other runnable processes. The loop holds no
lock meanwhile and its CPU is used by others, so this is latency (every session
of that worker waits), not lost CPU.

Each round writes a fresh 1.3 KB file, submits its sync, waits for the
completion and closes it, as the seal does.

Usage: aio_preempt.py [--syncs N] [--dir DIR]     (prints one JSON object)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import uvloop

from smtpgate.queue.aio_sync import AioSync


def _switches() -> tuple[int, int]:
    """(voluntary, involuntary) context switches of the calling thread so far."""
    voluntary = involuntary = 0
    with open(f"/proc/self/task/{threading.get_native_id()}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                voluntary = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                involuntary = int(line.split()[1])
    return voluntary, involuntary


async def _measure(directory: Path, syncs: int) -> dict[str, float]:
    aio = AioSync.open()
    if aio is None:
        raise SystemExit("Linux AIO syncs are not usable here")
    loop = asyncio.get_running_loop()
    walls: list[float] = []
    cpus: list[float] = []
    voluntary = involuntary = 0
    try:
        for i in range(syncs):
            fd = os.open(directory / f"m{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"x" * 1300)
                done: asyncio.Future[OSError | None] = loop.create_future()
                v0, n0 = _switches()
                wall, cpu = time.perf_counter(), time.thread_time()
                if not aio.submit(fd, done.set_result):
                    raise SystemExit("the file system refused an AIO sync")
                walls.append(time.perf_counter() - wall)
                cpus.append(time.thread_time() - cpu)
                v1, n1 = _switches()
                voluntary += v1 - v0
                involuntary += n1 - n0
                error = await done
                if error is not None:
                    raise error
            finally:
                os.close(fd)
    finally:
        aio.close()
    walls.sort()
    return {
        "syncs": syncs,
        "submit_wall_p50_us": round(walls[len(walls) // 2] * 1e6, 1),
        "submit_wall_mean_us": round(statistics.mean(walls) * 1e6, 1),
        "submit_cpu_mean_us": round(statistics.mean(cpus) * 1e6, 1),
        "voluntary_switches_per_submit": round(voluntary / syncs, 3),
        "involuntary_switches_per_submit": round(involuntary / syncs, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--syncs", type=int, default=300)
    ap.add_argument("--dir", type=Path, default=None,
                    help="a directory on the spool's file system (default: a temporary one)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aio-preempt-", dir=a.dir) as tmp:
        print(json.dumps(uvloop.run(_measure(Path(tmp), a.syncs))))


if __name__ == "__main__":
    main()
