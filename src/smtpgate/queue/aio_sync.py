"""fdatasync without a thread: Linux AIO's ``IOCB_CMD_FDSYNC``, finished on the event loop.

Why: the one sync before a 250 ran on a thread, and the thread and the event loop
passed the GIL back and forth at each of its system calls (50 ``futex`` calls a
message in a worker, bench/README.md). Run on the loop itself the sync would stop
every other session of the worker for as long as the disk takes. Linux AIO (since
4.18) queues the sync to the kernel, which runs it on a worker of its own; its
completion wakes the loop through an eventfd. Concurrent syncs stay concurrent, so
they still share the file system's journal commits, and no Python thread is woken.

Why by hand (ctypes over the raw system calls): no maintained library offers an
asyncio fdatasync without a thread (aiofiles and ``asyncio.to_thread`` use threads;
the libaio and io_uring bindings on PyPI are unmaintained or need a compiler). What
is used is four system calls and two fixed ABI structs (``linux/aio_abi.h``).

`AioSync.open` returns None where this cannot be used (not Linux, an architecture
whose numbers are not here, ``io_setup`` refused by a seccomp filter or by
``fs.aio-max-nr``): callers then sync on a thread as before. A file system that has
no AIO fsync refuses the submission with ``EINVAL``; `fdatasync` then does that one
sync on a thread and leaves AIO off for this instance.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import platform
import sys
from collections.abc import Callable

log = logging.getLogger("smtpgate.spool")

#: io_setup, io_destroy, io_getevents, io_submit (asm/unistd_64.h; the generic table).
_SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}
_IOCB_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1
#: Syncs in flight at once per event loop; one more waits on a thread.
MAX_IN_FLIGHT = 256


class _Iocb(ctypes.Structure):
    """``struct iocb`` of a little-endian machine (both architectures above)."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_EVENTS_AT_ONCE = 64
_IOCB_CMD_FSYNC = 2
_libc: ctypes.CDLL | None = None
#: Bumped in a forked child: an AIO context belongs to the process that made it.
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def _syscall() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform == "linux":
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:  # pragma: no cover - a Linux without a C library
            return None
        _libc.syscall.restype = ctypes.c_long
    return _libc


def _io_setup(depth: int, *, say_why: bool
              ) -> tuple[ctypes.CDLL, tuple[int, int, int, int], int] | None:
    """(libc, the system call numbers, a new AIO context for ``depth`` requests), or
    None where there is none to be had."""
    numbers = _SYSCALLS.get(platform.machine())
    libc = _syscall()
    if numbers is None or libc is None:
        return None
    ctx = ctypes.c_ulong(0)
    if libc.syscall(numbers[0], depth, ctypes.byref(ctx)) != 0:
        if say_why:
            log.info("spool syncs run on threads: io_setup refused (%s)",
                     os.strerror(ctypes.get_errno()))
        return None
    return libc, numbers, ctx.value


