"""How many CPUs smtpgate may really use: the default number of workers.

Why: ``os.cpu_count()`` counts the host's CPUs. In a container started with
``--cpuset-cpus=0`` or ``--cpus=1`` (or a systemd unit with ``AllowedCPUs=`` or
``CPUQuota=``) that is far more than the process gets: four workers then share
one CPU's time, each holding its memory (about 50 MB) for nothing, and with a
quota the kernel stalls them all when it is spent. So the default counts the
CPUs of the process's affinity mask (a cpuset, ``taskset``), cut to its cgroup's
CPU quota rounded up (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` over
``cpu.cfs_period_us``), the tightest of the process's cgroup and its parents,
as the Go and Java runtimes read them. Anything unreadable counts as no limit.

Written by hand: no library we use reads cgroup quotas (``os.process_cpu_count``,
Python 3.13, reads only the affinity mask).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
PROC_MOUNTINFO = Path("/proc/self/mountinfo")


def usable_cpus() -> int:
    """CPUs this process may use (module docstring); at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def cgroup_cpu_quota(proc_cgroup: Path = PROC_CGROUP,
                     mountinfo: Path = PROC_MOUNTINFO) -> float | None:
    """The CPU quota (in CPUs) of this process's cgroup and its parents, the
    tightest; None if there is none or it cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
        mounts = _cgroup_mounts(mountinfo.read_text())
    except OSError:
        return None
    found: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "" and "cgroup2" in mounts:
            found += _walk(mounts["cgroup2"], path, _v2_quota)
        elif "cpu" in controllers.split(","):
            for key in (controllers, "cpu"):
                if key in mounts:
                    found += _walk(mounts[key], path, _v1_quota)
                    break
    return min(found) if found else None


def _cgroup_mounts(mountinfo: str) -> dict[str, tuple[str, str]]:
    """Cgroup mounts by hierarchy ("cgroup2", or a v1 mount's controllers such as
    "cpu,cpuacct"): (the cgroup path mounted there, where it is mounted)."""
    mounts: dict[str, tuple[str, str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) < 3:
            continue
        fstype, options = after[0], after[2].split(",")
        if fstype == "cgroup2":
            mounts.setdefault("cgroup2", (fields[3], fields[4]))
        elif fstype == "cgroup":
            controllers = [o for o in options if o in ("cpu", "cpuacct")]
            if "cpu" in controllers:
                mounts.setdefault(",".join(controllers), (fields[3], fields[4]))
                mounts.setdefault("cpu", (fields[3], fields[4]))
    return mounts


def _walk(mount: tuple[str, str], path: str,
          read: Callable[[Path], float | None]) -> list[float]:
    """The quotas from the process's cgroup directory up to the mount's top."""
    root, point = mount
    rel = os.path.relpath(path, root) if path.startswith(root) else path.lstrip("/")
    directory = Path(point) / rel if rel != "." else Path(point)
    top = Path(point)
    out: list[float] = []
    while True:
        quota = read(directory)
        if quota is not None:
            out.append(quota)
        if directory == top or top not in directory.parents:
            return out
        directory = directory.parent


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None
