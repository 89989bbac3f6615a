"""The durable spool: a 250 after DATA means the message is here and fsynced.

Theory of operation
-------------------
Layout under the spool directory::

    tmp/                 files being written; never read by anyone
    queue/<id>.msg       a message: header line, envelope JSON, message bytes
    queue/<id>.state     per-recipient delivery state (absent = nothing tried yet)
    corrupt/             files that failed to parse, kept for a human
    delivery.lock        flock()ed by the one process that delivers

Every file reaches ``queue/`` the same way: written to ``tmp/``, fsynced, renamed
into ``queue/``, and then ``queue/`` itself is fsynced. The rename is atomic, so a
reader sees either no file or a complete one; the directory fsync is what makes
the new name survive a power cut (the step chasquid's safeio skips). Nothing in
``tmp/`` is ever delivered, so a crash mid-write loses only a message that was
never acknowledged.

Throughput comes from group commit. `store` never touches the disk on the event
loop: it queues the message for one writer thread and awaits a future. The writer
takes everything queued so far, writes and fsyncs each file, renames them all and
fsyncs ``queue/`` once for the whole batch, then resolves the futures with one
``call_soon_threadsafe`` per event loop. Under load the batch grows and the cost
of the directory fsync is shared; a lone message still pays two fsyncs, the
minimum for a new file whose name must be durable.

Several processes may share a spool (server worker processes). Ids embed time,
pid, a per-process counter and random bits, so they are unique without any
coordination; temp names (see `tmpfiles`) tell a dead writer's leftovers from a
live writer's work, so start-up clean-up never pulls a file from under another
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

from smtpgate.queue import tmpfiles
from smtpgate.queue.envelope import Envelope, EnvelopeFormatError
from smtpgate.queue.state import MessageState, StateFormatError

log = logging.getLogger("smtpgate.queue")

_MAGIC = b"SMTPGATE-SPOOL 1"
_ID = re.compile(r"[0-9a-f]{1,16}(?:-[0-9a-f]{1,16}){3}\Z")
_MSG = ".msg"
_STATE = ".state"
#: Upper bound on one group commit, so the first message of a flood is not held
#: back behind thousands of others.
MAX_BATCH = 256
#: Shared by every Spool in the process, so two Spools never mint the same id.
_counter = itertools.count()


class SpoolError(Exception):
    """The spool could not do what was asked; for `store`, the message is NOT safe
    and the client must be told to retry (451)."""


class MessageNotFound(SpoolError):
    """No message with that id (already delivered and removed, or never existed)."""


@dataclass(slots=True)
class SpoolStats:
    """Counters of the group-commit writer, for tests, benchmarks and metrics."""

    stored: int = 0
    failed: int = 0
    batches: int = 0
    largest_batch: int = 0


class _StoreOp:
    """One `store` call on its way through the writer thread."""

    __slots__ = ("data", "envelope", "error", "future", "loop", "qid")

    def __init__(
        self,
        qid: str,
        envelope: Envelope,
        data: bytes,
        loop: asyncio.AbstractEventLoop | None,
        future: asyncio.Future[str] | None,
    ) -> None:
        self.qid = qid
        self.envelope = envelope
        self.data = data
        self.loop = loop
        self.future = future
        self.error: OSError | None = None


class DeliveryLock:
    """An exclusive ``flock`` on ``delivery.lock``: only its holder delivers.

    The kernel drops the lock when the process dies, even by ``kill -9``, so a
    crashed worker never blocks its successor.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Spool:
    """See the module docstring. Construct at start-up: it creates the directories
    and removes temp files left by dead writers (blocking, once)."""

    def __init__(self, directory: Path, *, prefill: bool = True) -> None:
        self.directory = directory
        self._queue_dir = directory / "queue"
        self._tmp_dir = directory / "tmp"
        self._corrupt_dir = directory / "corrupt"
        for d in (directory, self._queue_dir, self._tmp_dir, self._corrupt_dir):
            _make_dir_durably(d)
        self._qdir = str(self._queue_dir)
        self._tdir = str(self._tmp_dir)
        self._dir_fd = os.open(self._qdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._ops: queue.SimpleQueue[_StoreOp | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._pool = tmpfiles.TempPool(self._tdir) if prefill else None
        self._lock = threading.Lock()
        self._closed = False
        self.stats = SpoolStats()
        self._remove_stale_tmp()
        self._remove_orphan_state()

    # --- storing ----------------------------------------------------------------

    async def store(self, envelope: Envelope, data: bytes) -> str:
        """Make the message durable; returns its queue id.

        Resolves only after the file and ``queue/`` are fsynced. Never blocks the
        event loop. If the caller is cancelled meanwhile, the write still completes:
        the message may then be delivered although the client saw no 250 (a
        duplicate at worst, never a loss).

        Raises:
            SpoolError: the message was not stored (and is not visible in the queue).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._submit(_StoreOp(_new_id(), _stamped(envelope), data, loop, future))
        return await future

    def store_sync(self, envelope: Envelope, data: bytes) -> str:
        """`store` for tests and tools: writes in the calling thread, no batching.

        Raises:
            SpoolError: as `store`.
        """
        op = _StoreOp(_new_id(), _stamped(envelope), data, None, None)
        self._commit([op], None)
        if op.error is not None:
            raise SpoolError(f"cannot store message: {op.error}") from op.error
        return op.qid

    def _submit(self, op: _StoreOp) -> None:
        with self._lock:
            if self._closed:
                raise SpoolError("spool is closed")
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._writer_main, name="smtpgate-spool-writer", daemon=True
                )
                self._writer.start()
                if self._pool is not None:
                    self._pool.start()
            self._ops.put(op)

    def _writer_main(self) -> None:
        ops = self._ops
        while True:
            first = ops.get()
            if first is None:
                return
            batch = [first]
            stop = False
            # Group commit: take whatever else is already queued, without waiting.
            while len(batch) < MAX_BATCH:
                try:
                    op = ops.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                batch.append(op)
            try:
                self._commit(batch, self._pool)
            except Exception as e:  # a bug: fail this batch, keep the thread alive
                log.exception("spool writer failed")
                for op in batch:
                    op.error = op.error or OSError(f"spool writer failed: {e!r}")
            _settle(batch)
            if stop:
                return

    def _commit(self, batch: Sequence[_StoreOp], pool: tmpfiles.TempPool | None) -> None:
        """Write, fsync, rename and directory-fsync a batch; sets ``op.error`` on
        every op that is not durable. Runs in the writer thread (or store_sync's)."""
        prefix = tmpfiles.prefix(self._tdir)
        written: list[tuple[_StoreOp, str]] = []
        for op in batch:
            tmp = ""
            try:
                header = op.envelope.to_json()
                first_line = b"%s %d %d\n" % (_MAGIC, len(header), len(op.data))
                taken = pool.take() if pool is not None else None
                if taken is not None:
                    fd, tmp = taken
                else:
                    tmp = f"{prefix}{op.qid}{_MSG}"
                    fd = tmpfiles.open_new(tmp)
                # Durability step 1: the content is on disk before it gets a name
                # in queue/.
                tmpfiles.write_and_sync(fd, (first_line, header, b"\n", op.data))
            except OSError as e:
                op.error = e
                if tmp:
                    tmpfiles.unlink_quietly(tmp)
            else:
                written.append((op, tmp))
        published: list[_StoreOp] = []
        for op, tmp in written:
            try:
                # Step 2: atomic publication; a reader sees nothing or everything.
                os.rename(tmp, f"{self._qdir}/{op.qid}{_MSG}")
            except OSError as e:
                op.error = e
                tmpfiles.unlink_quietly(tmp)
            else:
                published.append(op)
        if published:
            try:
                # Step 3: one directory fsync makes every rename of the batch durable.
                os.fsync(self._dir_fd)
            except OSError as e:
                # The names may or may not survive a crash; the client will be told
                # 451 and resend, so take them back (a duplicate at worst).
                for op in published:
                    op.error = e
                    tmpfiles.unlink_quietly(f"{self._qdir}/{op.qid}{_MSG}")
        failed = sum(1 for op in batch if op.error is not None)
        stats = self.stats
        stats.batches += 1
        stats.largest_batch = max(stats.largest_batch, len(batch))
        stats.stored += len(batch) - failed
        stats.failed += failed
        if failed:
            log.error("spool: %d of %d messages not stored: %s", failed, len(batch),
                      next(op.error for op in batch if op.error is not None))

    async def close(self) -> None:
        """Finish queued writes, stop the writer thread, release the directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            writer = self._writer
            if writer is not None:
                self._ops.put(None)
        if writer is not None:
            await asyncio.to_thread(writer.join)
        if self._pool is not None:
            await asyncio.to_thread(self._pool.stop)
        os.close(self._dir_fd)

    # --- reading ----------------------------------------------------------------

    def list_ids(self) -> list[str]:
        """Ids of every message in the queue, oldest first (ids start with the time)."""
        ids = [n[: -len(_MSG)] for n in os.listdir(self._qdir) if n.endswith(_MSG)]
        ids.sort()
        return ids

    def load(self, qid: str) -> tuple[Envelope, bytes]:
        """The envelope and message bytes of ``qid``.

        Raises:
            MessageNotFound: no such message.
            SpoolError: unreadable or corrupt (see `quarantine`).
        """
        path = self._path(qid, _MSG)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise MessageNotFound(qid) from None
        except OSError as e:
            raise SpoolError(f"cannot read {qid}: {e}") from e
        return _parse_message(qid, raw)

    def load_state(self, qid: str) -> MessageState | None:
        """The delivery state of ``qid``; None if nothing was recorded yet.

        Raises:
            SpoolError: unreadable or corrupt.
        """
        try:
            with open(self._path(qid, _STATE), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SpoolError(f"cannot read state of {qid}: {e}") from e
        try:
            return MessageState.from_json(raw)
        except StateFormatError as e:
            raise SpoolError(f"corrupt state of {qid}: {e}") from None

    # --- delivery bookkeeping (blocking: call via asyncio.to_thread) -------------

    def save_state(self, qid: str, state: MessageState) -> None:
        """Replace the delivery state of ``qid`` atomically and durably.

        Raises:
            SpoolError: not saved; the previous state (if any) is intact.
        """
        final = self._path(qid, _STATE)
        tmp = f"{tmpfiles.prefix(self._tdir)}{qid}{_STATE}.{next(_counter):x}"
        try:
            # fsynced before it gets its name
            tmpfiles.write_and_sync(tmpfiles.open_new(tmp), (state.to_json(),))
            os.rename(tmp, final)  # atomic replacement: old state or new, never half
            os.fsync(self._dir_fd)  # the new name survives a power cut
        except OSError as e:
            tmpfiles.unlink_quietly(tmp)
            raise SpoolError(f"cannot save state of {qid}: {e}") from e

    def remove(self, qid: str) -> None:
        """Forget a finished message. The message goes first: a crash in between
        leaves only a state file without a message, which start-up removes.

        Raises:
            SpoolError: the message file could not be removed.
        """
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(qid, _MSG))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(qid, _STATE))
            # Made durable so a power cut does not resurrect a delivered message
            # (a relay would get it twice; a Maildir would recognise it).
            os.fsync(self._dir_fd)
        except OSError as e:
            raise SpoolError(f"cannot remove {qid}: {e}") from e

    def quarantine(self, qid: str) -> None:
        """Move an unparsable message (and its state) to ``corrupt/`` for a human."""
        for suffix in (_MSG, _STATE):
            with contextlib.suppress(FileNotFoundError):
                os.rename(self._path(qid, suffix), self._corrupt_dir / f"{qid}{suffix}")
        os.fsync(self._dir_fd)

    def try_lock_delivery(self) -> DeliveryLock | None:
        """The delivery lock if no other process holds it, else None."""
        fd = os.open(self.directory / "delivery.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return DeliveryLock(fd)

    # --- start-up clean-up --------------------------------------------------------

    def _remove_stale_tmp(self) -> None:
        removed = tmpfiles.remove_stale(self._tdir)
        if removed:
            log.info("spool: removed %d temp files left by dead writers", len(removed))

    def _remove_orphan_state(self) -> None:
        names = set(os.listdir(self._qdir))
        for name in names:
            if name.endswith(_STATE) and name[: -len(_STATE)] + _MSG not in names:
                tmpfiles.unlink_quietly(f"{self._qdir}/{name}")

    def _path(self, qid: str, suffix: str) -> str:
        # Ids reach us from tools and logs: never let one name a path elsewhere.
        if not _ID.match(qid):
            raise MessageNotFound(f"not a queue id: {qid!r}")
        return f"{self._qdir}/{qid}{suffix}"


def _new_id() -> str:
    """time(µs)-pid-counter-random, all hex: unique across processes and hosts
    sharing a spool, and sortable by arrival time."""
    return (
        f"{time.time_ns() // 1000:x}-{os.getpid():x}-{next(_counter):x}-{secrets.token_hex(4)}"
    )


def _stamped(envelope: Envelope) -> Envelope:
    # max_age counts from received_at; an unset one would expire the message at once.
    return envelope if envelope.received_at else replace(envelope, received_at=time.time())


def _parse_message(qid: str, raw: bytes) -> tuple[Envelope, bytes]:
    nl = raw.find(b"\n")
    parts = raw[:nl].split(b" ") if nl > 0 else []
    try:
        if len(parts) != 4 or b" ".join(parts[:2]) != _MAGIC:
            raise ValueError("bad header line")
        env_len, data_len = int(parts[2]), int(parts[3])
        start = nl + 1
        # The sizes make a truncated or padded file detectable, not just a torn one.
        if len(raw) != start + env_len + 1 + data_len or raw[start + env_len] != 0x0A:
            raise ValueError("size mismatch")
        envelope = Envelope.from_json(raw[start : start + env_len])
    except (ValueError, EnvelopeFormatError) as e:
        raise SpoolError(f"corrupt message {qid}: {e}") from None
    return envelope, raw[start + env_len + 1 :]


def _settle(batch: Sequence[_StoreOp]) -> None:
    """Resolve the futures of a batch: one wake-up per event loop, not per message."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_StoreOp]] = {}
    for op in batch:
        if op.loop is not None:
            by_loop.setdefault(op.loop, []).append(op)
    for loop, ops in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, ops)


def _resolve(ops: list[_StoreOp]) -> None:
    for op in ops:
        fut = op.future
        if fut is None or fut.done():  # the awaiting task was cancelled
            continue
        if op.error is None:
            fut.set_result(op.qid)
        else:
            fut.set_exception(SpoolError(f"cannot store message: {op.error}"))


def _make_dir_durably(path: Path) -> None:
    if path.is_dir():
        return
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A new directory entry is only durable once its parent is fsynced.
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
