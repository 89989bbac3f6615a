#!/usr/bin/env python3
"""Instructions a workload C session costs each server, counted by Valgrind, not timed.

On this shared 2-core machine a server's CPU time per session moves with whatever
else runs (10-40 % between runs of the same code). The number of instructions
the server's processes execute for a session does not: it is what the code does,
whatever the machine's load. So smtpgate, the aiosmtpd reference and the canned
ceiling server (`bench/probes/canned_smtp.py`), each as one process, run under
``valgrind --tool=callgrind`` with the same certificate; loadgen (not under
Valgrind) sends 30 warm-up sessions and then N; the server is stopped and its
processes' user-space instructions are summed per ELF object (libpython,
libcrypto, libc...). Each server runs twice, with N1 and N2 sessions, and the
difference divided by N2 - N1 is one session's cost: the start-up, imports and
warm-up cancel out. smtpgate runs with ``workers = 1``: one process that also
delivers, so its count includes the Maildir delivery that the others do not do.
What timers do while a run lasts (a few percent: the runs take a minute or more
under Valgrind) does not cancel out; compare figures over a few percent only.

Kernel work (system calls, TCP, fsync) is not counted: Valgrind sees user space.

Usage::

    .venv/bin/python bench/instructions.py              # N1 = 20, N2 = 120
    .venv/bin/python bench/instructions.py --sessions 20 220 --json out.json

Needs valgrind (Debian package ``valgrind``); about 4 minutes on two cores.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))
from bench.run import (
    BENCH_USER,
    LOOPBACK,
    Processes,
    Settings,
    Target,
    Workload,
    free_port,
    run_loadgen,
    setup_smtpgate,
    tool_settings,
    wait_for_banner,
)

#: Valgrind's start-up of a Python server takes tens of seconds.
STARTUP_TIMEOUT = 300.0
#: A server's exit under Valgrind (it writes its counts then).
EXIT_TIMEOUT = 120.0
TARGETS = ("smtpgate", "aiosmtpd", "ceiling")


def _self_cost_by_object(path: Path, into: collections.Counter[str]) -> None:
    """Add a callgrind output file's self cost (the first event, Ir) per ELF object.
    Cost lines after a ``calls=`` line are the call's inclusive cost: skipped."""
    names: dict[str, str] = {}
    obj, after_call = "?", False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("ob=", "cob=")):
                m = re.match(r"c?ob=(?:\((\d+)\))? ?(.*)", line.strip())
                if m:
                    ref, name = m.group(1), m.group(2)
                    if ref and name:
                        names[ref] = name
                    if line.startswith("ob="):
                        obj = names.get(ref, name) if ref else name
                continue
            if line.startswith("calls="):
                after_call = True
                continue
            first = line[:1]
            if first.isdigit() or first in "+-*":
                if after_call:
                    after_call = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    into[Path(obj).name or obj] += int(parts[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (smtpgate stops as on Ctrl-C; the reference and the ceiling exit on
    KeyboardInterrupt), then SIGTERM: the program exits and Valgrind writes."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                continue
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _one_run(s: Settings, target: str, sessions: int, tmp: Path,
             cert_dir: list[Path], ready: threading.Event) -> collections.Counter[str]:
    """One server under callgrind: warm-up, ``sessions`` C sessions, its counts."""
    out_dir = tmp / f"cg-{target}-{sessions}"
    out_dir.mkdir()
    valgrind = ["valgrind", "--tool=callgrind", "--trace-children=yes",
                f"--callgrind-out-file={out_dir}/%p.out"]
    procs = Processes()
    password = secrets.token_urlsafe(18)
    try:
        if target == "smtpgate":
            t, sg_dir, _ = setup_smtpgate(s, tmp, procs, password, workers=1,
                                          name=f"sg{sessions}", label="smtpgate",
                                          launcher=valgrind,
                                          startup_timeout=STARTUP_TIMEOUT)
            cert_dir.append(sg_dir / "tls")
            ready.set()
        else:
            ready.wait()
            tls = cert_dir[0]
            port = free_port()
            if target == "aiosmtpd":
                argv = [str(s.python), str(s.ref_server), str(port), str(tls / "cert.pem"),
                        str(tls / "key.pem"), BENCH_USER, password, str(out_dir / "spool")]
            else:
                argv = [str(s.python), str(BENCH_DIR / "probes" / "canned_smtp.py"),
                        str(port), str(tls / "cert.pem"), str(tls / "key.pem"),
                        "--procs", "1"]
            log = out_dir / "server.log"
            proc = procs.start(target, [*valgrind, *argv], log)
            wait_for_banner(LOOPBACK, port, proc, log, target, STARTUP_TIMEOUT)
            t = Target(target, LOOPBACK, port, BENCH_USER, password, tls / "cert.pem",
                       (proc.pid,))
        for w in (Workload("w", "warm-up", 30, 5, 1, "sessions_per_s"),
                  Workload("C", "C", sessions, 10, 1, "sessions_per_s")):
            rec = run_loadgen(s, t, w, 0, max_seconds=600)
            if rec.problem:
                raise RuntimeError(f"{target}, {sessions} sessions: {rec.problem}")
        for _, proc in procs.children:
            _stop(proc)
    finally:
        procs.stop_all()
    counts: collections.Counter[str] = collections.Counter()
    for f in out_dir.glob("*.out*"):
        _self_cost_by_object(f, counts)
    return counts


def _run_into(results: dict[int, collections.Counter[str]], errors: list[Exception],
              n: int, run: Callable[[], collections.Counter[str]],
              ready: threading.Event) -> None:
    """A thread's run: its counts into ``results``, or its error into ``errors``
    (and the event set, so that a run waiting for the certificate goes on)."""
    try:
        results[n] = run()
    except Exception as e:  # noqa: BLE001 (reported by main, whatever it is)
        errors.append(e)
        ready.set()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, nargs=2, default=(20, 120), metavar=("N1", "N2"))
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    n1, n2 = a.sessions
    if not 0 <= n1 < n2:
        ap.error("--sessions N1 N2 needs 0 <= N1 < N2")
    if shutil.which("valgrind") is None:
        ap.error("valgrind is not installed (apt-get install valgrind)")
    s = tool_settings(1, "instructions")
    per_session: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="smtpgate-instructions-") as tmp_name:
        tmp = Path(tmp_name)
        certs: list[Path] = []
        ready = threading.Event()
        for target in TARGETS:
            results: dict[int, collections.Counter[str]] = {}
            errors: list[Exception] = []

            started = time.monotonic()
            threads = [threading.Thread(target=_run_into, args=(
                results, errors, n, lambda n=n, target=target: _one_run(
                    s, target, n, tmp, certs, ready), ready)) for n in (n1, n2)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            if errors:
                print(f"{target}: {errors[0]}", file=sys.stderr)
                return 1
            objects = set(results[n1]) | set(results[n2])
            per_session[target] = {o: (results[n2][o] - results[n1][o]) / (n2 - n1)
                                   for o in objects}
            print(f"{target}: measured in {time.monotonic() - started:.0f} s", file=sys.stderr)
    libs = ("libpython", "libcrypto", "libssl", "libc.", "libsqlite3", "loop.cpython")
    print(f"user-space instructions (millions) a workload C session, "
          f"({n2} - {n1} sessions) / {n2 - n1}:")
    print("| server | total | " + " | ".join(libs) + " | other |")
    print("|---|---|" + "---|" * (len(libs) + 1))
    for target, costs in per_session.items():
        total = sum(costs.values())
        cells = []
        rest = total
        for lib in libs:
            v = sum(c for o, c in costs.items() if o.startswith(lib))
            rest -= v
            cells.append(f"{v / 1e6:.2f}")
        print(f"| {target} | {total / 1e6:.2f} | " + " | ".join(cells) + f" | {rest / 1e6:.2f} |")
    if a.json:
        a.json.write_text(json.dumps({"sessions": [n1, n2], "per_session": per_session},
                                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
