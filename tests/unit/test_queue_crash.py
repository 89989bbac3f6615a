"""kill -9 at arbitrary moments: every acknowledged message is delivered exactly once.

The child process (this file run as a script) stores numbered messages while its
delivery worker moves them into a Maildir, and reports each store() that
returned: that is the moment the server would send 250. The parent kills it
with SIGKILL at a pseudo-random point, starts the next child on the same spool,
and so on; a last child drains the spool. Whatever the kill interrupted (a
write, a Maildir link, a state update, a removal), the Maildir must then hold
each acknowledged message once, and no message twice.

`run_child` is reusable by other crash tests (e.g. with another deliverer).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROUNDS = 5
PER_ROUND = 60
_MID = re.compile(rb"Message-ID: <(\d+)@crash\.test>")


async def _child(spool_dir: Path, maildir: Path, first: int, count: int) -> None:
    from smtpgate.config import QueueConfig
    from smtpgate.queue.envelope import Envelope
    from smtpgate.queue.maildir import MaildirDeliverer
    from smtpgate.queue.spool import Spool
    from smtpgate.queue.worker import DeliveryWorker

    spool = Spool(spool_dir)
    deliverer = MaildirDeliverer(maildir)
    worker = DeliveryWorker(spool, deliverer, QueueConfig(), poll_interval=0.05)
    if count == 0:  # drain mode: deliver what is there, then exit
        while spool.list_ids():
            await worker.run_once()
        await deliverer.close()
        await spool.close()
        return
    runner = asyncio.create_task(worker.run())
    env = Envelope("a@crash.test", ("b@crash.test", "c@crash.test"), "a", "192.0.2.1", "h", "l")

    async def store(n: int) -> None:
        data = b"Message-ID: <%d@crash.test>\r\nSubject: %d\r\n\r\nbody\r\n" % (n, n)
        await spool.store(env, data)
        sys.stdout.write(f"ACK {n}\n")  # the 250
        sys.stdout.flush()
        worker.wake()

    # Pairs of concurrent sessions, so group commits hold more than one message.
    for n in range(first, first + count, 2):
        await asyncio.gather(*(store(k) for k in range(n, min(n + 2, first + count))))
    sys.stdout.write("DONE\n")
    sys.stdout.flush()
    await runner  # deliver until killed


def run_child(spool_dir: Path, maildir: Path, first: int, count: int) -> subprocess.Popen[str]:
    """Start a child storing messages ``first .. first+count-1`` (0: drain only)."""
    return subprocess.Popen(
        [sys.executable, __file__, str(spool_dir), str(maildir), str(first), str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )


def delivered_numbers(maildir: Path) -> list[int]:
    out = []
    for sub in ("new", "cur"):
        for f in (maildir / sub).iterdir():
            m = _MID.search(f.read_bytes())
            assert m, f"unexpected file {f}"
            out.append(int(m.group(1)))
    return sorted(out)


def test_kill_9_at_random_points_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    spool_dir, maildir = tmp_path / "spool", tmp_path / "Maildir"
    rng = random.Random(4954)
    acked: set[int] = set()
    for rnd in range(ROUNDS):
        proc = run_child(spool_dir, maildir, rnd * PER_ROUND, PER_ROUND)
        assert proc.stdout is not None
        kill_after = rng.randrange(5, PER_ROUND + 1)
        line = ""
        while len([n for n in acked if n >= rnd * PER_ROUND]) < kill_after:
            line = proc.stdout.readline()
            assert line, f"child exited early (rc={proc.poll()})"
            if line.startswith("ACK "):
                acked.add(int(line.split()[1]))
            elif line.startswith("DONE"):
                break
        if line.startswith("DONE") or kill_after == PER_ROUND:
            time.sleep(rng.random() * 0.05)  # let the kill land among deliveries
        proc.send_signal(signal.SIGKILL)
        # Acks written before the kill still count: the client saw those 250s.
        rest, _ = proc.communicate(timeout=30)
        acked |= {int(ln.split()[1]) for ln in rest.splitlines() if ln.startswith("ACK ")}
        assert proc.returncode == -signal.SIGKILL
    drain = run_child(spool_dir, maildir, 0, 0)
    drain.communicate(timeout=120)
    assert drain.returncode == 0

    got = delivered_numbers(maildir)
    assert len(got) == len(set(got)), "a message was delivered twice"
    assert acked <= set(got), f"acknowledged but lost: {sorted(acked - set(got))}"
    assert os.listdir(spool_dir / "queue") == []
    assert os.listdir(spool_dir / "tmp") == []
    assert os.listdir(maildir / "tmp") == []


if __name__ == "__main__":
    asyncio.run(_child(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