class AioSync:
    """Linux AIO syncs for one event loop; `close` it with the loop's owner."""

    def __init__(self, loop: asyncio.AbstractEventLoop, libc: ctypes.CDLL,
                 numbers: tuple[int, int, int, int], ctx: int, efd: int) -> None:
        self._loop = loop
        self._libc = libc
        self._setup, self._destroy, self._getevents, self._submit = numbers
        self._ctx = ctx
        self._efd = efd
        self._born = _forks
        self._next = 0
        self._waiting: dict[int, Callable[[OSError | None], None]] = {}
        self._events = (_IoEvent * _EVENTS_AT_ONCE)()
        self._no_wait = _Timespec(0, 0)
        self._usable = True
        loop.add_reader(efd, self._completed)

    @classmethod
    def open(cls) -> AioSync | None:
        """One for the running loop, or None where AIO syncs cannot be used here.

        Raises:
            OSError: no eventfd for now (the open-file limit reached: ``EMFILE``);
                the AIO context made for it is released, so a later call may try
                again.
        """
        made = _io_setup(MAX_IN_FLIGHT, say_why=True)
        if made is None:
            return None
        libc, numbers, ctx = made
        try:
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            libc.syscall(numbers[1], ctypes.c_ulong(ctx))  # io_destroy
            raise
        return cls(asyncio.get_running_loop(), libc, numbers, ctx, efd)

    @property
    def usable(self) -> bool:
        """False once closed, after a fork, or after a file system refused."""
        return self._usable and self._ctx != 0 and self._born == _forks

    def serves_running_loop(self) -> bool:
        """True when called on the loop this was opened on (and still usable)."""
        return self.usable and asyncio.get_running_loop() is self._loop

    async def fdatasync(self, fd: int) -> None:
        """``os.fdatasync(fd)``, the caller's loop free meanwhile. The caller keeps
        ``fd`` open until this returns (the kernel holds its own reference anyway).

        Raises:
            OSError: the sync failed (the data may not be on disk).
        """
        done: asyncio.Future[None] = self._loop.create_future()

        def answer(error: OSError | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        if not self.submit(fd, answer):
            await asyncio.to_thread(os.fdatasync, fd)
            return
        # Shielded: the sync runs to its end even if the caller is cancelled, and the
        # caller's clean-up (close, rename) must not run before it has.
        await asyncio.shield(done)

    def submit(self, fd: int, on_done: Callable[[OSError | None], None]) -> bool:
        """Start ``os.fdatasync(fd)``; ``on_done`` is called on the loop with None
        (on disk) or the error when the kernel has finished, whatever became of
        whoever asked (a cancelled session's seal still closes and names its file).
        False when nothing was started (AIO not usable here, too many in flight, the
        file system refused): the caller syncs another way.

        Why a callback and not a future: the seal's close and rename then run in
        the same loop turn as the completion, and the session's task wakes once;
        through a future and a shield it took four turns of the loop before the 250.

        Raises:
            OSError: the submission failed otherwise.
        """
        if not self.usable or len(self._waiting) >= MAX_IN_FLIGHT:
            return False
        key = self._next = self._next + 1
        iocb = _Iocb(aio_data=key, aio_lio_opcode=_IOCB_CMD_FDSYNC, aio_fildes=fd,
                     aio_flags=_IOCB_FLAG_RESFD, aio_resfd=self._efd)
        pointers = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(iocb))
        self._waiting[key] = on_done
        if self._libc.syscall(self._submit, ctypes.c_ulong(self._ctx), 1, pointers) != 1:
            del self._waiting[key]
            code = ctypes.get_errno()
            if code == errno.EINVAL:  # this file system has no AIO fsync
                self._usable = False
                log.info("spool syncs run on threads: the file system refused an AIO sync")
                return False
            raise OSError(code, os.strerror(code))
        return True

    def _completed(self) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return
        self._collect(0, ctypes.byref(self._no_wait))

    def _collect(self, at_least: int, timeout: object) -> None:
        """Answer finished syncs: those done now (``at_least`` 0, no wait), or all
        of them (``at_least`` > 0, no timeout: at close)."""
        blocking = at_least > 0
        while self._waiting:
            got = self._libc.syscall(self._getevents, ctypes.c_ulong(self._ctx), at_least,
                                     _EVENTS_AT_ONCE, self._events, timeout)
            if got < 0 and ctypes.get_errno() == errno.EINTR:
                continue  # a signal during a blocking wait (close): the events are still there
            if got <= 0:
                return
            for i in range(got):
                event = self._events[i]
                on_done = self._waiting.pop(event.data, None)
                if on_done is None:
                    continue
                try:
                    on_done(None if event.res >= 0
                            else OSError(-event.res, os.strerror(-event.res)))
                except Exception:  # one caller's failure must not lose the others' answers
                    log.exception("spool: answering a finished sync failed")
            if not blocking and got < _EVENTS_AT_ONCE:
                return
            if blocking:
                at_least = min(len(self._waiting), _EVENTS_AT_ONCE)

    def close(self) -> None:
        """Stop using AIO: wait for the syncs in flight (blocking, at shutdown
        only), answer their callers, release the context and the eventfd."""
        if self._ctx == 0:
            return
        if self._born == _forks:
            self._loop.remove_reader(self._efd)
            self._collect(min(len(self._waiting), _EVENTS_AT_ONCE), None)
            self._libc.syscall(self._destroy, ctypes.c_ulong(self._ctx))
        os.close(self._efd)
        self._ctx = 0


