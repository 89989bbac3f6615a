"""A message being received, written to a spool temp file as it arrives.

Why: holding DATA in memory made the server's memory grow with the bytes in
flight (three parallel 30 MB messages: 1.7-2.2 times that; 1,000 connections at
``max_message_size`` would be tens of gigabytes). Here a session holds at most
`FLUSH_AT` octets waiting plus one write in flight; the session's reader stops
reading while `backlog` is over its high-water mark.

The file is the spool's own format (`spool.py`), written front to back: the
header line (its data length and checksum fixed-width placeholders), the
envelope, the Received header, then the message as it comes. `seal` fills in
the length and the checksum (CRC-32 of the queue id and everything after the
header line, computed as the file is written) and syncs the data once. A file
taken from the spool's slot pool (`slots`) already has a durable name in
``queue/``, so that one sync is all a 250 waits for; `seal` then renames it to
its message name, no directory fsync needed. A temp file (no slot ready) is
given its name by the spool afterwards (rename, directory fsync).

The writes while the data arrives run in a thread, one at a time per message.
With a `aio_sync.AioSync` (Linux), sealing a message whose rest is small
(`INLINE_REST`) writes it, fills in the length and the checksum, closes and renames
on the event loop: calls the page cache answers in microseconds, where handing
them to a thread cost more than they do. Only into a file that exists (a ready
slot or pooled file): making one can wait on the file system's journal, so a
message that finds none is written from the thread. The sync itself never runs on the loop:
the kernel does it and wakes the loop when it is done. Without one, `seal` runs
in a thread as the writes do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import zlib
from collections.abc import Callable

from smtpgate.queue import tmpfiles
from smtpgate.queue.aio_sync import AioSync

#: Octets gathered before they are handed to a write (a few socket reads' worth).
FLUSH_AT = 256 * 1024
#: Width of the data-length field of the header line, zero-padded (20 digits
#: hold any 64-bit size; ``int()`` reads leading zeros, so readers are unchanged).
SIZE_WIDTH = 20
#: The checksum field after the length: 8 hex digits; this placeholder until sealed.
UNSEALED = b"--------"
#: At most this much still unwritten at `seal` is written from the event loop
#: (with an `AioSync`); more goes through the thread as the earlier writes did.
INLINE_REST = 64 * 1024


class Incoming:
    """See the module docstring. Created by `Spool.receive`; ``write`` and
    ``discard`` are called on the event loop, ``seal`` is awaited there."""

    def __init__(
        self,
        qid: str,
        open_file: Callable[[bool], tuple[int, str, str] | None],
        head: bytes,
        *,
        size_at: int,
        data_from: int,
        on_flushed: Callable[[], None] | None = None,
        syncer: AioSync | None = None,
    ) -> None:
        self.qid = qid
        self._syncer = syncer
        #: The file, once the first write created it ("" before); after a sealed
        #: slot's rename, the message's path in ``queue/``.
        self.path = ""
        #: True once `seal` has given the file its message name itself (a slot).
        self.published = False
        self._final = ""
        self._open = open_file
        # The checksum covers the id and everything after the header line.
        self._crc = zlib.crc32(qid.encode())
        self._crc_from = head.index(b"\n") + 1
        self._pending = bytearray(head)
        self._taken = len(head)
        #: Where the message's own data starts in the file (after the prefix).
        self._top = len(head)
        self._in_flight = 0
        self._written = 0
        self._size_at = size_at
        self._data_from = data_from
        self._fd = -1
        self._flush: asyncio.Task[None] | None = None
        self._error: OSError | None = None
        self._done = False  # sealed or discarded: no more writes
        #: Called after each background write, and once sealing wrote the rest:
        #: the backlog fell (the reader may read on).
        self.on_flushed = on_flushed

    @property
    def size(self) -> int:
        """Octets of the message's data so far (the Received header and added fields
        included)."""
        return self._taken - self._data_from

    @property
    def backlog(self) -> int:
        """Octets taken but not yet on their way to the disk or being written."""
        return len(self._pending) + self._in_flight

    def write(self, data: bytes) -> None:
        """Append ``data``; written in the background once enough has gathered."""
        if self._done or self._error is not None:
            return
        self._pending += data
        self._taken += len(data)
        if len(self._pending) >= FLUSH_AT and self._flush is None:
            self._start_flush()

    def insert_at_top(self, data: bytes) -> bool:
        """Put ``data`` at the top of the message, right after the prefix
        `Spool.receive` was given (the Received header), moving nothing the client
        wrote. Only while the file's first write has not started: the length and
        checksum are counted as octets are written, so they stay right. False (and
        nothing changed) once it has, or after `seal` or `discard`."""
        if self._done or self._error is not None or self._written or self._flush is not None:
            return False
        top = self._top
        self._pending[top:top] = data
        self._taken += len(data)
        return True

    def _start_flush(self) -> None:
        chunk = bytes(self._pending)
        self._pending.clear()
        self._in_flight = len(chunk)
        self._flush = asyncio.get_running_loop().create_task(self._write_in_thread(chunk))

    async def _write_in_thread(self, chunk: bytes) -> None:
        try:
            await asyncio.to_thread(self._write, chunk)
        except OSError as e:
            self._error = e
            self._pending.clear()  # never written now: the backlog is gone
        finally:
            self._in_flight = 0
            self._flush = None
        if not self._done and self._error is None and len(self._pending) >= FLUSH_AT:
            self._start_flush()
        if self.on_flushed is not None:
            self.on_flushed()

    def _write(self, chunk: bytes) -> None:
        """In a thread: append ``chunk`` to the file, creating it the first time."""
        if self._fd < 0:
            opened = self._open(True)
            assert opened is not None  # create=True: a file or an OSError
            self._fd, self.path, self._final = opened
        tmpfiles.write_all(self._fd, (chunk,))
        skip = self._crc_from - self._written
        self._crc = zlib.crc32(chunk[skip:] if skip > 0 else chunk, self._crc)
        self._written += len(chunk)

    async def seal(self) -> str:
        """Write the rest, fill in the data length and checksum, sync once and
        close; for a slot, rename it to its message name (`published`). Returns
        the file's path. On an error the file is gone.

        Raises:
            OSError: the message is not on disk.
        """
        self._done = True
        while self._flush is not None:
            await asyncio.shield(self._flush)
        if self._error is not None:
            await asyncio.to_thread(self._remove)
            raise self._error
        rest = bytes(self._pending)
        self._pending.clear()
        syncer = self._syncer
        try:
            if syncer is not None and syncer.usable and len(rest) <= INLINE_REST:
                sealing = self._start_seal_inline(rest, syncer)
                if sealing is not None:
                    await sealing
                    return self.path
            if syncer is not None and syncer.usable:
                # Shielded as the thread below is: a cancelled caller does not stop
                # the seal half-way (a message then kept although no 250 went out is
                # a duplicate at worst; a file left open and unsealed would leak).
                await asyncio.shield(asyncio.ensure_future(self._seal_on_loop(rest, syncer)))
            else:
                await asyncio.to_thread(self._seal, rest)
        except OSError:
            await asyncio.to_thread(self._remove)
            raise
        finally:
            # The rest is written (or dropped) here, not by a background write: say
            # so, or a reader that paused for the backlog is never told it is gone.
            if self.on_flushed is not None:
                self.on_flushed()
        return self.path

    def _seal(self, rest: bytes) -> None:
        self._write(rest)
        self._stamp()
        self._sync_and_name()

    async def _seal_on_loop(self, rest: bytes, syncer: AioSync) -> None:
        try:
            if self._fd < 0 and len(rest) <= INLINE_REST:
                # A ready slot or pooled file is an open of an existing name; making
                # a new file (none ready: a burst, the first messages) can wait on
                # the file system's journal, so that goes to the thread.
                opened = self._open(False)
                if opened is not None:
                    self._fd, self.path, self._final = opened
            if self._fd >= 0 and len(rest) <= INLINE_REST:
                self._write(rest)
            else:
                await asyncio.to_thread(self._write, rest)
            self._stamp()
            await syncer.fdatasync(self._fd)
            self._close_and_name()
        except OSError:
            self._remove()  # here too: a cancelled `seal` is not there to do it
            raise

    def _start_seal_inline(self, rest: bytes, syncer: AioSync) -> asyncio.Future[None] | None:
        """Write the rest, stamp and start the sync without leaving this loop turn;
        the close and rename run in the turn the sync ends in (`AioSync.submit`),
        so the session's task wakes once, right for its 250 (through a task and two
        shields it was four turns later). Whatever becomes of the caller, the seal
        ends as it began: a cancelled session's message is closed and named (a
        duplicate at worst, as with the shield). None when this cannot be done
        here (no file ready to open, AIO refused): nothing was written, the
        caller goes the other way.

        Raises:
            OSError: a write failed (the caller removes the file).
        """
        if self._fd < 0:
            opened = self._open(False)  # an existing slot or pooled file only
            if opened is None:
                return None
            self._fd, self.path, self._final = opened
        self._write(rest)
        self._stamp()
        sealed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def synced(error: OSError | None) -> None:
            if error is None:
                try:
                    self._close_and_name()
                except OSError as e:
                    error = e
            if error is not None:
                self._remove()
            if sealed.done():  # the caller was cancelled: the seal is done all the same
                return
            if error is None:
                sealed.set_result(None)
            else:
                sealed.set_exception(error)

        if not syncer.submit(self._fd, synced):
            # Written and stamped already: only the sync and the name are left, on
            # the thread as without AIO.
            return asyncio.ensure_future(asyncio.to_thread(self._sync_and_name))
        return sealed

    def _sync_and_name(self) -> None:
        os.fdatasync(self._fd)
        self._close_and_name()

    def _stamp(self) -> None:
        """Fill in the data length and the checksum. Then the one sync before the
        250 (spool.py) puts the content, its length and checksum on disk; a slot's
        name was durable already, so from there the message survives a power cut
        and is found again."""
        size = self._written - self._data_from
        os.pwrite(self._fd, b"%0*d %08x" % (SIZE_WIDTH, size, self._crc), self._size_at)

    def _close_and_name(self) -> None:
        fd, self._fd = self._fd, -1
        os.close(fd)
        if self._final:
            # No fsync of queue/: if a crash loses this rename, start-up finds the
            # sealed slot and renames it then.
            os.rename(self.path, self._final)
            self.path, self.published = self._final, True

    def discard(self) -> None:
        """The message will not be kept (refused, or the client went away): stop
        writing and delete the temp file, in the background."""
        if self._done:
            return
        self._done = True
        self._pending.clear()
        loop = asyncio.get_running_loop()
        flush = self._flush
        if flush is None:
            loop.run_in_executor(None, self._remove)
        else:
            flush.add_done_callback(lambda _: loop.run_in_executor(None, self._remove))

    def _remove(self) -> None:
        """In a thread, with no write in flight: close and delete the temp file."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.path:
            tmpfiles.unlink_quietly(self.path)
