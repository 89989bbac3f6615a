"""Slots: empty message files whose names in ``queue/`` are durable before use.

Why: a received message used to pay two fsyncs in a row before its 250 (its
data, then ``queue/`` after the rename that names it). A slot's name is made
durable ahead of time, one directory fsync for a whole batch of slots created
by a helper thread, so a message written into a slot needs only the fsync of
its own data: that one sync makes it survive a power cut *and* findable (under
the slot's name) afterwards. The spool then renames the slot to ``<id>.msg``
without another fsync; if a crash loses that rename, start-up finds the sealed
slot and promotes it (`Spool`'s recovery; the file's header tells a sealed,
intact message from an unsealed or torn one).

Names are ``<pid>.<token>.<n>.slot`` (the `tmpfiles` scheme, so start-up tells
a live writer's slots from a dead one's). No reader of ``queue/`` lists them:
every reader looks for ``.msg`` (and ``.state``) names only.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import re
import threading
import time

from smtpgate.queue import blanks, tmpfiles

log = logging.getLogger("smtpgate.queue")

SUFFIX = ".slot"
#: Slots the helper keeps ready per process; it is woken when half are used.
SLOT_TARGET = 64
#: ``<pid>.<token>.<n>.slot``: groups (pid, token).
NAME = re.compile(r"([0-9]{1,10})\.(sg[0-9a-f]{8})\.[0-9a-f]{1,16}\.slot\Z")


class SlotPool:
    """Durably named empty files in ``directory`` (the spool's ``queue/``), made
    ahead of use by a helper thread: create a batch, fsync the directory once,
    only then hand them out. The helper starts on the first `take`."""

    def __init__(self, directory: str, target: int = SLOT_TARGET,
                 blank_dir: str | None = None) -> None:
        self._dir = directory
        self._blank_dir = blank_dir
        self._target = target
        self._ready: collections.deque[str] = collections.deque()
        self._wanted = threading.Event()
        self._filled = threading.Event()
        self._stopping = False
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: Batches made durable (one directory fsync each), for tests and stats.
        self.batches = 0
        #: `_open_dir` said that the directory would not open.
        self._refused = False

    def start(self) -> None:
        """Start the helper (idempotent); `take` calls it too."""
        with self._lock:
            if self._thread is None and not self._stopping:
                self._wanted.set()
                self._thread = threading.Thread(target=self._fill, name="smtpgate-slot-pool",
                                                daemon=True)
                self._thread.start()

    def wait_filled(self, timeout: float) -> bool:
        """Block until the helper has made a batch durable (tests, benchmarks)."""
        self.start()
        return self._filled.wait(timeout)

    def take(self) -> tuple[int, str] | None:
        """An open descriptor and the path of an empty, durably named slot, or None
        if none is ready (the caller then writes the old way: temp file, rename,
        directory fsync)."""
        if self._thread is None:
            self.start()
        while True:
            try:
                path = self._ready.popleft()
            except IndexError:
                self._wanted.set()
                return None
            if len(self._ready) < self._target // 2:
                self._wanted.set()
            try:
                return os.open(path, os.O_WRONLY | os.O_CLOEXEC), path
            except FileNotFoundError:  # removed as stale by another process's start-up
                continue

    def stop(self) -> None:
        """Stop the helper and delete the unused slots (no fsync needed: an empty
        slot that comes back after a crash is removed at start-up)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wanted.set()
        if thread is not None:
            thread.join()
        while self._ready:
            tmpfiles.unlink_quietly(self._ready.popleft())

    def _fill(self) -> None:
        dir_fd: int | None = None
        try:
            while not self._stopping:
                self._wanted.wait()
                self._wanted.clear()
                if dir_fd is None:
                    dir_fd = self._open_dir()
                    if dir_fd is None:
                        continue  # writers use temp files; tried again when woken
                made = self._create_batch()
                if not made:
                    continue
                try:
                    os.fsync(dir_fd)  # the batch's names survive a power cut from here on
                except OSError as e:
                    log.error("spool: cannot sync new slots in %s: %s", self._dir, e)
                    for path in made:
                        tmpfiles.unlink_quietly(path)
                    continue
                self._ready.extend(made)
                self.batches += 1
                self._filled.set()
        finally:
            if dir_fd is not None:
                os.close(dir_fd)

    def _open_dir(self) -> int | None:
        """The directory's descriptor for the fsync of each batch, or None (said once
        until it opens again). Why not let it raise: the helper would end, and every
        later message of this process would pay two syncs, with nothing in the log
        but a thread's traceback; a descriptor refused once (the open-file limit
        reached under a burst of connections) is there again a moment later."""
        try:
            fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            if not self._refused:
                self._refused = True
                log.warning("spool: cannot open %s to make slots: %s; messages are "
                            "written without them (two syncs each) until it opens",
                            self._dir, e.strerror or e)
            return None
        self._refused = False
        return fd

    def _create_batch(self) -> list[str]:
        """Slots for the batch: blanks renamed into place first (`blanks`), then
        files made here for the rest."""
        base = tmpfiles.prefix(self._dir)
        wanted = [f"{base}{next(self._seq):x}{SUFFIX}"
                  for _ in range(max(0, self._target - len(self._ready)))]
        made: list[str] = []
        if self._blank_dir is not None and wanted:
            first_left = blanks.claim(self._blank_dir, wanted)
            claimed = len(wanted) if first_left is None else wanted.index(first_left)
            made, wanted = wanted[:claimed], wanted[claimed:]
        for path in wanted:
            if self._stopping:
                break
            try:
                os.close(tmpfiles.open_new(path))
            except OSError:
                break  # writers fall back to temp files; try again when woken
            made.append(path)
        return made


def is_slot(name: str) -> bool:
    return name.endswith(SUFFIX) and NAME.match(name) is not None


def writer_may_be_alive(name: str, path: str) -> bool:
    """Whether the process that owns slot ``name`` may still use it: that process
    exists, started before the slot's last change (else the pid was reused: after a
    reboot, or a restart in a container) and, for a slot with content, wrote it
    within `tmpfiles.STALE_AGE`. An empty
    slot of a live process is never taken, however old: it is its pool's, and a
    quiet night must not turn the next message into a 451."""
    m = NAME.match(name)
    if m is None:
        return False
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True  # gone already: nothing to do
    if st.st_size and time.time() - st.st_mtime >= tmpfiles.STALE_AGE:
        return False
    return tmpfiles.writer_alive(int(m.group(1)), m.group(2), changed=st.st_ctime)
