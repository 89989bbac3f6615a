"""The free-space reserve MAIL keeps on the spool's file system (queue/space.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path

import pytest

from smtpgate.queue import space as space_mod
from smtpgate.queue.space import MIN_FREE_INODES, SpoolSpace, free_bytes, free_inodes, out_of_space
from smtpgate.queue.spool import SpoolError
from smtpgate.smtp import replies as R

MB = 1_000_000


class Disk:
    """A file system whose free space the test sets; counts the measurements."""

    def __init__(self, free: int, inodes: int | None = None) -> None:
        self.free = free
        self.inodes = inodes
        self.calls = 0
        self.fail = False

    def free_inodes(self, path: Path) -> int | None:
        return self.inodes

    def __call__(self, path: Path) -> int:
        self.calls += 1
        if self.fail:
            raise OSError(errno.EIO, "Input/output error")
        return self.free


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gauge(free: int, reserve: int = 50 * MB,
          inodes: int | None = None) -> tuple[SpoolSpace, Disk, Clock]:
    disk, clock = Disk(free, inodes), Clock()
    s = SpoolSpace(Path("/spool"), reserve, measure=disk, inodes=disk.free_inodes, clock=clock)
    s.measure_now()
    return s, disk, clock


def test_mail_is_refused_452_4_3_1_below_the_reserve_and_with_a_declared_size() -> None:
    s, _, _ = gauge(free=60 * MB)
    assert s.refused() is None
    assert s.refused(5 * MB) is None  # 50 + 5 <= 60
    assert s.refused(20 * MB) is R.INSUFFICIENT_STORAGE  # RFC 1870 §6.2: 50 + 20 > 60
    assert (R.INSUFFICIENT_STORAGE.code, R.INSUFFICIENT_STORAGE.enhanced) == (452, "4.3.1")
    low, _, _ = gauge(free=49 * MB)
    assert low.refused() is R.INSUFFICIENT_STORAGE


def test_no_reserve_or_no_measurement_refuses_nothing() -> None:
    s, _, _ = gauge(free=0, reserve=0)
    assert s.refused(10**12) is None
    never = SpoolSpace(Path("/spool"), 50 * MB, measure=Disk(0), clock=Clock())
    assert never.refused() is None  # not measured (outside a loop): no grounds


async def test_the_space_is_measured_on_a_thread_at_most_once_a_second() -> None:
    s, disk, clock = gauge(free=60 * MB)
    assert disk.calls == 1
    for _ in range(100):
        assert s.refused() is None
    await asyncio.sleep(0.05)
    assert disk.calls == 1  # the start-up figure is fresh
    clock.now += space_mod.MAX_AGE
    disk.free = 10 * MB  # the disk filled up meanwhile
    for _ in range(50):
        s.refused()  # the first starts a measurement; the rest use the figure there is
    for _ in range(100):
        await asyncio.sleep(0.01)
        if disk.calls == 2:
            break
    assert disk.calls == 2  # one measurement for all those MAILs
    await asyncio.sleep(0.01)
    assert s.refused() is R.INSUFFICIENT_STORAGE


async def test_a_failed_measurement_keeps_the_last_figure_and_is_retried_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s, disk, clock = gauge(free=10 * MB)
    disk.fail = True
    clock.now += space_mod.MAX_AGE
    with caplog.at_level(logging.WARNING, logger="smtpgate.queue"):
        assert s.refused() is R.INSUFFICIENT_STORAGE
        for _ in range(100):
            await asyncio.sleep(0.01)
            if disk.calls == 2:
                break
        await asyncio.sleep(0.01)
    assert disk.calls == 2 and "cannot read the free space of /spool" in caplog.text
    assert s.refused() is R.INSUFFICIENT_STORAGE  # still the last figure
    await asyncio.sleep(0.05)
    assert disk.calls == 2  # not again before MAX_AGE


def test_refusals_are_logged_once_a_minute_naming_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s, _, clock = gauge(free=10 * MB)
    with caplog.at_level(logging.WARNING, logger="smtpgate.queue"):
        for _ in range(5):
            s.refused()
        clock.now += space_mod.WARN_EVERY
        s.refused(MB)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("queue.min_free_space" in ln and "452 4.3.1" in ln
                                   for ln in lines)
    assert "10 MB free, under the 50 MB" in lines[0] and "declared SIZE of 1000000" in lines[1]


def test_a_full_disk_is_recognised_through_the_spool_error() -> None:
    for code, full in ((errno.ENOSPC, True), (errno.EDQUOT, True), (errno.EIO, False)):
        try:
            try:
                raise OSError(code, "x")
            except OSError as e:
                raise SpoolError("cannot write q.msg") from e
        except SpoolError as wrapped:
            assert out_of_space(wrapped) is full
    assert not out_of_space(None) and not out_of_space(ValueError())


def test_free_bytes_reads_the_real_file_system(tmp_path: Path) -> None:
    import os
    st = os.statvfs(tmp_path)
    assert abs(free_bytes(tmp_path) - st.f_bavail * st.f_frsize) < 64 * MB
    assert free_bytes(tmp_path) > 0


def test_mail_is_refused_452_4_3_1_while_the_file_system_is_out_of_inodes(
        caplog: pytest.LogCaptureFixture) -> None:
    """Bytes to spare but (almost) no inode left: every new file would fail with
    ENOSPC at the end of the data, so MAIL says so first; logged once a minute."""
    s, _, _ = gauge(free=10_000 * MB, inodes=MIN_FREE_INODES - 1)
    for _ in range(3):
        assert s.refused() is R.INSUFFICIENT_STORAGE
    warned = [r.getMessage() for r in caplog.records if "inodes" in r.getMessage()]
    assert len(warned) == 1 and f"has {MIN_FREE_INODES - 1} free inodes" in warned[0]
    ok, _, _ = gauge(free=10_000 * MB, inodes=MIN_FREE_INODES)
    assert ok.refused() is None
    uncounted, _, _ = gauge(free=10_000 * MB, inodes=None)  # btrfs: f_files 0
    assert uncounted.refused() is None
    off, _, _ = gauge(free=10_000 * MB, reserve=0, inodes=0)  # queue.min_free_space = 0
    assert off.refused() is None


def test_free_inodes_reads_the_real_file_system(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    inodes = free_inodes(tmp_path)
    if st.f_files == 0:
        assert inodes is None
    else:
        assert inodes is not None and abs(inodes - st.f_favail) < 10_000
