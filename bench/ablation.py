#!/usr/bin/env python3
"""What each part of smtpgate costs a session (workload C) or a message (A), measured
by switching it off: issue 13's "what bounds it", part by part.

Several default installs (`smtpgate init`, ``workers`` as `make bench` sets it, the
bench's lifted sending limits) run at once on free loopback ports, each with some
parts switched off (`bench/probes/ablate/sitecustomize.py`; the guard through its
own key, ``[guard] enabled = false``). Then, in rounds, loadgen runs the workload
against each in turn (the order reversed every other round), and the CPU of each
server's process tree (scheduler nanoseconds, `bench/bounds.py`) is read before
and after. The table gives, per variant, the median and the least CPU per unit
over the rounds and what it saves against the full server; CPU, not the rate, is
the figure, as the machine's other load moves a rate far more than a process's
own CPU per unit. loadgen's own CPU is not counted.

Usage::

    .venv/bin/python bench/ablation.py                # C, 300 sessions a round, 5 rounds
    .venv/bin/python bench/ablation.py --workload A   # A, 300 messages a round
    .venv/bin/python bench/ablation.py --rounds 9 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))
from bench.run import (
    WARMUP,
    Processes,
    Settings,
    Target,
    Workload,
    cpu_count,
    loadavg,
    run_loadgen,
    setup_smtpgate,
    tool_settings,
)

ABLATE_DIR = BENCH_DIR / "probes" / "ablate"

#: name -> (parts switched off by the sitecustomize, guard off?)
VARIANTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "full server": ((), False),
    "no metrics": (("metrics",), False),
    "no auth log": (("authlog",), False),
    "no INFO lines": (("serverlog",), False),
    "no From check": (("from_policy",), False),
    "no guard": ((), True),
    "none of these": (("metrics", "authlog", "serverlog", "from_policy"), True),
}


def _start(s: Settings, tmp: Path, procs: Processes, index: int, parts: Sequence[str],
           guard_off: bool) -> Target:
    """One variant's server, as `make bench` sets it up, with ``parts`` off."""
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ABLATE_DIR)] + [p for p in saved.get("PYTHONPATH", "").split(os.pathsep) if p])
    os.environ["SMTPGATE_ABLATE"] = ",".join(parts)
    try:
        target, _, _ = setup_smtpgate(
            s, tmp, procs, secrets.token_urlsafe(18), name=f"v{index}", label=f"v{index}",
            extra_config="\n[guard]\nenabled = false\n" if guard_off else "")
        return target
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("A", "C"), default="C")
    ap.add_argument("--units", type=int, default=300,
                    help="sessions (C, at concurrency 20) or messages (A) a round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2 if cpu_count() >= 2 else 1)
    ap.add_argument("--only", nargs="*", default=None, metavar="VARIANT",
                    help=f"a subset of: {', '.join(VARIANTS)}")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here too")
    a = ap.parse_args(argv)
    names = list(VARIANTS) if not a.only else ["full server"] + [
        n for n in a.only if n != "full server"]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s): {', '.join(unknown)}")
    s = tool_settings(a.workers, "ablation")
    if a.workload == "C":
        w = Workload("C", f"{a.units} sessions x 1 msg, c=20", a.units, 20, 1, "sessions_per_s")
    else:
        w = Workload("A", f"1 session x {a.units} msgs", 1, 1, a.units, "messages_per_s")
    procs = Processes()
    cpu: dict[str, list[float]] = {n: [] for n in names}
    rate: dict[str, list[float]] = {n: [] for n in names}
    load = [loadavg()]
    with tempfile.TemporaryDirectory(prefix="smtpgate-ablation-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            targets = {n: _start(s, tmp, procs, i, *VARIANTS[n]) for i, n in enumerate(names)}
            for n in names:
                run_loadgen(s, targets[n], WARMUP, 0)
                run_loadgen(s, targets[n], Workload("w", "warm-up", 100, 20, 1,
                                                    "sessions_per_s"), 0)
            for r in range(a.rounds):
                order = names if r % 2 == 0 else names[::-1]
                for n in order:
                    rec = run_loadgen(s, targets[n], w, r + 1)
                    if rec.problem or rec.cpu is None or rec.result is None:
                        print(f"{n}: round {r + 1}: {rec.problem or 'no figures'}",
                              file=sys.stderr)
                        continue
                    units = w.sessions * w.messages
                    cpu[n].append(rec.cpu["server"] * 1000 / units)
                    rate[n].append(float(rec.result[w.metric]))
            load.append(loadavg())
        finally:
            procs.stop_all()
    unit = "session" if a.workload == "C" else "message"
    base = statistics.median(cpu["full server"]) if cpu["full server"] else None
    print(f"workload {w.key} ({w.title}), {a.rounds} rounds, workers = {a.workers}; "
          f"load {load[0][0]:.2f} -> {load[-1][0]:.2f}")
    print(f"| variant | CPU ms a {unit}, median (least) | saves vs full | {w.unit} median |")
    print("|---|---|---|---|")
    rows = []
    for n in names:
        if not cpu[n]:
            print(f"| {n} | no run finished | | |")
            continue
        med, least = statistics.median(cpu[n]), min(cpu[n])
        saves = "" if base is None or n == "full server" else f"{base - med:+.3f} ms ({(base - med) / base:.0%})"
        print(f"| {n} | {med:.3f} ({least:.3f}) | {saves} | {statistics.median(rate[n]):.1f} |")
        rows.append({"variant": n, "parts_off": list(VARIANTS[n][0]),
                     "guard_off": VARIANTS[n][1], "cpu_ms": cpu[n], "rate": rate[n]})
    if a.json:
        a.json.write_text(json.dumps({"workload": w.key, "units": a.units, "rounds": a.rounds,
                                      "workers": a.workers, "load": load, "variants": rows},
                                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
