"""The durable spool: a 250 after DATA means the message is here and fsynced.

Theory of operation
-------------------
Layout under the spool directory::

    tmp/                 files being written; never read by anyone
    queue/<id>.msg       a message: header line, envelope JSON, message bytes
    queue/<id>.state     per-recipient delivery state (absent = nothing tried yet)
    queue/<pid>.<token>.<n>.slot   a received message's file before its 250
    corrupt/             files that failed to parse, kept for a human
    delivery.lock        flock()ed by the one process that delivers

Header line (format 2; format 1, without the last two fields, is still read)::

    SMTPGATE-SPOOL 2 <envelope length> <data length, 20 digits> <crc32, 8 hex> <id>

The CRC-32 covers the id and everything after the header line; "--------" in
its place means "not sealed yet".

A received message (the SMTP path: `receive`, then `publish`) pays ONE sync
before its 250. It is written into a *slot* (`slots`): an empty file whose name
in ``queue/`` was made durable ahead of time, a batch of slots per directory
fsync, by a helper thread. Sealing fills in the data length and the checksum and
fdatasyncs the file: from then on the message survives a power cut and is found
again under the slot's name. The slot is then renamed to ``<id>.msg`` without a
directory fsync; if a crash loses that rename, start-up (`_recover_slots`)
renames every sealed, intact slot of a dead writer, removes the unsealed ones
(never acknowledged) and moves sealed ones that fail the checksum or the sizes
(torn: their sync never returned, so no 250) to ``corrupt/`` with a warning,
rather than deleting what might be damage to an acknowledged message. A live
writer's slots are never touched.

Why a rename at all, when the slot itself could be the message: every reader of
``queue/`` (delivery, ``smtpgate queue``, the status and metrics counts) lists
``.msg`` names only, so keeping that rename (microseconds, no sync) leaves them
all unchanged and an unsealed slot invisible by construction; the only new
reader is start-up recovery. Why not an append-only journal: it would change
every reader and the removal path for the same single sync per message (one
sync per batch under load, which concurrent fdatasyncs of separate slots
already share in the file system's journal commit). Measured on this machine's
ext4 (one process, 1 KiB messages, stored one after another): 1,250-1,290
msg/s at 0.55-0.59 ms p50 the old way, 2,160-2,180 msg/s at 0.38-0.39 ms p50 with
slots.

If no slot is ready (the pool empties under a burst, or the first message of a
process) a message takes the old path, which every other file takes too:
written to ``tmp/``, fsynced, renamed into ``queue/``, and then ``queue/`` itself
is fsynced. The rename is atomic, so a reader sees either no file or a complete
one; the directory fsync is what makes the new name survive a power cut (the
step chasquid's safeio skips). Nothing in ``tmp/`` is ever delivered, so a crash
mid-write loses only a message that was never acknowledged. State files,
removals after delivery and `store` (bounces, tools) keep that path.

Throughput comes from group commit (see `committer`). `store`, `save_state` and
`remove` never touch the disk on the event loop: one writer thread takes every
operation queued so far, writes and fsyncs each new file, renames and unlinks,
and fsyncs ``queue/`` once for the whole batch. Under load the batch grows and
the directory fsync is shared, by stores and by the delivery side's removals
alike. The delivery worker's Maildir batches remove their messages themselves
(`remove_now`, in the worker's batch thread, one fsync of ``queue/`` per batch). Temp files come from a pool created ahead of time (see `tmpfiles`).

Several processes may share a spool (server worker processes). Ids embed time,
pid, a per-process counter and random bits, so they are unique without any
coordination; temp names tell a dead writer's leftovers from a live writer's
work, so start-up clean-up never pulls a file from under another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import re
import secrets
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

from smtpgate.plural import count
from smtpgate.queue import blanks, slots, tidy_report, tmpfiles
from smtpgate.queue.aio_sync import AioSync
from smtpgate.queue.committer import CommitStats, CommitterClosed, GroupCommitter, Op
from smtpgate.queue.envelope import Envelope, EnvelopeFormatError
from smtpgate.queue.incoming import SIZE_WIDTH, UNSEALED, Incoming
from smtpgate.queue.state import MessageState, StateFormatError

log = logging.getLogger("smtpgate.queue")

_MAGIC = b"SMTPGATE-SPOOL 1"
_MAGIC2 = b"SMTPGATE-SPOOL 2"
_ID = re.compile(r"[0-9a-f]{1,16}(?:-[0-9a-f]{1,16}){3}\Z")
_MSG = ".msg"
_STATE = ".state"
#: Shared by every Spool in the process, so two Spools never mint the same id.
_counter = itertools.count()


class SpoolError(Exception):
    """The spool could not do what was asked; for `store`, the message is NOT safe
    and the client must be told to retry (451)."""


class SpoolCorrupt(SpoolError):
    """A spool file was read and does not parse (torn, truncated, edited by hand):
    kept for a human in ``corrupt/``. Not raised for a file that could not be read
    (EIO, EMFILE, EACCES...): that is a plain `SpoolError`, worth another try."""


class StateCorrupt(SpoolCorrupt):
    """A message's state file does not parse. The message itself may be intact."""


