"""What bounds each target `make bench` does not meet, measured in the same run.

The issue's rule for an unmet target is "the profile that shows what bounds it and
why it cannot move on this machine: measured, not argued". Two kinds of figure go
into that, both taken during the run whose ratios they explain:

* the CPU each server's processes used per unit of work in A, B and C (utime +
  stime of its whole process tree before and after each loadgen run, and
  loadgen's own, from its JSON), and the share of it spent in the kernel (system
  calls, context switches, fsync: what faster Python would not make faster);
* the floors of `bench/probes/floors.py`: one fdatasync on the spool's disk, one
  loop-to-thread round trip, the sans-IO engine's CPU per message, and OpenSSL's
  memory per idle TLS session.

Each unmet target then gets one line: what the target needs per unit, what the
floor is (the ceiling server's own cost plus what no durable, non-blocking SMTP
server in Python can skip), and what smtpgate spends. A floor above the need means
the target is out of reach on this machine; a floor below it means it is not ruled
out, and the line says how far smtpgate is above the floor, and where its CPU goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bench.workloads import tree_of

_TICK = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")

#: The targets of the issue (ratios to each peer).
NEEDS = {"A": {"aiosmtpd": 2.0, "postfix": 1.3}, "B": {"aiosmtpd": 2.0, "postfix": 1.5},
         "C": {"aiosmtpd": 1.5, "postfix": 1.2}}


def process_cpu(pid: int) -> float | None:
    """CPU seconds of ``pid``'s live threads (the scheduler's nanosecond counts:
    /proc/PID/stat counts in 10 ms ticks, too coarse for a one-second run) plus
    those of its children that exited and were reaped (Postfix's smtpd processes
    end after 100 sessions), None if it is gone."""
    total = 0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    except (OSError, IndexError):
        return None
    return total / 1e9 + (int(fields[13]) + int(fields[14])) / _TICK


def _over_tree(read: Callable[[int], T | None], roots: Sequence[int]) -> dict[int, T]:
    """``read`` of each root and each of its descendants, by pid (None: gone)."""
    out = {}
    for root in roots:
        for pid in tree_of(root):
            value = read(pid)
            if value is not None:
                out[pid] = value
    return out


def tree_cpu(*roots: int) -> dict[int, float]:
    """CPU seconds of each root and each of its descendants, by pid."""
    return _over_tree(process_cpu, roots)


def process_ticks(pid: int) -> tuple[int, int] | None:
    """User and system clock ticks of ``pid`` (all its threads) and of its reaped
    children, None if it is gone. Ticks are coarse (10 ms), but a run's server
    CPU is hundreds of them: enough for a share."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[13]), int(f[12]) + int(f[14])
    except (OSError, IndexError, ValueError):
        return None


def tree_ticks(*roots: int) -> dict[int, tuple[int, int]]:
    """`process_ticks` of each root and each of its descendants, by pid."""
    return _over_tree(process_ticks, roots)


#: Fewer ticks than this in a run give no share (one tick is 10 ms).
_MIN_TICKS = 20


def kernel_share(before: dict[int, tuple[int, int]],
                 after: dict[int, tuple[int, int]]) -> float | None:
    """The system ticks' share of the ticks used in between (as `cpu_between`: a
    process born meanwhile counts whole, an ended one's past is taken off)."""
    user = system = 0
    for pid, (u, s) in after.items():
        bu, bs = before.get(pid, (0, 0))
        user, system = user + u - bu, system + s - bs
    for pid, (bu, bs) in before.items():
        if pid not in after:
            user, system = user - bu, system - bs
    total = user + system
    return round(system / total, 3) if total >= _MIN_TICKS and system >= 0 else None


