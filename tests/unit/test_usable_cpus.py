"""The default number of workers counts the CPUs smtpgate may use
(smtpgate/usable_cpus.py): its affinity mask and its cgroup's CPU quota, not the
host's CPUs. Cgroup trees are made in a temp dir, as the kernel lays them out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from smtpgate.usable_cpus import cgroup_cpu_quota

V2_MOUNT = "30 25 0:26 {root} {point} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n"
V1_MOUNT = ("33 25 0:29 {root} {point} rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup "
            "rw,cpu,cpuacct\n")


def tree(tmp_path: Path, proc_cgroup: str, mountinfo: str) -> tuple[Path, Path]:
    (tmp_path / "cgroup").write_text(proc_cgroup)
    (tmp_path / "mountinfo").write_text(mountinfo)
    return tmp_path / "cgroup", tmp_path / "mountinfo"


def write(directory: Path, **files: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("_", ".", 1)).write_text(text + "\n")


def test_a_systemd_unit_s_cpu_quota_v2(tmp_path: Path) -> None:
    """CPUQuota=150% on the unit: cpu.max "150000 100000" in its cgroup."""
    point = tmp_path / "fs"
    write(point / "system.slice" / "smtpgate.service", cpu_max="150000 100000")
    write(point / "system.slice", cpu_max="max 100000")
    files = tree(tmp_path, "0::/system.slice/smtpgate.service\n",
                 V2_MOUNT.format(root="/", point=point))
    assert cgroup_cpu_quota(*files) == 1.5


def test_the_tightest_quota_of_the_cgroup_and_its_parents_counts(tmp_path: Path) -> None:
    point = tmp_path / "fs"
    write(point / "machine.slice" / "box", cpu_max="400000 100000")
    write(point / "machine.slice", cpu_max="50000 100000")
    files = tree(tmp_path, "0::/machine.slice/box\n", V2_MOUNT.format(root="/", point=point))
    assert cgroup_cpu_quota(*files) == 0.5


def test_a_container_s_quota_v1_seen_from_inside(tmp_path: Path) -> None:
    """docker --cpus=2 on a cgroup v1 host: the container's cgroup is mounted as the
    top of /sys/fs/cgroup/cpu,cpuacct, and /proc/self/cgroup names its host path."""
    point = tmp_path / "cpu,cpuacct"
    write(point, cpu_cfs_quota_us="200000", cpu_cfs_period_us="100000")
    files = tree(tmp_path, "4:cpu,cpuacct:/docker/0123abcd\n1:name=systemd:/docker/0123abcd\n",
                 V1_MOUNT.format(root="/docker/0123abcd", point=point))
    assert cgroup_cpu_quota(*files) == 2.0


def test_no_quota_or_nothing_readable_is_no_limit(tmp_path: Path) -> None:
    point = tmp_path / "fs"
    write(point, cpu_max="max 100000")
    assert cgroup_cpu_quota(*tree(tmp_path, "0::/\n", V2_MOUNT.format(root="/", point=point))) \
        is None
    v1 = tmp_path / "v1"
    write(v1, cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000")
    assert cgroup_cpu_quota(*tree(tmp_path, "1:cpu:/\n", V1_MOUNT.format(root="/", point=v1))) \
        is None
    assert cgroup_cpu_quota(tmp_path / "missing", tmp_path / "missing") is None


def test_the_affinity_mask_counts_not_the_host_s_cpus() -> None:
    """A real ``taskset -c 0`` (a container's cpuset does the same): one CPU, so one
    worker by default, whatever os.cpu_count() says."""
    code = ("from smtpgate.config import ServerConfig; from smtpgate.usable_cpus import "
            "usable_cpus; print(usable_cpus(), ServerConfig().effective_workers)")
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.split() == ["1", "1"]