class MessageNotFound(SpoolError):
    """No message with that id (already delivered and removed, or never existed)."""


class NotAQueueId(MessageNotFound):
    """The id is not of the form queue ids have (``../x``, a slot's name): refused
    before it names any path."""


@dataclass(frozen=True, slots=True)
class _Store:
    qid: str
    envelope: Envelope
    data: bytes


@dataclass(frozen=True, slots=True)
class _Publish:
    """A message written by `Incoming`, sealed: give it its name in queue/."""

    qid: str
    path: str


@dataclass(frozen=True, slots=True)
class _SaveState:
    qid: str
    state: MessageState


@dataclass(frozen=True, slots=True)
class _Remove:
    qid: str
    recycle: tmpfiles.TempPool | None
    #: False when the caller, holding the message's lock, saw no state file.
    has_state: bool = True


_Work = _Store | _SaveState | _Remove | _Publish


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
    and removes temp files left by dead writers (blocking, once).

    ``prefill`` keeps a pool of pre-created temp files (see `tmpfiles`); off only
    for tests that want every write to create its own file.

    ``tidy`` (the server's start-up): remove dead writers' temp files and unsealed
    slots, recover sealed ones, drop orphan state files. Off for the admin tools
    (`smtpgate queue`, `status`) that open the spool beside a running server: they
    decide "dead" by process id, which another pid namespace (a tool run in a
    sidecar container) would get wrong, removing a live writer's files.
    """

    def __init__(self, directory: Path, *, prefill: bool = True, tidy: bool = True) -> None:
        self.directory = directory
        self._queue_dir = directory / "queue"
        self._tmp_dir = directory / "tmp"
        self._corrupt_dir = directory / "corrupt"
        self._blank_dir = directory / blanks.DIRECTORY
        for d in (directory, self._queue_dir, self._tmp_dir, self._corrupt_dir):
            tmpfiles.make_dir_durably(d)
        self._qdir = str(self._queue_dir)
        self._tdir = str(self._tmp_dir)
        self._dir_fd = os.open(self._qdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._pool = tmpfiles.TempPool(self._tdir) if prefill else None
        self._slots = (slots.SlotPool(self._qdir, blank_dir=str(self._blank_dir))
                       if prefill else None)
        self._blank_maker: blanks.BlankMaker | None = None
        self._syncer = tmpfiles.Syncer()
        self._aio: AioSync | None = None
        self._aio_tried = False
        #: `_loop_syncer` said that AIO syncs could not be set up for now.
        self._aio_refused = False
        self._writer: GroupCommitter[_Work, str] = GroupCommitter(
            self._commit,
            name="smtpgate-spool-writer",
        )
        if tidy:
            removed = tmpfiles.remove_stale(self._tdir, only_ours=False)
            self._recover_slots()
            orphans = self._remove_orphan_state()
            tidy_report.log_tidy(
                log, dead=[n for n in removed if tmpfiles.is_ours(n)],
                foreign=[n for n in removed if not tmpfiles.is_ours(n)], orphans=orphans)

    @property
    def slots(self) -> slots.SlotPool | None:
        """The pool of durably named message files (None without ``prefill``)."""
        return self._slots

    def make_blanks(self) -> None:
        """Keep a stock of blanks for the workers' slot pools (`blanks`); the
        delivery process calls it, once, as the server's user (so the directory is
        that user's; blanks need no fsync). Stopped by `close`."""
        if self._blank_maker is None:
            try:
                self._blank_dir.mkdir(mode=0o700, exist_ok=True)
            except OSError as e:
                log.warning("spool: cannot make %s (%s); workers make their own message "
                            "files", self._blank_dir, e.strerror or e)
                return
            self._blank_maker = blanks.BlankMaker(str(self._blank_dir))
            self._blank_maker.start()

    @property
    def stats(self) -> CommitStats:
        """Batches and operations of the group-commit writer."""
        return self._writer.stats

    # --- storing ----------------------------------------------------------------

    async def store(self, envelope: Envelope, data: bytes, qid: str | None = None) -> str:
        """Make the message durable; returns its queue id (``qid`` if given: one from
        `new_queue_id`, already written into its Received header).

        Resolves only after the file and ``queue/`` are fsynced. Never blocks the
        event loop. If the caller is cancelled meanwhile, the write still completes:
        the message may then be delivered although the client saw no 250 (a
        duplicate at worst, never a loss).

        Raises:
            SpoolError: the message was not stored (and is not visible in the queue).
        """
        return await self._submit(_Store(_fresh(qid), _stamped(envelope), data))

    def receive(
        self, envelope: Envelope, prefix: bytes = b"", qid: str | None = None
    ) -> Incoming:
        """Start a message whose content arrives in parts (`Incoming`): the
        envelope now, ``prefix`` (the Received header) first in its data. Nothing
        touches the disk here; `publish` makes it durable, ``discard`` drops it."""
        envelope = _stamped(envelope)
        qid = _fresh(qid)
        header = envelope.to_json()
        lead = b"%s %d " % (_MAGIC2, len(header))
        first = b"%s%0*d %s %s\n" % (lead, SIZE_WIDTH, 0, UNSEALED, qid.encode())
        data_from = len(first) + len(header) + 1
        fallback = f"{tmpfiles.prefix(self._tdir)}{qid}.{next(_counter):x}"
        final = f"{self._qdir}/{qid}{_MSG}"
        pool, slot_pool = self._pool, self._slots
        if slot_pool is not None:
            slot_pool.start()  # from the first message on, so later ones find slots

        def open_file(create: bool) -> tuple[int, str, str] | None:
            slot = slot_pool.take() if slot_pool is not None else None
            if slot is not None:
                return slot[0], slot[1], final  # one sync, renamed by seal
            taken = pool.take() if pool is not None else None
            if taken is None:
                if not create:
                    return None
                taken = (tmpfiles.open_new(fallback), fallback)
            return taken[0], taken[1], ""  # published by the group commit

        return Incoming(qid, open_file, first + header + b"\n" + prefix,
                        size_at=len(lead), data_from=data_from, syncer=self._loop_syncer())

    def _loop_syncer(self) -> AioSync | None:
        """The AIO syncer (`aio_sync`) of the loop of the first message, made then;
        None where AIO syncs cannot be used, or on another loop (tests).

        A descriptor it cannot get now (the open-file limit reached when the first
        message arrives) is not the message's failure: that message syncs on a
        thread and the next one tries again."""
        if not self._aio_tried:
            try:
                self._aio = AioSync.open()
            except OSError as e:
                if not self._aio_refused:  # once, not for every message meanwhile
                    self._aio_refused = True
                    log.warning("spool: syncs run on a thread for now: no eventfd for "
                                "AIO syncs (%s); tried again with the next message", e)
                return None
            self._aio_tried = True
        aio = self._aio
        return aio if aio is not None and aio.serves_running_loop() else None

    async def publish(self, incoming: Incoming) -> str:
        """Make a received message durable (its content fsynced, then its name in
        ``queue/`` and that directory fsynced, group-committed like `store`);
        returns its queue id.

        Raises:
            SpoolError: the message was not stored (and is not in the queue).
        """
        try:
            path = await incoming.seal()
        except OSError as e:
            raise SpoolError(f"cannot write {self._qdir}/{incoming.qid}{_MSG}: {e}") from e
        if incoming.published:  # a slot: durable and named already
            return incoming.qid
        return await self._submit(_Publish(incoming.qid, path))

    def store_sync(self, envelope: Envelope, data: bytes) -> str:
        """`store` in the calling thread, without batching (tests and tools).

        Raises:
            SpoolError: as `store`.
        """
        return self._writer.run_now(_Store(_new_id(), _stamped(envelope), data))

    async def close(self) -> None:
        """Finish queued writes, stop the threads, release the directory."""
        if self._dir_fd < 0:
            return
        await self._writer.close()
        self._syncer.close()
        if self._aio is not None:
            self._aio.close()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.stop)
        if self._slots is not None:
            await asyncio.to_thread(self._slots.stop)
        if self._blank_maker is not None:
            await asyncio.to_thread(self._blank_maker.stop)
        os.close(self._dir_fd)
        self._dir_fd = -1

    # --- delivery bookkeeping (group-committed like stores) -----------------------

    async def save_state(self, qid: str, state: MessageState) -> None:
        """Replace the delivery state of ``qid`` atomically and durably.

        Raises:
            SpoolError: not saved; the previous state (if any) is intact.
        """
        self._path(qid, _STATE)  # validate the id before queueing
        await self._submit(_SaveState(qid, state))

    def save_state_sync(self, qid: str, state: MessageState) -> None:
        self._path(qid, _STATE)
        self._writer.run_now(_SaveState(qid, state))

    async def remove(self, qid: str, *, recycle: tmpfiles.TempPool | None = None) -> None:
        """Forget a finished message (idempotent). The message goes before its
        state: a crash in between leaves a state file without a message, which
        start-up removes. With ``recycle``, the message file's inode is emptied and
        given to that pool instead of being deleted (see `TempPool.adopt`).

        Raises:
            SpoolError: the message file could not be removed.
        """
        self._path(qid, _MSG)
        await self._submit(_Remove(qid, recycle))

    def remove_sync(self, qid: str) -> None:
        self._path(qid, _MSG)
        self._writer.run_now(_Remove(qid, None))

    def remove_now(
        self, qids: Sequence[tuple[str, bool]], *, recycle: tmpfiles.TempPool | None = None
    ) -> list[SpoolError | None]:
        """`remove` for several messages in the calling thread (blocking: the delivery
        worker's batch thread, which holds each message's lock), with one fsync of
        ``queue/`` for all of them. Each item is (id, whether a state file may
        exist: False only if the caller holds the lock and saw none). Returns the
        error of each (None: removed durably)."""
        errors: list[SpoolError | None] = []
        for qid, has_state in qids:
            try:
                self._path(qid, _MSG)
                self._remove(_Remove(qid, recycle, has_state))
            except OSError as e:
                errors.append(SpoolError(f"cannot remove {self._qdir}/{qid}{_MSG}: {e}"))
            except SpoolError as e:
                errors.append(e)
            else:
                errors.append(None)
        if any(e is None for e in errors):
            try:
                os.fsync(self._dir_fd)  # one fsync makes every unlink durable
            except OSError as e:
                failed = SpoolError(f"cannot sync the spool directory {self._qdir}: {e}")
                errors = [failed if err is None else err for err in errors]
        return errors

    async def _submit(self, work: _Work) -> str:
        try:
            return await self._writer.submit(work)
        except CommitterClosed:
            raise SpoolError("spool is closed") from None

    def _commit(self, batch: Sequence[Op[_Work, str]]) -> None:
        """One group commit; sets ``result`` or a SpoolError on every op."""
        prefix = tmpfiles.prefix(self._tdir)
        writes: list[tuple[Op[_Work, str], str]] = []  # (op, final path)
        jobs: list[tuple[str, tuple[bytes, ...]]] = []
        changed: list[Op[_Work, str]] = []
        for op in batch:
            work = op.payload
            if isinstance(work, _Publish):
                final = f"{self._qdir}/{work.qid}{_MSG}"
                try:
                    os.rename(work.path, final)  # step 2 for a received message
                except OSError as e:
                    op.error = SpoolError(f"cannot publish {final}: {e}")
                    tmpfiles.unlink_quietly(work.path)
                else:
                    changed.append(op)
                continue
            if isinstance(work, _Remove):
                try:
                    self._remove(work)
                except OSError as e:
                    op.error = SpoolError(f"cannot remove {self._qdir}/{work.qid}{_MSG}: {e}")
                else:
                    changed.append(op)
                continue
            if isinstance(work, _Store):
                header = work.envelope.to_json()
                crc = zlib.crc32(work.data, zlib.crc32(b"\n", zlib.crc32(
                    header, zlib.crc32(work.qid.encode()))))
                first = b"%s %d %d %08x %s\n" % (_MAGIC2, len(header), len(work.data), crc,
                                                  work.qid.encode())
                chunks: tuple[bytes, ...] = (first, header, b"\n", work.data)
                final = f"{self._qdir}/{work.qid}{_MSG}"
            else:
                chunks = (work.state.to_json(),)
                final = f"{self._qdir}/{work.qid}{_STATE}"
            writes.append((op, final))
            jobs.append((f"{prefix}{work.qid}.{next(_counter):x}", chunks))
        # Durability step 1: every file's content is on disk (fsynced, concurrently)
        # before it has a name in queue/.
        written = tmpfiles.write_synced(jobs, pool=self._pool, syncer=self._syncer)
        for (op, final), (tmp, error) in zip(writes, written, strict=True):
            if error is not None:
                op.error = SpoolError(f"cannot write {final}: {error}")
                continue
            try:
                # Step 2: atomic publication; a reader sees nothing or everything
                # (for a state file: the old state or the new one).
                os.rename(tmp, final)
            except OSError as e:
                op.error = SpoolError(f"cannot publish {final}: {e}")
                tmpfiles.unlink_quietly(tmp)
            else:
                changed.append(op)
        if changed:
            try:
                # Step 3: one directory fsync makes every rename and unlink of the
                # batch durable.
                os.fsync(self._dir_fd)
            except OSError as e:
                for op in changed:
                    op.error = SpoolError(f"cannot sync the spool directory {self._qdir}: {e}")
                    if isinstance(op.payload, (_Store, _Publish)):
                        # The client will be told 451 and resend: take the name
                        # back, so it is not delivered as well.
                        tmpfiles.unlink_quietly(f"{self._qdir}/{op.payload.qid}{_MSG}")
        for op in batch:
            if op.error is None:
                op.result = op.payload.qid
        failed = [op for op in batch if op.error is not None]
        if failed:
            log.error("spool: %d of %s failed: %s", len(failed), count(len(batch), "operation"),
                      failed[0].error)

    def _remove(self, work: _Remove) -> None:
        msg = f"{self._qdir}/{work.qid}{_MSG}"
        if work.recycle is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(msg)
        else:
            # Out of queue/ first (atomically, straight into the pool's directory),
            # then emptied: a crash in between leaves a stale temp file, never a
            # truncated message in the queue.
            spare = work.recycle.claim(msg)
            if spare is None:  # full, or on another file system
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(msg)
            else:
                try:
                    os.truncate(spare, 0)
                except OSError:
                    tmpfiles.unlink_quietly(spare)
                else:
                    work.recycle.add(spare)
        if work.has_state:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self._qdir}/{work.qid}{_STATE}")

    # --- reading ----------------------------------------------------------------

    def list_ids(self) -> list[str]:
        """Ids of every message in the queue, oldest first (ids start with the time)."""
        ids = [n[: -len(_MSG)] for n in os.listdir(self._qdir) if n.endswith(_MSG)]
        ids.sort()
        return ids

    @property
    def corrupt_dir(self) -> Path:
        return self._corrupt_dir

    def set_aside(self) -> list[str]:
        """Names of the messages in ``corrupt/``, sorted: a queued message the
        delivery worker found damaged (``ID.msg``) or a torn slot (``*.slot``).
        Each may have had its 250, and nothing delivers it from there, so the
        queue commands and status name them; a state file moved there alone
        (its message was delivered as if never tried) is no message."""
        try:
            names = os.listdir(self._corrupt_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith((_MSG, ".slot")))

    def load(self, qid: str, fd: int | None = None) -> tuple[Envelope, bytes]:
        """The envelope and message bytes of ``qid``; with ``fd`` (the message file,
        open, e.g. by the lock the caller holds) read through that descriptor.

        Raises:
            MessageNotFound: no such message.
            SpoolError: unreadable or corrupt (see `quarantine`).
        """
        path = self._path(qid, _MSG)
        try:
            raw = _read_path(path) if fd is None else _read_fd(fd)
        except FileNotFoundError:
            raise MessageNotFound(qid) from None
        except OSError as e:
            raise SpoolError(f"cannot read {qid} ({path}): {e}") from e
        return _parse_message(qid, raw)

    def load_envelope(self, qid: str) -> tuple[Envelope, int]:
        """The envelope of ``qid`` and the size of its message in bytes, without
        reading the message (for ``smtpgate queue list``).

        Raises:
            MessageNotFound: no such message.
            SpoolError: unreadable or corrupt.
        """
        path = self._path(qid, _MSG)
        try:
            with open(path, "rb") as f:
                first = f.readline(256)
                head = _header(first.rstrip(b"\n"))
                if head is None:
                    raise SpoolCorrupt(f"corrupt message {qid}: bad header line")
                env_len, data_len = head[0], head[1]
                raw = f.read(env_len)
        except FileNotFoundError:
            raise MessageNotFound(qid) from None
        except ValueError:
            raise SpoolCorrupt(f"corrupt message {qid}: bad header line") from None
        except OSError as e:
            raise SpoolError(f"cannot read {qid} ({path}): {e}") from e
        try:
            return Envelope.from_json(raw), data_len
        except EnvelopeFormatError as e:
            raise SpoolCorrupt(f"corrupt message {qid}: {e}") from None

    def message_path(self, qid: str) -> str:
        """Where the message file of ``qid`` is (``queue.msglock`` locks it).

        Raises:
            MessageNotFound: ``qid`` is not a queue id.
        """
        return self._path(qid, _MSG)

    def load_state(self, qid: str) -> MessageState | None:
        """The delivery state of ``qid``; None if nothing was recorded yet.

        Raises:
            SpoolError: unreadable or corrupt.
        """
        try:
            raw = _read_path(self._path(qid, _STATE))
        except FileNotFoundError:
            return None
        except OSError as e:
            where = self._path(qid, _STATE)
            raise SpoolError(f"cannot read the state of {qid} ({where}): {e}") from e
        try:
            return MessageState.from_json(raw)
        except StateFormatError as e:
            raise StateCorrupt(f"corrupt state of {qid}: {e}") from None

    def quarantine(self, qid: str) -> None:
        """Move an unparsable message (and its state) to ``corrupt/`` for a human.
        Blocking."""
        for suffix in (_MSG, _STATE):
            with contextlib.suppress(FileNotFoundError):
                self._move_to_corrupt(self._path(qid, suffix), f"{qid}{suffix}")
        os.fsync(self._dir_fd)

    def quarantine_state(self, qid: str) -> None:
        """Move an unparsable state file to ``corrupt/``, leaving the message: it
        is then delivered as if never tried (see `StateCorrupt`). Blocking."""
        with contextlib.suppress(FileNotFoundError):
            self._move_to_corrupt(self._path(qid, _STATE), f"{qid}{_STATE}")
        os.fsync(self._dir_fd)

    def _move_to_corrupt(self, path: str, name: str) -> None:
        """Rename ``path`` to ``corrupt/name``, making ``corrupt/`` again if an
        administrator removed it after looking at what was there: the rename
        failed with ENOENT, which reads as the source gone, so the worker said
        "moving it to corrupt/" at every scan (four times a second) and left it."""
        tmpfiles.make_dir_durably(self._corrupt_dir)
        os.rename(path, self._corrupt_dir / name)

    def try_lock_delivery(self) -> DeliveryLock | None:
        """The delivery lock if no other process holds it, else None. Blocking
        (briefly: it never waits for the lock)."""
        fd = os.open(self.directory / "delivery.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return DeliveryLock(fd)

    # --- helpers ------------------------------------------------------------------

    def _recover_slots(self) -> None:
        """Slots of dead writers: a sealed, intact one is a message whose rename a
        crash lost (it may have had its 250): renamed to its message name now. An
        unsealed one was never acknowledged: removed. A sealed one that fails its
        checksum or sizes is a torn write (its sync never returned, so no 250):
        moved to ``corrupt/`` with a warning rather than deleted, in case it is
        damage to an acknowledged message. A live writer's slots are left alone."""
        counts = {"sealed": 0, "unsealed": 0, "torn": 0}
        for name in os.listdir(self._qdir):
            if not slots.is_slot(name):
                continue
            path = f"{self._qdir}/{name}"
            if slots.writer_may_be_alive(name, path):
                continue
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                verdict, qid = _check_slot(raw)
                if verdict == "unsealed":
                    os.unlink(path)
                elif verdict == "sealed":
                    os.rename(path, f"{self._qdir}/{qid}{_MSG}")
                else:
                    self._move_to_corrupt(path, name)
                    log.warning("spool: slot %s is a torn write (%s), moved to corrupt/",
                                name, qid)
            except FileNotFoundError:
                continue  # another process's start-up took it first
            except OSError as e:  # e.g. a tool run by a user who may only read
                log.warning("spool: cannot recover slot %s: %s", name, e)
                continue
            counts[verdict] += 1
        if any(counts.values()):
            os.fsync(self._dir_fd)
            log.info("spool: slots left by dead writers: %d recovered as messages, "
                     "%d unsealed removed, %d torn", counts["sealed"], counts["unsealed"],
                     counts["torn"])

    def _remove_orphan_state(self) -> list[str]:
        """Remove state files whose message is gone (a crash between the two unlinks
        of a finished message); returns their names."""
        names = set(os.listdir(self._qdir))
        removed = []
        for name in names:
            if name.endswith(_STATE) and name[: -len(_STATE)] + _MSG not in names:
                try:
                    os.unlink(f"{self._qdir}/{name}")
                except OSError:
                    continue
                removed.append(name)
        return removed

    def _path(self, qid: str, suffix: str) -> str:
        # Ids reach us from tools and logs: never let one name a path elsewhere.
        if not _ID.match(qid):
            raise NotAQueueId(f"not a queue id: {qid!r}")
        return f"{self._qdir}/{qid}{suffix}"


def _read_path(path: str) -> bytes:
    """The whole file at ``path`` (plain os calls: the delivery worker reads two
    small files per message, and io.open's buffering costs more than the read)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def _read_fd(fd: int) -> bytes:
    """The whole file open at ``fd``, from its start (wherever its offset is)."""
    parts: list[bytes] = []
    offset = 0
    want = os.fstat(fd).st_size + 1  # one more: a file that grew is still read whole
    while True:
        chunk = os.pread(fd, want, offset)
        parts.append(chunk)
        if len(chunk) < want:  # a regular file reads short only at its end
            return b"".join(parts)
        offset += len(chunk)
        want = 1 << 16


def new_queue_id() -> str:
    """A queue id for a message about to be stored (`Spool.store`/`receive` take
    it), so its Received header can name it before the message is written."""
    return _new_id()


def _fresh(qid: str | None) -> str:
    if qid is None:
        return _new_id()
    if not _ID.match(qid):
        raise ValueError(f"not a queue id: {qid!r}")
    return qid


def _new_id() -> str:
    """time(µs)-pid-counter-random, all hex: unique across processes and hosts
    sharing a spool, and sortable by arrival time."""
    return (
        f"{time.time_ns() // 1000:x}-{os.getpid():x}-{next(_counter):x}-{secrets.token_hex(4)}"
    )


def _stamped(envelope: Envelope) -> Envelope:
    # max_age counts from received_at; an unset one would expire the message at once.
    return envelope if envelope.received_at else replace(envelope, received_at=time.time())


def _header(line: bytes) -> tuple[int, int, bytes | None, bytes | None] | None:
    """(envelope length, data length, checksum field, queue id) of a header line;
    the last two None for format 1 (no checksum). None if it is not one."""
    parts = line.split(b" ")
    try:
        if len(parts) == 4 and b" ".join(parts[:2]) == _MAGIC:
            return int(parts[2]), int(parts[3]), None, None
        if len(parts) == 6 and b" ".join(parts[:2]) == _MAGIC2:
            return int(parts[2]), int(parts[3]), parts[4], parts[5]
    except ValueError:
        return None
    return None


def _check_slot(raw: bytes) -> tuple[str, str]:
    """("unsealed" | "sealed" | "torn", queue id or what stood for it) of a slot's
    content."""
    nl = raw.find(b"\n")
    if nl < 0:
        return "unsealed", ""  # not even the header line reached the disk
    head = _header(raw[:nl])
    if head is None or head[3] is None:
        return "torn", "bad header line"
    qid = head[3].decode("ascii", "replace")
    if head[2] == UNSEALED:
        return "unsealed", qid
    if not _ID.match(qid):
        return "torn", "bad queue id"
    try:
        _parse_message(qid, raw)
    except SpoolError:
        return "torn", qid
    return "sealed", qid


def _parse_message(qid: str, raw: bytes) -> tuple[Envelope, bytes]:
    nl = raw.find(b"\n")
    head = _header(raw[:nl]) if nl > 0 else None
    try:
        if head is None:
            raise ValueError("bad header line")
        env_len, data_len, crc, named = head
        start = nl + 1
        # The sizes make a truncated or padded file detectable, not just a torn one.
        if len(raw) != start + env_len + 1 + data_len or raw[start + env_len] != 0x0A:
            raise ValueError("size mismatch")
        if named is not None:
            # Format 2: the checksum catches a write torn inside the file (a sync
            # that never returned), which the sizes alone may not.
            if named != qid.encode():
                raise ValueError("queue id mismatch")
            if crc != b"%08x" % zlib.crc32(memoryview(raw)[start:], zlib.crc32(named)):
                raise ValueError("checksum mismatch")
        envelope = Envelope.from_json(raw[start : start + env_len])
    except (ValueError, EnvelopeFormatError) as e:
        raise SpoolCorrupt(f"corrupt message {qid}: {e}") from None
    return envelope, raw[start + env_len + 1 :]

