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
"""

from __future__ import annotations

import logging
import os
import secrets
import threading

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

    def __init__(self, blank_dir: str, stock: int = STOCK, every: float = CHECK_EVERY) -> None:
        self._dir = blank_dir
        self._stock = stock
        self._every = every
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
        """Make blanks until the stock is full; returns how many were made."""
        have = _count(self._dir, self._stock)
        made = 0
        while have + made < self._stock and not self._stop.is_set():
            self._seq += 1
            try:
                os.close(tmpfiles.open_new(f"{self._prefix}{self._seq:x}"))
            except FileExistsError:
                continue
            except OSError as e:
                log.warning("spool: cannot make blank files in %s: %s", self._dir,
                            e.strerror or e)
                break
            made += 1
        self.made += made
        return made

    def _run(self) -> None:
        wait = self._every
        while not self._stop.is_set():
            wait = self._every if self.top_up() else min(CHECK_IDLE, wait * 2)
            self._stop.wait(wait)


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
