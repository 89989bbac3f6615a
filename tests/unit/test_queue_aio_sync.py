"""Linux AIO syncs (`queue/aio_sync.py`) on real files: the spool's seal and the
Maildir's batches use them, so what they report must be what fsync reports."""

from __future__ import annotations

import asyncio
import errno
import os
import platform
import sys
import threading
from pathlib import Path

import pytest

from smtpgate.queue import aio_sync, tmpfiles
from smtpgate.queue.aio_sync import AioBatch, AioSync
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.spool import Spool

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"),
    reason="Linux AIO on x86_64 and aarch64 only (elsewhere the thread path is used)")

ENV = Envelope(mail_from="a@example.org", rcpt_to=("b@example.net",), auth_identity="a",
               client_ip="192.0.2.1", helo="client.test", listener="submission")


def _files(tmp_path: Path, n: int) -> list[int]:
    fds = []
    for i in range(n):
        fd = os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.write(fd, b"x" * (100 + i))
        fds.append(fd)
    return fds


async def test_syncs_in_flight_at_once_all_complete(tmp_path: Path) -> None:
    aio = AioSync.open()
    assert aio is not None and aio.usable and aio.serves_running_loop()
    fds = _files(tmp_path, 40)
    try:
        await asyncio.gather(*(aio.fdatasync(fd) for fd in fds))
        assert not aio._waiting  # every completion answered
    finally:
        aio.close()
        for fd in fds:
            os.close(fd)
    assert not aio.usable


async def test_a_closed_descriptor_is_the_error_fsync_gives(tmp_path: Path) -> None:
    aio = AioSync.open()
    assert aio is not None
    fd = _files(tmp_path, 1)[0]
    os.close(fd)
    try:
        with pytest.raises(OSError) as caught:
            await aio.fdatasync(fd)
        assert caught.value.errno == errno.EBADF
        assert aio.usable  # one bad descriptor does not turn AIO off
    finally:
        aio.close()


async def test_a_file_without_fsync_falls_back_to_a_thread_and_turns_aio_off() -> None:
    """A pipe has no fsync: the kernel refuses the AIO sync with EINVAL; the sync
    is then tried on a thread, which says the same as fdatasync always did."""
    aio = AioSync.open()
    assert aio is not None
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as caught:
            await aio.fdatasync(w)
        assert caught.value.errno == errno.EINVAL
        assert not aio.usable
    finally:
        aio.close()
        os.close(r)
        os.close(w)


async def test_close_answers_syncs_still_in_flight(tmp_path: Path) -> None:
    aio = AioSync.open()
    assert aio is not None
    fds = _files(tmp_path, 8)
    waiting = [asyncio.ensure_future(aio.fdatasync(fd)) for fd in fds]
    await asyncio.sleep(0)  # submitted, not yet collected
    aio.close()
    done = await asyncio.gather(*waiting, return_exceptions=True)
    assert done == [None] * 8
    for fd in fds:
        os.close(fd)


def test_a_batch_syncs_each_file_and_names_the_bad_one(tmp_path: Path) -> None:
    batch = AioBatch.open()
    assert batch is not None and batch.usable
    fds = _files(tmp_path, 70)  # more than one submission's worth
    os.close(fds[5])
    try:
        results = batch.fsync_all(fds)
        assert results is not None and len(results) == 70
        assert isinstance(results[5], OSError) and results[5].errno == errno.EBADF
        assert all(r is None for i, r in enumerate(results) if i != 5)
    finally:
        batch.close()
        for i, fd in enumerate(fds):
            if i != 5:
                os.close(fd)


def test_a_batch_the_kernel_refuses_is_handed_back(tmp_path: Path) -> None:
    batch = AioBatch.open()
    assert batch is not None
    r, w = os.pipe()
    try:
        assert batch.fsync_all([w, r]) is None  # the caller syncs them its own way
        assert not batch.usable
    finally:
        os.close(r)
        os.close(w)


async def test_without_aio_the_seal_runs_on_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """io_setup refused (a seccomp filter, fs.aio-max-nr): the spool still stores."""
    monkeypatch.setattr(aio_sync, "_SYSCALLS", {})
    spool = Spool(tmp_path / "spool")
    inc = spool.receive(ENV)
    inc.write(b"Subject: t\r\n\r\nbody\r\n")
    qid = await spool.publish(inc)
    assert spool._aio is None and spool.load(qid)[1] == b"Subject: t\r\n\r\nbody\r\n"
    await spool.close()


