"""Blanks: empty files made by the delivery process for the workers' slot pools.

Why: each received message is written into a slot (`slots`), a fresh file in
``queue/``, and each delivered message's file is removed. Making a file means
finding a free inode, and on ext4 without a journal the allocator skips every
inode freed in the last minute or more (``recently_deleted`` in the kernel's
``ialloc.c``), reading each one's inode-table entry: with a spool that frees a
file per message, one creation cost ~0.3 ms of kernel CPU in a busy minute
(bench/README.md, 2026-12-03). The worker's pool thread paid it in bursts of 32,
and a worker is bound to one CPU (`server.cpu_affinity`), so its event loop
waited behind that thread: two messages in every 33 took ~10 ms in workload A.

So the delivery process, which has a CPU and a GIL of its own, keeps a stock of
empty files in ``blank/`` beside ``queue/``, and a worker's pool renames blanks
into ``queue/`` under its slot names (a rename allocates no inode). A blank has
never held data, so a crash at any point leaves at worst an empty file in either
directory: an empty slot is removed at start-up, a blank is used later. When the
stock runs out the pool creates its own files, as before.

A blank is an inode, and the spool's file system is usually the Maildir's, the
databases' and the logs' too: a stock that took the last free inodes would make
every other new file fail (a delivery, a rotated log, Dovecot's index). So blanks
are made only while the file system keeps `INODE_RESERVE` free inodes (or a tenth
of all, if more) besides them, and given back (deleted) when others have taken the
file system below that. A file system that counts no inodes (``f_files`` 0, as
btrfs reports) is not limited.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable

from smtpgate.queue import tmpfiles

log = logging.getLogger("smtpgate.queue")

#: The spool's directory of blanks.
DIRECTORY = "blank"
#: Blanks kept in stock: about two seconds of the fastest intake measured (workload
#: B, 2,500 messages/s), so that the files of a burst are made before it, while the
#: server is idle. 512 ran out half-way through B's 1,000 messages and the rest made
#: their own (bench/README.md, 2026-12-03 16:50). Empty files hold no block; 4,096
#: inodes are about 1 MB of the file system's inode table.
STOCK = 4096
#: Free inodes the stock never takes: at least this many, or a tenth of the file
#: system's inodes if that is more, stay free for other files.
INODE_RESERVE = 10_000
#: Seconds between two looks at the stock while it is being used; an untouched
#: stock is looked at less and less often, down to once every `CHECK_IDLE`.
CHECK_EVERY = 0.05
CHECK_IDLE = 2.0


def claim(blank_dir: str, names: list[str]) -> str | None:
    """Rename one blank to each of ``names`` in turn, as far as blanks last;
    returns the first name not given one (None when all were). Another worker
    renaming the same blank first is not an error: the next one is tried."""
    wanted = iter(names)
    name = next(wanted, None)
    if name is None:
        return None
    try:
        with os.scandir(blank_dir) as entries:
            for entry in entries:
                try:
                    os.rename(entry.path, name)
                except FileNotFoundError:  # another worker took it
                    continue
                name = next(wanted, None)
                if name is None:
                    return None
    except OSError:
        pass  # no blank/ (an older spool, or removed): the caller makes files
    return name


class BlankMaker:
    """Keeps `STOCK` blanks in ``blank_dir`` from a thread of its own."""

    def __init__(self, blank_dir: str, stock: int = STOCK, every: float = CHECK_EVERY,
                 *, statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> None:
        self._dir = blank_dir
        self._stock = stock
        self._every = every
        self._statvfs = statvfs
        self._reserve = INODE_RESERVE
        #: Why no blank could be made, while that lasts (logged once per episode).
        self._held_back = ""
        self._stop = threading.Event()
        self._prefix = f"{blank_dir}/b{secrets.token_hex(4)}."
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="smtpgate-blanks", daemon=True)
        #: Blanks made so far (tests, stats).
        self.made = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def top_up(self) -> int:
        """Make blanks until the stock is full, as far as the file system's free
        inodes allow (module docstring); returns how many were made."""
        have = _count(self._dir, self._stock)
        want = self._stock - have
        spare = self._spare_inodes()
        if spare is not None and spare < 0:
            self._give_back(-spare)
        if spare is not None and spare < want:
            want = max(0, spare)
            if not want:
                self._hold_back(f"its file system is down to the {self._reserve} free inodes "
                                "kept for other files")
                return 0
        made = 0
        while made < want and not self._stop.is_set():
            self._seq += 1
            try:
                os.close(tmpfiles.open_new(f"{self._prefix}{self._seq:x}"))
            except FileExistsError:
                continue
            except OSError as e:
                self._hold_back(str(e.strerror or e))
                break
            made += 1
        if made and self._held_back:
            log.info("spool: making blank files in %s again", self._dir)
            self._held_back = ""
        self.made += made
        return made

    def _spare_inodes(self) -> int | None:
        """Free inodes above the reserve (negative: below it); None if the file
        system counts none, or cannot say."""
        try:
            st = self._statvfs(self._dir)
        except OSError:
            return None
        if st.f_files <= 0:
            return None
        self._reserve = max(INODE_RESERVE, st.f_files // 10)
        return st.f_favail - self._reserve

    def _give_back(self, wanted: int) -> None:
        """Delete up to ``wanted`` blanks (a worker renaming one first is no error)."""
        gone = 0
        try:
            with os.scandir(self._dir) as entries:
                for entry in entries:
                    if gone >= wanted:
                        break
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        gone += 1
        except OSError:
            return
        if gone:
            log.info("spool: gave back %d blank files in %s: the file system is short of "
                     "free inodes", gone, self._dir)

    def _hold_back(self, why: str) -> None:
        """Log, once until blanks are made again, why none can be made now."""
        if not self._held_back:
            log.warning("spool: no blank files made in %s: %s (the workers make their "
                        "own files meanwhile)", self._dir, why)
        self._held_back = why

    def _run(self) -> None:
        wait, seen = self._every, -1
        while not self._stop.is_set():
            have = _count(self._dir, self._stock)
            if in_use(have, seen, self._stock):
                wait, seen = self._every, have
            else:
                made = self.top_up()
                wait = self._every if made else min(CHECK_IDLE, wait * 2)
                seen = have + made
            self._stop.wait(wait)


def in_use(have: int, seen: int, stock: int) -> bool:
    """Whether to leave a stock of ``have`` blanks alone for now: a burst is taking
    from it (fewer than the ``seen`` at the last look) and it still holds a quarter.
    Its files are made once the burst is over, not on the cores and the journal the
    burst is using (bench/README.md, 2026-12-05)."""
    return stock // 4 <= have < seen


def _count(directory: str, up_to: int) -> int:
    """Entries of ``directory``, counted up to ``up_to``."""
    n = 0
    try:
        with os.scandir(directory) as entries:
            for _ in entries:
                n += 1
                if n >= up_to:
                    break
    except OSError:
        return up_to  # nothing to top up where the directory cannot be read
    return n
