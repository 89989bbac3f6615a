"""Slots (queue/slots.py): a received message written into a durably named slot
pays one sync before its 250; unsealed slots are invisible; start-up recovers
dead writers' sealed slots, removes their unsealed ones and sets torn ones aside;
kill -9 at random points still loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest

from smtpgate.config import QueueConfig
from smtpgate.queue import incoming as incoming_mod
from smtpgate.queue import slots as slots_mod
from smtpgate.queue import tmpfiles
from smtpgate.queue.aio_sync import AioSync
from smtpgate.queue.delivery import DeliveryResult, QueuedMessage
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.incoming import Incoming
from smtpgate.queue.manage import QueueManager
from smtpgate.queue.spool import Spool, SpoolError
from smtpgate.queue.worker import DeliveryWorker

ENV = Envelope(mail_from="a@example.org", rcpt_to=("b@example.net",), auth_identity="a",
               client_ip="192.0.2.1", helo="client.test", listener="submission")
BODY = b"Subject: slot\r\n\r\nhello\r\n"


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    sp = Spool(tmp_path / "spool")
    assert sp.slots is not None and await asyncio.to_thread(sp.slots.wait_filled, 10)
    yield sp
    await sp.close()


def slot_names(sp: Spool) -> list[str]:
    return sorted(n for n in os.listdir(sp.directory / "queue") if slots_mod.is_slot(n))


async def flushed_into_slot(sp: Spool, data: bytes) -> Incoming:
    """A message whose first part was written (into a slot), not yet sealed."""
    inc = sp.receive(ENV, b"Received: by test\r\n")
    done = asyncio.Event()
    inc.on_flushed = done.set
    inc.write(data)
    await asyncio.wait_for(done.wait(), 10)
    return inc


def count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every fsync/fdatasync from now on, by the caller's thread name, except the
    slot pool's own background batches."""
    calls: list[str] = []

    def counting(real: Callable[[int], None], kind: str) -> Callable[[int], None]:
        def wrapper(fd: int) -> None:
            if threading.current_thread().name != "smtpgate-slot-pool":
                calls.append(kind)
            real(fd)
        return wrapper

    monkeypatch.setattr(os, "fsync", counting(os.fsync, "fsync"))
    monkeypatch.setattr(os, "fdatasync", counting(os.fdatasync, "fdatasync"))
    aio_submit = AioSync.submit

    def counting_aio(self: AioSync, fd: int, on_done: Callable[[OSError | None], None]) -> bool:
        started = aio_submit(self, fd, on_done)  # the kernel's sync (Linux AIO)
        if started:
            calls.append("fdatasync")
        return started

    monkeypatch.setattr(AioSync, "submit", counting_aio)
    return calls


