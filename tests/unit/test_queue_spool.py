"""The spool: durable, atomic, group-committed, shared by processes."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtpgate.queue import tmpfiles
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.spool import MessageNotFound, Spool, SpoolError
from smtpgate.queue.state import MessageState

ENV = Envelope(
    mail_from="alice@example.org",
    rcpt_to=("bob@example.net",),
    auth_identity="alice",
    client_ip="192.0.2.7",
    helo="laptop.example.org",
    listener="submission",
    received_at=1_700_000_000.0,
)
DATA = b"Subject: hi\r\n\r\nhello\r\n.leading dot stays as spooled\r\n"


@pytest.fixture(params=[True, False], ids=["prefill", "no-prefill"])
async def spool(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "spool", prefill=request.param)
    yield s
    await s.close()


def _visible(s: Spool) -> list[str]:
    return sorted(os.listdir(s.directory / "queue"))


async def test_store_load_round_trip(spool: Spool) -> None:
    qid = await spool.store(ENV, DATA)
    assert spool.list_ids() == [qid]
    assert spool.load(qid) == (ENV, DATA)
    # Private: the envelope names the sender and the login.
    assert (spool.directory / "queue" / f"{qid}.msg").stat().st_mode & 0o777 == 0o600


async def test_store_stamps_a_missing_arrival_time(spool: Spool) -> None:
    before = time.time()
    unstamped = Envelope("a@x", ("b@y",), None, "192.0.2.1", "h", "l")
    qid = await spool.store(unstamped, b"x")
    env, _ = spool.load(qid)
    assert env.received_at >= before


async def test_store_sync_round_trip_and_empty_message(spool: Spool) -> None:
    qid = spool.store_sync(ENV, b"")
    assert spool.load(qid) == (ENV, b"")


async def test_ids_are_unique_sortable_and_validated(spool: Spool) -> None:
    ids = [spool.store_sync(ENV, DATA) for _ in range(20)]
    assert len(set(ids)) == 20
    assert spool.list_ids() == sorted(ids)
    for bad in ("../etc/passwd", "", "abc", ids[0] + "/x"):
        with pytest.raises(MessageNotFound):
            spool.load(bad)


async def test_concurrent_stores_are_all_durable_and_group_committed(spool: Spool) -> None:
    n = 200
    data = [DATA + str(i).encode() for i in range(n)]
    ids = await asyncio.gather(*(spool.store(ENV, d) for d in data))
    assert len(set(ids)) == n
    for qid, d in zip(ids, data, strict=True):
        assert spool.load(qid)[1] == d
    assert spool.stats.ops == n
    # 200 callers queued within one loop iteration cannot need 200 commits.
    assert spool.stats.batches < n
    assert spool.stats.largest_batch > 1


async def test_disk_work_never_runs_on_the_event_loop_thread(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real = tmpfiles.write_all

    def spy(fd: int, chunks: tuple[bytes, ...]) -> None:
        threads.append(threading.current_thread())
        real(fd, chunks)

    monkeypatch.setattr(tmpfiles, "write_all", spy)
    await spool.store(ENV, DATA)
    assert threads and threading.main_thread() not in threads


async def test_failed_temp_write_gives_spool_error_and_no_visible_file(spool: Spool) -> None:
    shutil.rmtree(spool.directory / "tmp")  # every temp file (pool too) is gone
    with pytest.raises(SpoolError):
        await spool.store(ENV, DATA)
    with pytest.raises(SpoolError):
        spool.store_sync(ENV, DATA)
    assert _visible(spool) == []


async def test_failed_rename_gives_spool_error_and_leaves_no_temp_file(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool", prefill=False)
    try:
        (tmp_path / "spool" / "queue").rename(tmp_path / "elsewhere")
        with pytest.raises(SpoolError):
            await s.store(ENV, DATA)
        assert os.listdir(tmp_path / "spool" / "tmp") == []
        assert os.listdir(tmp_path / "elsewhere") == []
    finally:
        (tmp_path / "elsewhere").rename(tmp_path / "spool" / "queue")
        await s.close()


async def test_failed_directory_fsync_takes_the_batch_back(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    dir_fd = spool._dir_fd
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if fd == dir_fd:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    results = await asyncio.gather(*(spool.store(ENV, DATA) for _ in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, SpoolError) for r in results)
    # The client will be told 451 and resend: nothing may stay to be delivered.
    assert _visible(spool) == []


async def test_disk_errors_name_the_spool_directory(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed write, directory sync or read names the spool's directory, not only
    the file's name: a machine with several spools (or a spool moved by a config
    change) left an operator guessing where the disk was full."""
    queue_dir = str(spool.directory / "queue")
    qid = await spool.store(ENV, DATA)

    def full(fd: int, chunks: tuple[bytes, ...]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(tmpfiles, "write_all", full)
        with caplog.at_level(logging.ERROR, logger="smtpgate.queue"), \
                pytest.raises(SpoolError) as written:
            await spool.store(ENV, DATA)
    assert f"cannot write {queue_dir}/" in str(written.value)
    assert f"cannot write {queue_dir}/" in caplog.text  # "spool: 1 of 1 operations failed"

    dir_fd = spool._dir_fd
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if fd == dir_fd:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", failing_fsync)
        with pytest.raises(SpoolError) as synced:
            await spool.store(ENV, DATA)
    assert f"cannot sync the spool directory {queue_dir}: " in str(synced.value)

    os.chmod(spool.message_path(qid), 0)
    if os.access(spool.message_path(qid), os.R_OK):  # root reads it anyway
        os.chmod(spool.message_path(qid), 0o600)
        os.rename(spool.message_path(qid), spool.message_path(qid) + ".x")
        os.mkdir(spool.message_path(qid))  # EISDIR on read
    with pytest.raises(SpoolError) as read:
        spool.load(qid)
    assert f"({queue_dir}/{qid}.msg)" in str(read.value)


async def test_store_after_close_is_refused(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool")
    await s.store(ENV, DATA)
    await s.close()
    with pytest.raises(SpoolError, match="closed"):
        await s.store(ENV, DATA)
    # The pool's unused files are gone with it.
    assert os.listdir(tmp_path / "spool" / "tmp") == []


async def test_cancelled_caller_does_not_break_the_writer(spool: Spool) -> None:
    task = asyncio.create_task(spool.store(ENV, DATA))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The write still completes (a duplicate at worst, never a loss), and the
    # writer goes on serving others; ops are committed in order.
    qid = await spool.store(ENV, DATA)
    assert len(spool.list_ids()) == 2 and qid in spool.list_ids()


def test_corrupt_or_truncated_message_is_detected(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool", prefill=False)
    qid = s.store_sync(ENV, DATA)
    path = tmp_path / "spool" / "queue" / f"{qid}.msg"
    whole = path.read_bytes()
    for broken in (whole[:-1], whole + b"x", b"garbage\n" + whole, b""):
        path.write_bytes(broken)
        with pytest.raises(SpoolError, match="corrupt"):
            s.load(qid)
    s.quarantine(qid)
    assert s.list_ids() == []
    assert (tmp_path / "spool" / "corrupt" / f"{qid}.msg").exists()


def test_state_is_saved_atomically_and_removed_with_the_message(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool", prefill=False)
    qid = s.store_sync(ENV, DATA)
    assert s.load_state(qid) is None
    state = MessageState.initial(ENV.rcpt_to)
    s.save_state_sync(qid, state)
    assert s.load_state(qid) == state
    assert os.listdir(tmp_path / "spool" / "tmp") == []
    s.remove_sync(qid)
    assert _visible(s) == []
    s.remove_sync(qid)  # idempotent: a retry after a crash in remove() is fine
    with pytest.raises(MessageNotFound):
        s.load(qid)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_recovery_scan_removes_what_dead_writers_left(tmp_path: Path) -> None:
    """After a crash: half-written temp files are never listed and are cleaned at
    start; files of live writers are left alone; orphan state files go."""
    s = Spool(tmp_path / "spool", prefill=False)
    kept = s.store_sync(ENV, DATA)
    tmp = tmp_path / "spool" / "tmp"
    dead = _dead_pid()
    leftovers = {
        f"{dead}.sgabcd1234.18f00000000-1-0-00000000.msg": b"SMTPGATE-SPOOL 1 99 99\n{half",
        f"{dead}.sgabcd1234.pool.1": b"",
        # Our own pid from an earlier life (containers restart as pid 1): another token.
        f"{os.getpid()}.sg00000000.pool.7": b"",
        "junk-without-pid": b"x",
    }
    for name, content in leftovers.items():
        (tmp / name).write_bytes(content)
    live = tmp / f"{os.getppid()}.sgfeedbeef.pool.1"  # a live writer, fresh file
    live.write_bytes(b"")
    old_live = tmp / f"{os.getppid()}.sgfeedbeef.pool.2"  # live pid, but an hour old
    old_live.write_bytes(b"")
    past = time.time() - tmpfiles.STALE_AGE - 10
    os.utime(old_live, (past, past))
    orphan = tmp_path / "spool" / "queue" / "18f00000000-1-2-00000003.state"
    orphan.write_bytes(b"{}")

    assert s.list_ids() == [kept]  # nothing half-written is ever listed

    restarted = Spool(tmp_path / "spool", prefill=False)
    assert sorted(os.listdir(tmp)) == [live.name]
    assert not orphan.exists()
    assert restarted.list_ids() == [kept]
    assert restarted.load(kept) == (ENV, DATA)


def test_delivery_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool", prefill=False)
    first = s.try_lock_delivery()
    assert first is not None
    assert s.try_lock_delivery() is None
    first.release()
    with s.try_lock_delivery() as again:  # type: ignore[union-attr]
        assert again is not None


_WRITER = """
import asyncio, sys
from pathlib import Path
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.spool import Spool
async def main():
    s = Spool(Path(sys.argv[1]))
    env = Envelope("a@x", ("b@y",), None, "192.0.2.1", "h", "l", received_at=1.0)
    ids = await asyncio.gather(*(s.store(env, b"m%d" % i) for i in range(int(sys.argv[2]))))
    await s.close()
    print("\\n".join(ids))
asyncio.run(main())
"""


def test_several_processes_store_into_one_spool(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    Spool(root, prefill=False)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(root), "40"],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    ids: list[str] = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        ids += out.split()
    assert len(ids) == 160 == len(set(ids))
    s = Spool(root, prefill=False)
    assert sorted(ids) == s.list_ids()
    assert os.listdir(root / "tmp") == []


def test_spool_error_is_what_the_server_catches() -> None:
    # The server answers 451 on SpoolError; a missing message is one too.
    assert issubclass(MessageNotFound, SpoolError)