async def test_no_descriptor_for_the_eventfd_stores_the_message_and_tries_aio_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first message arriving while the open-file limit is reached (a burst of
    connections) got a 451 and an "unexpected error" traceback in the log: the
    eventfd for AIO syncs could not be made. It is stored with a thread's sync,
    said once, and the next message sets AIO up."""
    real = os.eventfd
    refused: list[int] = []

    def eventfd(initval: int, flags: int = 0) -> int:
        if not refused:
            refused.append(initval)
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real(initval, flags)

    monkeypatch.setattr(os, "eventfd", eventfd)
    spool = Spool(tmp_path / "spool")
    try:
        for n in range(2):
            inc = spool.receive(ENV)
            inc.write(b"Subject: t\r\n\r\nbody %d\r\n" % n)
            qid = await spool.publish(inc)
            assert spool.load(qid)[1] == b"Subject: t\r\n\r\nbody %d\r\n" % n
        assert refused and spool._aio is not None and spool._aio.usable
        assert caplog.text.count("no eventfd for AIO syncs") == 1
    finally:
        await spool.close()


async def test_a_cancelled_publish_still_seals_and_names_the_message(tmp_path: Path) -> None:
    """As with the thread: the caller that gave up does not leave a half-sealed file."""
    spool = Spool(tmp_path / "spool")
    assert spool.slots is not None and spool.slots.wait_filled(10)
    inc = spool.receive(ENV)
    inc.write(b"Subject: t\r\n\r\nbody\r\n")
    task = asyncio.ensure_future(spool.publish(inc))
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if spool.list_ids():
            break
        await asyncio.sleep(0.01)
    assert spool.list_ids() == [inc.qid]
    assert spool.load(inc.qid)[1] == b"Subject: t\r\n\r\nbody\r\n"
    await spool.close()


async def test_a_file_to_be_made_is_made_on_a_thread_not_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No slot or pooled file ready (a burst, the first messages): creating one can
    wait on the journal, so the seal's write goes to the thread; the sync is AIO."""
    made_on: list[str] = []
    real = tmpfiles.open_new

    def open_new(path: str) -> int:
        made_on.append(threading.current_thread().name)
        return real(path)

    monkeypatch.setattr(tmpfiles, "open_new", open_new)
    spool = Spool(tmp_path / "spool", prefill=False)
    inc = spool.receive(ENV)
    inc.write(b"Subject: t\r\n\r\nbody\r\n")
    qid = await spool.publish(inc)
    assert spool._aio is not None  # the AIO path was taken
    assert made_on and threading.main_thread().name not in made_on, made_on
    assert spool.load(qid)[1] == b"Subject: t\r\n\r\nbody\r\n"
    await spool.close()


async def test_a_failed_sync_of_the_seal_stores_nothing_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's answer is the only word on the message's durability: an error
    there is a refused message (the client gets a 4xx), and its file is gone."""
    from smtpgate.queue.spool import SpoolError

    def failing(self: AioSync, fd: int, on_done: object) -> bool:
        asyncio.get_running_loop().call_soon(on_done, OSError(errno.EIO, "I/O error"))
        return True

    spool = Spool(tmp_path / "spool")
    assert spool.slots is not None and spool.slots.wait_filled(10)
    monkeypatch.setattr(AioSync, "submit", failing)
    inc = spool.receive(ENV)
    inc.write(b"Subject: t\r\n\r\nbody\r\n")
    with pytest.raises(SpoolError, match="I/O error"):
        await spool.publish(inc)
    assert spool.list_ids() == []
    assert not os.path.exists(inc.path)
    await spool.close()


async def test_a_sync_the_kernel_will_not_start_after_the_write_is_done_on_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Too many syncs in flight, or a file system that refuses AIO syncs: the rest is
    already written and stamped, so only the sync and the name are left to the
    thread; the message is stored once, intact."""
    synced_on: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced_on.append(threading.current_thread().name)
        real(fd)

    spool = Spool(tmp_path / "spool")
    assert spool.slots is not None and spool.slots.wait_filled(10)
    monkeypatch.setattr(AioSync, "submit", lambda self, fd, on_done: False)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    inc = spool.receive(ENV)
    body = b"Subject: t\r\n\r\n" + b"line\r\n" * 50
    inc.write(body)
    qid = await spool.publish(inc)
    assert synced_on and threading.main_thread().name not in synced_on, synced_on
    assert spool.list_ids() == [qid] and spool.load(qid)[1] == body
    await spool.close()