def cpu_between(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    """CPU seconds each process used in between: all of it for one born meanwhile.
    One that ended meanwhile shows up in its parent's reaped-children time with its
    whole life, so what it had used before is taken off here (a negative entry)."""
    used = {p: round(after[p] - before.get(p, 0.0), 6) for p in after}
    used.update({p: -before[p] for p in before if p not in after})
    return used


def delivery_pid(serve_log: Path) -> int | None:
    """The delivery process's pid, as `smtpgate serve` logs it at start-up."""
    try:
        m = re.search(r"delivery process: (\d+)", serve_log.read_text(errors="replace"))
    except OSError:
        return None
    return int(m.group(1)) if m else None


def measure_floors(python: Path, probe: Path, spool_dir: Path) -> dict[str, Any]:
    """Run `bench/probes/floors.py` in the servers' Python; its figures, or an error."""
    try:
        done = subprocess.run([str(python), str(probe), str(spool_dir)], capture_output=True,
                              timeout=300, check=True)
        return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        return {"error": repr(e)[:300]}


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def per_unit_cpu(records: Sequence[Any], workload: str, target: str, units: int,
                 key: str) -> float | None:
    """Median CPU ms per unit of ``key`` ('server', 'delivery', 'loadgen') over the runs."""
    vals: list[float | None] = []
    for r in records:
        if r.workload != workload or r.target != target:
            continue
        if key == "loadgen":
            cpu = (r.result or {}).get("loadgen_cpu_s")
        else:
            cpu = (r.cpu or {}).get(key)
        vals.append(cpu / units * 1e3 if isinstance(cpu, (int, float)) and units else None)
    m = _median(vals)
    return round(m, 3) if m is not None else None


def kernel_share_of(records: Sequence[Any], workload: str, target: str) -> float | None:
    """Median share of the server's CPU spent in the kernel over the runs."""
    m = _median([(r.cpu or {}).get("kernel_share") for r in records
                 if r.workload == workload and r.target == target])
    return round(m, 3) if m is not None else None


def _share(v: float | None, lead: str = ", ") -> str:
    return "" if v is None else f"{lead}{v * 100:.0f} % of it in the kernel"


def _r(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def report(rows: Sequence[dict[str, Any]], records: Sequence[Any], units: dict[str, int],
           floors: dict[str, Any], nproc: int, d: dict[str, Any] | None) -> dict[str, Any]:
    """The lines of the "what bounds it" report and the figures behind them."""
    lines: list[str] = []
    data: dict[str, Any] = {"floors": floors, "cpu_ms_per_unit": {}, "targets": {}}
    fl = floors if "error" not in floors else {}
    if not fl:
        lines.append(f"floors not measured: {floors.get('error')}")
    for row in rows:
        w = row["workload"]
        if w not in NEEDS:
            continue
        t = row["targets"]
        n = units.get(w, 0)
        cpu = {name: {k: per_unit_cpu(records, w, name, n, k)
                      for k in ("server", "delivery", "loadgen")} for name in t}
        for name in t:
            cpu[name]["kernel_share"] = kernel_share_of(records, w, name)
        data["cpu_ms_per_unit"][w] = cpu
        unit = "message" if row["metric"] == "messages_per_s" else "session"
        sg = t.get("smtpgate", {}).get("figure")
        top = t.get("ceiling", {}).get("figure")
        sgc = cpu.get("smtpgate", {})
        for peer, factor in NEEDS[w].items():
            of = t.get(peer, {}).get("figure")
            if not of or not sg:
                continue
            if sg / of >= factor:
                continue  # met: nothing to explain
            rate = factor * of
            item: dict[str, Any] = {"peer": peer, "factor": factor, "needs_per_s": round(rate, 1)}
            if w == "A":
                # One session: the time each message takes is the bound.
                need = 1e3 / rate
                parts = {"ceiling": 1e3 / top if top else None,
                         "fdatasync": fl.get("fdatasync_ms"), "hop": fl.get("hop_ms"),
                         "engine": fl.get("engine_cpu_ms")}
                known = [v for v in parts.values() if v is not None]
                floor = sum(known) if len(known) == len(parts) else None
                disk = (f"one fdatasync {_r(parts['fdatasync'])} + one thread round trip "
                        f"{_r(parts['hop'])}")
                aio = fl.get("aio_sync_ms")
                if (floor is not None and aio is not None
                        and aio < parts["fdatasync"] + parts["hop"]):
                    # The cheaper way to the disk on this machine: Linux AIO, no thread.
                    floor += aio - parts["fdatasync"] - parts["hop"]
                    parts["aio_sync"] = aio
                    disk = (f"one Linux AIO fdatasync on the loop {_r(aio)} (cheaper than "
                            f"{disk})")
                item.update(need_ms=round(need, 3), floor_ms=_round(floor), parts=parts,
                            smtpgate_ms=round(1e3 / sg, 3))
                verdict = _verdict(floor, need)
                lines.append(
                    f"A vs {peer} ({factor}x = {rate:.0f} msg/s): needs <= {need:.3f} ms a "
                    f"message; floor {_r(floor)} ms = ceiling's {_r(parts['ceiling'])} + "
                    f"{disk} + the engine's CPU {_r(parts['engine'])}; smtpgate "
                    f"{1e3 / sg:.3f} ms (its CPU {_r(sgc.get('server'))} ms a message"
                    f"{_share(sgc.get('kernel_share'))}): {verdict}")
            else:
                # Many sessions at once: the machine's CPU is the bound.
                budget = nproc * 1e3 / rate
                client = sgc.get("loadgen")
                allowance = budget - client if client is not None else None
                top_cpu = cpu.get("ceiling", {}).get("server")
                hop_cpu = fl.get("hop_cpu_ms")
                aio_cpu = fl.get("aio_cpu_ms")
                hand_off = "one thread hop"
                if hop_cpu is not None and aio_cpu is not None and aio_cpu < hop_cpu:
                    hop_cpu, hand_off = aio_cpu, "one AIO sync's submission and completion"
                parts = {"ceiling_cpu": top_cpu, "engine": fl.get("engine_cpu_ms"),
                         "hop_cpu": hop_cpu}
                known = [v for v in parts.values() if v is not None]
                floor = sum(known) if len(known) == len(parts) else None
                spent, deliv = sgc.get("server"), sgc.get("delivery")
                peer_cpu = cpu.get(peer, {}).get("server")
                peer_share = cpu.get(peer, {}).get("kernel_share")
                item.update(budget_ms=round(budget, 3), client_ms=client,
                            allowance_ms=_round(allowance), floor_ms=_round(floor),
                            parts=parts, smtpgate_cpu_ms=spent, delivery_cpu_ms=deliv,
                            peer_cpu_ms=peer_cpu)
                verdict = _verdict(floor, allowance)
                lines.append(
                    f"{w} vs {peer} ({factor}x = {rate:.0f} {unit}s/s): {nproc} cores give "
                    f"{budget:.3f} ms of CPU a {unit}, loadgen takes {_r(client)}, leaving "
                    f"{_r(allowance)}; floor {_r(floor)} = ceiling server's {_r(top_cpu)} + "
                    f"engine {_r(parts['engine'])} + {hand_off} {_r(parts['hop_cpu'])}; "
                    f"smtpgate spends {_r(spent)} (delivery process {_r(deliv)}"
                    f"{_share(sgc.get('kernel_share'))}), {peer} {_r(peer_cpu)}"
                    f"{_share(peer_share, ' (')}{'' if peer_share is None else ')'}: "
                    f"{verdict}{_user_room(spent, sgc.get('kernel_share'), allowance, item)}")
            data["targets"][f"{w}:{peer}"] = item
        if any(k.startswith(f"{w}:") for k in data["targets"]):
            reps = delivery_overlap(records, w, row["metric"])
            if reps:
                lines.append(reps)
    if d is not None and fl.get("tls_kib") is not None:
        sgd = d.get("smtpgate", {})
        base = sgd.get("rss_before_kib")
        procs = sgd.get("processes")
        if base is not None:
            tls_mb = 10_000 * fl["tls_kib"] / 1024
            floor_mb = base / 1024 + tls_mb
            held = sgd.get("rss_held_mb")
            bare = fl.get("bare_process_mb")
            item = {"rss_idle_mb": round(base / 1024, 1), "processes": procs,
                    "tls_kib": fl["tls_kib"], "floor_mb": round(floor_mb, 1),
                    "bare_process_mb": bare}
            data["targets"]["D"] = item
            if floor_mb > 300 or (held is not None and d.get("held_target", 0) >= 10_000
                                  and held > 300):
                room = 300 - tls_mb
                line = (f"D at 10,000 sessions: needs <= 300 MB RSS; 10,000 x "
                        f"{fl['tls_kib']:.1f} KiB of TLS state (OpenSSL's, on smtpgate's own "
                        f"session) is {tls_mb:.1f} MB, which leaves {room:.1f} MB for the "
                        f"processes themselves; smtpgate's {procs or '?'} processes hold "
                        f"{base / 1024:.1f} MB with no session, so {floor_mb:.1f} MB at "
                        f"10,000: {_verdict(floor_mb, 300.0)} for this process design")
                if bare is not None and procs:
                    line += (f"; {procs} bare interpreters with asyncio, ssl and uvloop alone "
                             f"hold {procs * bare:.1f} MB")
                one = d.get("smtpgate_workers_1", {})
                if one.get("rss_held_mb") is not None:
                    line += (f"; with workers = 1 (one process, {one['rss_before_kib'] / 1024:.1f}"
                             f" MB with no session) {one['authenticated']} sessions take "
                             f"{one['rss_held_mb']} MB")
                    item["workers_1_rss_held_mb"] = one["rss_held_mb"]
                lines.append(line)
    data["lines"] = lines
    return data


#: Delivery-process CPU seconds in a run under which it counts as idle during it.
_IDLE_DELIVERY_S = 0.01


def delivery_overlap(records: Sequence[Any], workload: str, metric: str) -> str:
    """smtpgate's repetitions of one workload, each with the CPU its delivery process
    used while loadgen ran. That process delivers what the workers stored a moment
    before (every 250 ms while they store, up to a second after a pause), so in a
    run of under a second whether it works inside the run is chance; its CPU then
    competes with the intake's on the same cores. An empty string when no run of
    the workload measured it."""
    reps = [((r.result or {}).get(metric), (r.cpu or {}).get("delivery"))
            for r in records if r.workload == workload and r.target == "smtpgate"]
    reps = [(f, d) for f, d in reps if isinstance(f, (int, float)) and isinstance(d, (int, float))]
    if not reps:
        return ""
    unit = "msg/s" if metric == "messages_per_s" else "sess/s"
    each = ", ".join(f"{f:,.1f} {unit} (delivery process {d:.3f} s of CPU)" for f, d in reps)
    idle = [f for f, d in reps if d < _IDLE_DELIVERY_S]
    busy = [f for f, d in reps if d >= _IDLE_DELIVERY_S]
    line = f"{workload}: smtpgate's repetitions, with what its delivery process used during each: {each}"
    if idle and busy:
        ratio = statistics.median(idle) / statistics.median(busy)
        line += (f"; with the delivery process idle during the run {ratio:.2f}x the rate with "
                 f"it delivering (medians)")
    return line


def _user_room(spent: float | None, share: float | None, allowance: float | None,
               item: dict[str, Any]) -> str:
    """If smtpgate's kernel time stayed what it is: what the allowance leaves for its
    user space (the Python, OpenSSL), against what that spends now."""
    if spent is None or share is None or allowance is None:
        return ""
    kernel, user = spent * share, spent * (1 - share)
    room = allowance - kernel
    item.update(kernel_cpu_ms=round(kernel, 3), user_cpu_ms=round(user, 3),
                user_room_ms=round(room, 3))
    if room <= 0:
        return (f"; its kernel time alone ({kernel:.3f}) is over the allowance, so no speed-up "
                f"of its own code reaches the target")
    if user <= room:
        return (f"; its own code (Python, OpenSSL) fits: {user:.3f} of the {room:.3f} its kernel "
                f"time ({kernel:.3f}) leaves; the run missed on wall time (its sessions' "
                f"waits), not on CPU")
    return (f"; with its kernel time as it is ({kernel:.3f}), its own code (Python, OpenSSL) "
            f"would have to fit in {room:.3f} instead of {user:.3f}: "
            f"{user / room:.1f}x less CPU")


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _verdict(floor: float | None, need: float | None) -> str:
    if floor is None or need is None:
        return "floor not measured"
    if floor > need:
        return "out of reach on this machine (floor above the need)"
    return f"not ruled out by the floor ({need - floor:.3f} to spare)"