class AioBatch:
    """Blocking syncs of many files at once, for a writer thread: all submitted in
    one call, the kernel runs them concurrently (so they share journal commits, as
    the thread pool of `tmpfiles.Syncer` made them), one call waits for all. One
    thread at a time (the caller's lock)."""

    def __init__(self, libc: ctypes.CDLL, numbers: tuple[int, int, int, int],
                 ctx: int) -> None:
        self._libc = libc
        self._setup, self._destroy, self._getevents, self._submit = numbers
        self._ctx = ctx
        self._born = _forks
        self._events = (_IoEvent * _EVENTS_AT_ONCE)()

    @classmethod
    def open(cls) -> AioBatch | None:
        """None where AIO syncs cannot be used here (then: threads)."""
        made = _io_setup(_EVENTS_AT_ONCE, say_why=False)
        return None if made is None else cls(*made)

    @property
    def usable(self) -> bool:
        return self._ctx != 0 and self._born == _forks

    def fsync_all(self, fds: list[int]) -> list[OSError | None] | None:
        """``os.fsync`` of each descriptor, concurrently; each one's error (None:
        durable). None when the kernel refused AIO syncs here (the caller syncs
        these the old way, and should not ask again)."""
        results: list[OSError | None] = []
        for start in range(0, len(fds), _EVENTS_AT_ONCE):
            part = self._sync_part(fds[start:start + _EVENTS_AT_ONCE])
            if part is None:
                if start:  # some done here already: finish on the caller's thread
                    return results + [fsync_error(fd) for fd in fds[start:]]
                return None
            results.extend(part)
        return results

    def _sync_part(self, fds: list[int]) -> list[OSError | None] | None:
        blocks = [_Iocb(aio_data=i, aio_lio_opcode=_IOCB_CMD_FSYNC, aio_fildes=fd)
                  for i, fd in enumerate(fds)]
        pointers = (ctypes.POINTER(_Iocb) * len(blocks))(*(ctypes.pointer(b) for b in blocks))
        sent = self._libc.syscall(self._submit, ctypes.c_ulong(self._ctx), len(blocks), pointers)
        if sent <= 0:
            code = ctypes.get_errno()
            if code in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                self.close()
                return None
            sent = 0
        results: list[OSError | None] = [None] * len(fds)
        waiting = sent
        while waiting:
            got = self._libc.syscall(self._getevents, ctypes.c_ulong(self._ctx), waiting,
                                     _EVENTS_AT_ONCE, self._events, None)
            if got < 0:
                if ctypes.get_errno() == errno.EINTR:
                    continue
                raise OSError(ctypes.get_errno(), "io_getevents")  # pragma: no cover
            for i in range(got):
                event = self._events[i]
                if event.res < 0:
                    results[event.data] = OSError(-event.res, os.strerror(-event.res))
            waiting -= got
        for i in range(sent, len(fds)):  # not submitted (the kernel's queue was full)
            results[i] = fsync_error(fds[i])
        return results

    def close(self) -> None:
        if self._ctx and self._born == _forks:
            self._libc.syscall(self._destroy, ctypes.c_ulong(self._ctx))
        self._ctx = 0


def fsync_error(fd: int) -> OSError | None:
    """``os.fsync(fd)``'s error, or None: durable."""
    try:
        os.fsync(fd)
    except OSError as e:
        return e
    return None