async def test_one_sync_before_the_250(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_syncs(monkeypatch)
    inc = spool.receive(ENV, b"Received: by test\r\n")
    inc.write(BODY)
    qid = await spool.publish(inc)
    assert calls == ["fdatasync"]  # the data; no directory fsync
    assert inc.published and spool.list_ids() == [qid]
    assert spool.load(qid) == (spool.load(qid)[0], b"Received: by test\r\n" + BODY)
    assert f"{qid}.msg" in os.listdir(spool.directory / "queue")


async def test_without_a_ready_slot_it_is_two_syncs_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback (and the old path): data fsync, rename, directory fsync."""
    sp = Spool(tmp_path / "spool", prefill=False)
    calls = count_syncs(monkeypatch)
    inc = sp.receive(ENV)
    inc.write(BODY)
    qid = await sp.publish(inc)
    assert len(calls) == 2 and not inc.published
    assert sp.load(qid)[1] == BODY
    await sp.close()


def test_a_queue_directory_that_will_not_open_for_now_does_not_end_the_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The helper's first open of ``queue/`` refused (the open-file limit reached
    under a burst of connections) ended its thread with a traceback, and every later
    message of the worker went without a slot; it says why and makes slots once
    the directory opens."""
    queue = tmp_path / "queue"
    queue.mkdir()
    real = os.open
    refused: list[str] = []

    def open_(path: str, flags: int, *args: int, **kwargs: int) -> int:
        if flags & os.O_DIRECTORY and str(path) == str(queue) and not refused:
            refused.append(str(path))
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    pool = slots_mod.SlotPool(str(queue), target=4)
    try:
        assert pool.take() is None  # starts the helper, whose open is refused
        taken = None
        deadline = time.monotonic() + 30
        while taken is None and time.monotonic() < deadline:
            time.sleep(0.05)
            taken = pool.take() if refused else None  # each take wakes the helper
        assert taken is not None, "no slot after the directory opened again"
        os.close(taken[0])
    finally:
        pool.stop()
    assert caplog.text.count("cannot open") == 1


async def test_an_unsealed_slot_is_invisible_and_a_discard_removes_it(spool: Spool) -> None:
    before = set(slot_names(spool))
    inc = await flushed_into_slot(spool, b"x" * incoming_mod.FLUSH_AT)
    assert inc.path.endswith(slots_mod.SUFFIX) and os.path.getsize(inc.path) > 0
    assert spool.list_ids() == []
    assert QueueManager(spool).entries() == []
    worker = DeliveryWorker(spool, _NoDelivery(), QueueConfig())
    assert await worker.run_once() == 0
    inc.discard()
    for _ in range(100):
        if not os.path.exists(inc.path):
            break
        await asyncio.sleep(0.01)
    assert not os.path.exists(inc.path)
    assert set(slot_names(spool)) <= before


async def test_a_torn_message_fails_its_checksum_and_is_not_delivered(spool: Spool) -> None:
    inc = spool.receive(ENV)
    inc.write(BODY)
    qid = await spool.publish(inc)
    path = spool.directory / "queue" / f"{qid}.msg"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x20  # same size, one bit of the body changed
    path.write_bytes(bytes(raw))
    with pytest.raises(SpoolError, match="checksum"):
        spool.load(qid)
    deliverer = _NoDelivery()
    await DeliveryWorker(spool, deliverer, QueueConfig()).run_once()
    assert deliverer.calls == 0
    assert spool.list_ids() == []
    assert (spool.directory / "corrupt" / f"{qid}.msg").exists()


async def test_a_format_1_message_from_before_the_upgrade_still_loads(spool: Spool) -> None:
    qid = "18f00000000-1-0-00000001"
    header = ENV.to_json()
    (spool.directory / "queue" / f"{qid}.msg").write_bytes(
        b"SMTPGATE-SPOOL 1 %d %d\n%s\n%s" % (len(header), len(BODY), header, BODY))
    assert spool.list_ids() == [qid]
    assert spool.load(qid) == (ENV, BODY)
    assert spool.load_envelope(qid) == (ENV, len(BODY))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


async def test_start_up_recovers_dead_writers_slots_and_leaves_live_ones(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    qdir = spool.directory / "queue"
    dead = _dead_pid()

    def dead_slot(n: int) -> Path:
        return qdir / f"{dead}.sgabcd1234.{n:x}.slot"

    # Sealed, its rename to <id>.msg lost by a power cut: a message (maybe acked).
    inc = spool.receive(ENV)
    inc.write(BODY)
    sealed = await spool.publish(inc)
    os.rename(qdir / f"{sealed}.msg", dead_slot(1))
    # Sealed but torn: the sync never returned.
    inc = spool.receive(ENV)
    inc.write(BODY + b"torn")
    torn = await spool.publish(inc)
    raw = bytearray((qdir / f"{torn}.msg").read_bytes())
    raw[-2] ^= 0x01
    (qdir / f"{torn}.msg").unlink()
    dead_slot(2).write_bytes(bytes(raw))
    # Unsealed: written, never sealed; and an empty one never used.
    inc = await flushed_into_slot(spool, b"u" * incoming_mod.FLUSH_AT)
    dead_slot(3).write_bytes(Path(inc.path).read_bytes())
    dead_slot(4).write_bytes(b"")
    # A live writer's unsealed slot (the parent process, another token).
    live = qdir / f"{os.getppid()}.sgfeedbeef.1.slot"
    live.write_bytes(Path(inc.path).read_bytes())
    # A live writer's empty pool slot, unused for hours: still its pool's.
    idle = qdir / f"{os.getppid()}.sgfeedbeef.2.slot"
    idle.write_bytes(b"")
    past = time.time() - tmpfiles.STALE_AGE - 10
    os.utime(idle, (past, past))
    inc.discard()
    assert spool.list_ids() == []

    with caplog.at_level(logging.WARNING, logger="smtpgate.queue"):
        restarted = Spool(spool.directory, prefill=False)
    assert restarted.list_ids() == [sealed]
    assert restarted.load(sealed)[1] == BODY
    assert not any(dead_slot(n).exists() for n in (1, 2, 3, 4))
    assert live.exists() and idle.exists()
    assert (spool.directory / "corrupt" / dead_slot(2).name).exists()
    assert "torn write" in caplog.text
    await restarted.close()


async def test_a_sealed_slot_whose_pid_was_reused_is_recovered_at_once(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reboot (or a restart in a container) a dead writer's pid may belong to
    another process; one that started after the slot was last changed is not its
    writer, so the acknowledged message in it is recovered, not left for good."""
    qdir = spool.directory / "queue"
    inc = spool.receive(ENV)
    inc.write(BODY)
    sealed = await spool.publish(inc)
    slot = qdir / f"{os.getppid()}.sgabcd1234.1.slot"  # a pid that is alive
    os.rename(qdir / f"{sealed}.msg", slot)
    assert Spool(spool.directory, prefill=False).list_ids() == []  # its writer may run
    late = slot.stat().st_ctime + 60
    monkeypatch.setattr(tmpfiles, "process_start", lambda pid: late)
    restarted = Spool(spool.directory, prefill=False)
    assert restarted.list_ids() == [sealed]
    assert restarted.load(sealed)[1] == BODY
    await restarted.close()


def test_writer_alive_compares_the_process_start_with_the_file_change() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        started = tmpfiles.process_start(proc.pid)
        assert started is not None and abs(started - time.time()) < 30
        assert tmpfiles.writer_alive(proc.pid, "sgabcd1234", changed=started - 10) is False
        assert tmpfiles.writer_alive(proc.pid, "sgabcd1234", changed=started + 1) is True
        assert tmpfiles.writer_alive(proc.pid, "sgabcd1234") is True
    finally:
        proc.kill()
        proc.wait()
    assert tmpfiles.writer_alive(proc.pid, "sgabcd1234") is False


def test_a_killed_writer_not_yet_reaped_is_not_alive() -> None:
    """A writer killed with its parent (``PR_SET_PDEATHSIG``) is a zombie until pid 1
    reaps it, which a container's init may do seconds later; ``kill(pid, 0)`` still
    succeeds on a zombie, so a server restarted meanwhile took it for a live writer
    and left its sealed slots and temp files for the start-up after."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not become a zombie"
            time.sleep(0.01)
        assert tmpfiles.writer_alive(proc.pid, "sgabcd1234") is False
        assert tmpfiles.writer_alive(proc.pid, "sgabcd1234", changed=time.time()) is False
    finally:
        proc.wait()  # reaped only now


async def test_a_slot_it_may_not_touch_does_not_stop_a_start_up(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """E.g. ``smtpgate queue list`` run by a user who may read the spool only."""
    inc = spool.receive(ENV)
    inc.write(BODY)
    qid = await spool.publish(inc)
    slot = spool.directory / "queue" / f"{_dead_pid()}.sgabcd1234.1.slot"
    os.rename(spool.directory / "queue" / f"{qid}.msg", slot)

    def refused(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", refused)
    with caplog.at_level(logging.WARNING, logger="smtpgate.queue"):
        reader = Spool(spool.directory, prefill=False)
    assert slot.exists() and reader.list_ids() == []
    assert "cannot recover slot" in caplog.text
    await reader.close()


class _NoDelivery:
    def __init__(self) -> None:
        self.calls = 0

    async def deliver(
        self, message: QueuedMessage, recipients: tuple[str, ...]
    ) -> Mapping[str, DeliveryResult]:
        self.calls += 1
        raise AssertionError("nothing here may be delivered")

    async def close(self) -> None:
        pass


# --- kill -9 on the slot path ---------------------------------------------------------

ROUNDS, PER_ROUND = 3, 40


async def _child(spool_dir: Path, maildir: Path, first: int, count: int) -> None:
    from smtpgate.queue.maildir import MaildirDeliverer

    spool = Spool(spool_dir)
    deliverer = MaildirDeliverer(maildir)
    worker = DeliveryWorker(spool, deliverer, QueueConfig(), poll_interval=0.05)
    if count == 0:
        while spool.list_ids():
            await worker.run_once()
        await deliverer.close()
        await spool.close()
        return
    assert spool.slots is not None
    await asyncio.to_thread(spool.slots.wait_filled, 10)
    runner = asyncio.create_task(worker.run())

    async def send(n: int) -> None:
        inc = spool.receive(ENV)
        inc.write(b"Message-ID: <%d@crash.test>\r\n\r\nbody\r\n" % n)
        await spool.publish(inc)
        sys.stdout.write(f"ACK {n}\n")
        sys.stdout.flush()
        worker.wake()

    for n in range(first, first + count, 2):
        await asyncio.gather(*(send(k) for k in range(n, min(n + 2, first + count))))
    sys.stdout.write("DONE\n")
    sys.stdout.flush()
    await runner


def _run(spool_dir: Path, maildir: Path, first: int, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, str(spool_dir), str(maildir), str(first), str(count)],
        stdout=subprocess.PIPE, text=True,
    )


def test_kill_9_on_the_slot_path_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    from tests.unit.test_queue_crash import delivered_numbers

    spool_dir, maildir = tmp_path / "spool", tmp_path / "Maildir"
    rng = random.Random(1313)
    acked: set[int] = set()
    for rnd in range(ROUNDS):
        proc = _run(spool_dir, maildir, rnd * PER_ROUND, PER_ROUND)
        assert proc.stdout is not None
        kill_after = rng.randrange(3, PER_ROUND)
        seen = 0
        while seen < kill_after:
            line = proc.stdout.readline()
            assert line, f"child exited early (rc={proc.poll()})"
            if line.startswith("ACK "):
                acked.add(int(line.split()[1]))
                seen += 1
            elif line.startswith("DONE"):
                break
        time.sleep(rng.random() * 0.01)
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
        acked |= {int(ln.split()[1]) for ln in rest.splitlines() if ln.startswith("ACK ")}
    drain = _run(spool_dir, maildir, 0, 0)
    drain.communicate(timeout=120)
    assert drain.returncode == 0
    got = delivered_numbers(maildir)
    assert len(got) == len(set(got)), "a message was delivered twice"
    assert acked <= set(got), f"acknowledged but lost: {sorted(acked - set(got))}"
    assert os.listdir(spool_dir / "queue") == []


if __name__ == "__main__":
    asyncio.run(_child(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))


async def test_the_admin_tools_leave_the_slots_to_the_server(spool: Spool) -> None:
    """``smtpgate queue``/``status`` open the spool with ``tidy=False``: a tool in
    another pid namespace would take a live writer for dead and remove its slot."""
    qdir = spool.directory / "queue"
    inc = await flushed_into_slot(spool, b"u" * incoming_mod.FLUSH_AT)
    looks_dead = qdir / f"{_dead_pid()}.sgabcd1234.1.slot"
    looks_dead.write_bytes(Path(inc.path).read_bytes())
    tool = Spool(spool.directory, prefill=False, tidy=False)
    assert looks_dead.exists() and tool.list_ids() == []
    await tool.close()
    inc.discard()
    server = Spool(spool.directory, prefill=False)  # the server's start-up tidies
    assert not looks_dead.exists()
    await server.close()
