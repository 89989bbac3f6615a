"""The "what bounds it" report of `make bench` (bench/bounds.py): which unmet
target gets which verdict, from the figures of one run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from bench import bounds


@dataclass
class Run:
    workload: str
    target: str
    cpu: dict[str, float] | None = None
    result: dict[str, Any] = field(default_factory=dict)


def row(w: str, metric: str, **figures: float) -> dict[str, Any]:
    return {"workload": w, "metric": metric,
            "targets": {name: {"figure": f} for name, f in figures.items()}}


FLOORS = {"fdatasync_ms": 0.2, "hop_ms": 0.08, "hop_cpu_ms": 0.07, "engine_cpu_ms": 0.05,
          "tls_kib": 14.8, "bare_process_mb": 20.0}


def test_a_floor_above_the_need_is_out_of_reach_and_below_it_is_not_ruled_out() -> None:
    # aiosmtpd 600 msg/s: 2x needs 0.833 ms a message; the floor is 0.5 (ceiling at
    # 2,000/s) + 0.2 + 0.08 + 0.05 = 0.83 ms: not ruled out. At 700/s it is 0.714: out.
    for aio, verdict in ((600.0, "not ruled out"), (700.0, "out of reach")):
        rows = [row("A", "messages_per_s", smtpgate=500.0, aiosmtpd=aio, ceiling=2000.0)]
        out = bounds.report(rows, [], {"A": 500}, FLOORS, 2, None)
        assert len(out["lines"]) == 1 and verdict in out["lines"][0]
        item = out["targets"]["A:aiosmtpd"]
        assert abs(item["floor_ms"] - 0.83) < 1e-9 and abs(item["need_ms"] - 1e3 / (2 * aio)) < 1e-3


def test_met_targets_get_no_line_and_cpu_comes_per_unit_from_each_run() -> None:
    rows = [row("B", "messages_per_s", smtpgate=1000.0, aiosmtpd=400.0, postfix=900.0,
                ceiling=8000.0)]
    runs = [Run("B", "smtpgate", {"server": 1.5, "delivery": 0.3}, {"loadgen_cpu_s": 0.3}),
            Run("B", "ceiling", {"server": 0.1}), Run("B", "postfix", {"server": 2.0})]
    out = bounds.report(rows, runs, {"B": 1000}, FLOORS, 2, None)
    assert [ln.split(" (")[0] for ln in out["lines"]] == ["B vs postfix"]  # 2.5x aio: met
    item = out["targets"]["B:postfix"]
    # 2 cores at 1.5 x 900 msg/s: 1.481 ms a message, loadgen 0.3, so 1.181 left.
    assert item["smtpgate_cpu_ms"] == 1.5 and item["delivery_cpu_ms"] == 0.3
    assert item["peer_cpu_ms"] == 2.0 and abs(item["allowance_ms"] - 1.181) < 1e-3
    assert abs(item["floor_ms"] - (0.1 + 0.05 + 0.07)) < 1e-9


def test_d_is_judged_on_the_processes_memory_plus_each_sessions_tls_state() -> None:
    d = {"held_target": 2000, "smtpgate": {"rss_before_kib": 250 * 1024, "processes": 4}}
    out = bounds.report([], [], {}, FLOORS, 2, d)
    assert out["targets"]["D"]["floor_mb"] == round(250 + 10_000 * 14.8 / 1024, 1)
    assert "out of reach" in out["lines"][0] and "80.0 MB" in out["lines"][0]
    lean = {"held_target": 2000, "smtpgate": {"rss_before_kib": 100 * 1024, "processes": 4}}
    assert bounds.report([], [], {}, FLOORS, 2, lean)["lines"] == []


def test_d_names_what_one_process_holds_when_it_was_measured() -> None:
    d = {"held_target": 10_000, "smtpgate": {"rss_before_kib": 250 * 1024, "processes": 4},
         "smtpgate_workers_1": {"rss_before_kib": 85 * 1024, "authenticated": 10_000,
                                "rss_held_mb": 292.5}}
    out = bounds.report([], [], {}, FLOORS, 2, d)
    assert "with workers = 1 (one process, 85.0 MB with no session) 10000 sessions take " \
           "292.5 MB" in out["lines"][0]
    assert out["targets"]["D"]["workers_1_rss_held_mb"] == 292.5


def test_cpu_between_counts_new_processes_whole_and_takes_off_the_past_of_ended_ones() -> None:
    before = {1: 10.0, 2: 5.0}
    after = {1: 12.5, 3: 0.7}  # 2 ended (its life shows in 1's reaped time), 3 is new
    assert sum(bounds.cpu_between(before, after).values()) == 2.5 + 0.7 - 5.0
    assert bounds.process_cpu(os.getpid()) is not None


def test_kernel_share_counts_the_system_ticks_of_the_tree_and_needs_enough_of_them() -> None:
    before = {10: (100, 50), 11: (40, 10)}
    # 10 used 30 user + 30 system; 11 used 5 + 5 more and ended (its whole life,
    # 45 + 15, is now in 10's children's ticks, so its past comes off); 12 was born
    # and used 20 + 0. In between: 55 user, 35 system.
    after = {10: (100 + 30 + 45, 50 + 30 + 15), 12: (20, 0)}
    assert bounds.kernel_share(before, after) == round(35 / 90, 3)
    assert bounds.kernel_share({1: (0, 0)}, {1: (10, 5)}) is None  # 15 ticks: too few


def test_each_b_line_says_how_much_of_each_servers_cpu_is_the_kernels() -> None:
    rows = [row("B", "messages_per_s", smtpgate=1000.0, aiosmtpd=900.0, postfix=900.0,
                ceiling=8000.0)]
    runs = [Run("B", "smtpgate", {"server": 1.5, "delivery": 0.3, "kernel_share": s},
                {"loadgen_cpu_s": 0.3}) for s in (0.40, 0.45, 0.50)]
    runs += [Run("B", "aiosmtpd", {"server": 1.4, "kernel_share": 0.3}),
             Run("B", "postfix", {"server": 2.0})]
    out = bounds.report(rows, runs, {"B": 1000}, FLOORS, 2, None)
    aio = next(ln for ln in out["lines"] if ln.startswith("B vs aiosmtpd"))
    assert "(delivery process 0.300, 45 % of it in the kernel), aiosmtpd 1.400 (30 % of it" in aio
    pf = next(ln for ln in out["lines"] if ln.startswith("B vs postfix"))
    assert "postfix 2.000: " in pf  # no share measured: none claimed
    assert out["cpu_ms_per_unit"]["B"]["smtpgate"]["kernel_share"] == 0.45
    # 2 cores at 2 x 900 msg/s: 1.111 ms a message, loadgen 0.3: 0.811 left; the
    # kernel's 0.675 (45 % of 1.5) leaves 0.136 for the 0.825 its code spends now.
    assert "its own code (Python, OpenSSL) would have to fit in 0.136 instead of 0.825: " \
        "6.1x less CPU" in aio
    item = out["targets"]["B:aiosmtpd"]
    assert (item["kernel_cpu_ms"], item["user_room_ms"]) == (0.675, 0.136)


def test_a_kernel_time_over_the_allowance_says_no_code_speed_up_reaches_it() -> None:
    rows = [row("C", "sessions_per_s", smtpgate=300.0, aiosmtpd=330.0, ceiling=600.0)]
    runs = [Run("C", "smtpgate", {"server": 0.9, "kernel_share": 0.8}, {"loadgen_cpu_s": 0.6}),
            Run("C", "aiosmtpd", {"server": 0.9})]
    out = bounds.report(rows, runs, {"C": 300}, FLOORS, 2, None)
    # 2 cores at 1.5 x 330: 4.04 ms a session, loadgen 2.0: 2.04 left < kernel 2.4.
    assert "its kernel time alone (2.400) is over the allowance" in out["lines"][0]


def test_the_floor_takes_an_aio_sync_where_it_is_cheaper_than_fdatasync_and_a_hop() -> None:
    rows = [row("A", "messages_per_s", smtpgate=500.0, aiosmtpd=600.0, ceiling=2000.0)]
    cheaper = {**FLOORS, "aio_sync_ms": 0.21, "aio_cpu_ms": 0.09}
    out = bounds.report(rows, [], {"A": 500}, cheaper, 2, None)
    assert abs(out["targets"]["A:aiosmtpd"]["floor_ms"] - (0.5 + 0.21 + 0.05)) < 1e-9
    assert "Linux AIO fdatasync on the loop 0.210" in out["lines"][0]
    dearer = {**FLOORS, "aio_sync_ms": 0.35, "aio_cpu_ms": 0.06}
    out = bounds.report(rows, [], {"A": 500}, dearer, 2, None)
    assert abs(out["targets"]["A:aiosmtpd"]["floor_ms"] - 0.83) < 1e-9
    assert "AIO" not in out["lines"][0]
    rows = [row("B", "messages_per_s", smtpgate=1000.0, aiosmtpd=600.0, ceiling=8000.0)]
    runs = [Run("B", "smtpgate", {"server": 1.5}, {"loadgen_cpu_s": 0.3}),
            Run("B", "ceiling", {"server": 0.1})]
    out = bounds.report(rows, runs, {"B": 1000}, dearer, 2, None)  # 0.06 < the hop's 0.07
    assert abs(out["targets"]["B:aiosmtpd"]["floor_ms"] - (0.1 + 0.05 + 0.06)) < 1e-9
    assert "one AIO sync's submission and completion 0.060" in out["lines"][0]


def test_an_unmet_workload_lists_each_repetition_with_its_delivery_cpu() -> None:
    # The delivery process works inside some runs and not others (bench/README.md,
    # 2026-12-05): the line gives each repetition and the medians' ratio.
    rows = [row("B", "messages_per_s", smtpgate=1400.0, aiosmtpd=1000.0, postfix=1000.0,
                ceiling=8000.0)]
    runs = [Run("B", "smtpgate", {"server": 0.5, "delivery": d}, {"messages_per_s": f})
            for f, d in ((1960.0, 0.0), (1410.0, 0.21), (1420.0, 0.226))]
    out = bounds.report(rows, runs, {"B": 1000}, FLOORS, 2, None)
    reps = [ln for ln in out["lines"] if ln.startswith("B: smtpgate's repetitions")]
    assert len(reps) == 1  # one line a workload, not one a peer
    assert "1,960.0 msg/s (delivery process 0.000 s of CPU), 1,410.0 msg/s" in reps[0]
    assert "idle during the run 1.39x the rate with it delivering" in reps[0]  # 1960 / 1415
    met = [row("B", "messages_per_s", smtpgate=3000.0, aiosmtpd=1000.0, postfix=1000.0,
               ceiling=8000.0)]
    assert bounds.report(met, runs, {"B": 1000}, FLOORS, 2, None)["lines"] == []


def test_a_cpu_that_fits_the_allowance_is_said_to_fit_not_to_need_less() -> None:
    # The 2026-12-05 run said "would have to fit in 0.530 instead of 0.425: 0.8x less
    # CPU" for a CPU already under the allowance.
    rows = [row("B", "messages_per_s", smtpgate=1760.8, aiosmtpd=1052.3, ceiling=8700.0)]
    runs = [Run("B", "smtpgate", {"server": 0.595, "kernel_share": 0.29},
                {"loadgen_cpu_s": 0.25}), Run("B", "aiosmtpd", {"server": 0.943})]
    out = bounds.report(rows, runs, {"B": 1000}, FLOORS, 2, None)
    line = out["lines"][0]
    assert "its own code (Python, OpenSSL) fits: 0.422 of the 0.528" in line, line
    assert "missed on wall time" in line and "less CPU" not in line
