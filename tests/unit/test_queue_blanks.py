"""Blanks (queue/blanks.py): the delivery process keeps empty files in the
spool's blank/; a worker's slot pool renames them into queue/ instead of making
files, and makes its own only when the stock runs out; two pools never get the
same file; a message written into a claimed blank is stored and delivered."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from smtpgate.queue import blanks
from smtpgate.queue import slots as slots_mod
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.spool import Spool

ENV = Envelope(mail_from="a@example.org", rcpt_to=("b@example.net",), auth_identity="a",
               client_ip="192.0.2.1", helo="client.test", listener="submission")


def make_blanks(directory: Path, n: int) -> dict[int, str]:
    """``n`` empty files in ``directory``; their inode numbers."""
    directory.mkdir(exist_ok=True)
    made = {}
    for i in range(n):
        path = directory / f"b.{i}"
        path.touch()
        made[path.stat().st_ino] = path.name
    return made


def test_claim_renames_blanks_into_place_until_they_run_out(tmp_path: Path) -> None:
    stock = make_blanks(tmp_path / "blank", 3)
    queue = tmp_path / "queue"
    queue.mkdir()
    names = [str(queue / f"s{i}.slot") for i in range(5)]

    first_left = blanks.claim(str(tmp_path / "blank"), names)

    assert first_left == names[3]
    assert os.listdir(tmp_path / "blank") == []
    claimed = {os.stat(n).st_ino for n in names[:3]}
    assert claimed == set(stock)  # the same files, renamed: no new inode
    assert not os.path.exists(names[3]) and not os.path.exists(names[4])


def test_claim_without_a_blank_directory_claims_nothing(tmp_path: Path) -> None:
    names = [str(tmp_path / "s0.slot")]
    assert blanks.claim(str(tmp_path / "missing"), names) == names[0]
    assert not os.path.exists(names[0])


def test_two_claimers_never_get_the_same_blank(tmp_path: Path) -> None:
    make_blanks(tmp_path / "blank", 300)
    queue = tmp_path / "queue"
    queue.mkdir()
    results: dict[str, list[str]] = {}

    def claimer(tag: str) -> None:
        names = [str(queue / f"{tag}{i}.slot") for i in range(200)]
        left = blanks.claim(str(tmp_path / "blank"), names)
        results[tag] = names if left is None else names[:names.index(left)]

    threads = [threading.Thread(target=claimer, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    got = results["a"] + results["b"]
    assert len(got) == 300
    assert len({os.stat(p).st_ino for p in got}) == 300
    assert sorted(os.listdir(queue)) == sorted(os.path.basename(p) for p in got)


def test_maker_keeps_the_stock_full(tmp_path: Path) -> None:
    directory = tmp_path / "blank"
    directory.mkdir()
    maker = blanks.BlankMaker(str(directory), stock=40)
    assert maker.top_up() == 40
    assert maker.top_up() == 0
    for name in sorted(os.listdir(directory))[:7]:
        os.unlink(directory / name)
    assert maker.top_up() == 7
    assert len(os.listdir(directory)) == 40
    assert all((directory / n).stat().st_size == 0 for n in os.listdir(directory))


def test_a_stock_a_burst_is_taking_is_topped_up_after_it_unless_it_runs_low() -> None:
    # 4,096 in stock: taken from since the last look, it waits while a quarter is left.
    assert blanks.in_use(3000, 3500, 4096)
    assert blanks.in_use(1024, 1100, 4096)
    assert not blanks.in_use(1023, 1100, 4096)  # below a quarter: make files now
    assert not blanks.in_use(3000, 3000, 4096)  # untouched since the last look
    assert not blanks.in_use(3000, -1, 4096)  # the first look


def test_the_maker_thread_waits_for_a_burst_and_then_fills_the_stock(tmp_path: Path) -> None:
    directory = tmp_path / "blank"
    directory.mkdir()
    maker = blanks.BlankMaker(str(directory), stock=40, every=0.01)
    maker.top_up()
    maker.start()
    try:
        taken = 0
        for name in sorted(os.listdir(directory))[:25]:  # a burst, leaving 15 (> 10)
            os.unlink(directory / name)
            taken += 1
        # Once nothing more is taken, the stock is made whole again.
        deadline = time.monotonic() + 30
        while len(os.listdir(directory)) < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(os.listdir(directory)) == 40 and maker.made == 40 + taken
    finally:
        maker.stop()


def test_slot_pool_takes_blanks_first_then_makes_files(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    queue.mkdir()
    stock = make_blanks(tmp_path / "blank", 10)
    pool = slots_mod.SlotPool(str(queue), target=16, blank_dir=str(tmp_path / "blank"))
    try:
        assert pool.wait_filled(10)
        slots = [n for n in os.listdir(queue) if slots_mod.is_slot(n)]
        assert len(slots) == 16
        inodes = {(queue / n).stat().st_ino for n in slots}
        assert set(stock) <= inodes  # all ten blanks used, six files made
        assert os.listdir(tmp_path / "blank") == []
    finally:
        pool.stop()
    assert [n for n in os.listdir(queue) if slots_mod.is_slot(n)] == []


async def test_spool_stores_a_message_in_a_claimed_blank(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    try:
        sp.make_blanks()
        blank_dir = tmp_path / "spool" / blanks.DIRECTORY
        for _ in range(400):
            if len(os.listdir(blank_dir)) >= blanks.STOCK:
                break
            await asyncio.sleep(0.05)
        stock = {(blank_dir / n).stat().st_ino for n in os.listdir(blank_dir)}
        assert len(stock) == blanks.STOCK
        assert sp.slots is not None and await asyncio.to_thread(sp.slots.wait_filled, 10)

        inc = sp.receive(ENV, b"Received: by test\r\n")
        inc.write(b"Subject: blank\r\n\r\nhello\r\n")
        qid = await sp.publish(inc)

        stored = tmp_path / "spool" / "queue" / f"{qid}.msg"
        assert stored.stat().st_ino in stock  # written into a former blank
        envelope, data = sp.load(qid)
        assert envelope.mail_from == ENV.mail_from
        assert data.endswith(b"Subject: blank\r\n\r\nhello\r\n")
    finally:
        await sp.close()


class InodeCounts:
    """``os.statvfs`` of a file system with ``total`` inodes, of which ``others``
    are used by other files besides the blanks in ``directory``."""

    def __init__(self, directory: Path, total: int, others: int) -> None:
        self.directory, self.total, self.others = directory, total, others

    def __call__(self, path: str) -> os.statvfs_result:
        free = self.total - self.others - len(os.listdir(self.directory))
        return os.statvfs_result((4096, 4096, 1 << 20, 1 << 19, 1 << 19,
                                  self.total, free, free, 0, 255))


def test_blanks_never_take_the_inodes_kept_for_other_files(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file system with 10,030 free inodes: the stock stops at 30, so 10,000
    (`INODE_RESERVE`) stay free for the Maildir, the databases and the logs. When
    other files take the file system under the reserve, blanks are given back;
    the reason none is made is logged once, not at every look."""
    caplog.set_level(logging.INFO, logger="smtpgate.queue")
    directory = tmp_path / "blank"
    directory.mkdir()
    fs = InodeCounts(directory, total=50_000, others=50_000 - blanks.INODE_RESERVE - 30)
    maker = blanks.BlankMaker(str(directory), stock=40, statvfs=fs)
    assert maker.top_up() == 30
    assert len(os.listdir(directory)) == 30
    for _ in range(5):
        assert maker.top_up() == 0
    held = [r for r in caplog.records if "no blank files made" in r.getMessage()]
    assert len(held) == 1 and "10000 free inodes" in held[0].getMessage()
    fs.others += 12  # a delivery, a rotated log...: 12 under the reserve now
    assert maker.top_up() == 0
    assert len(os.listdir(directory)) == 18  # 12 given back
    assert len([r for r in caplog.records if "no blank files made" in r.getMessage()]) == 1
    fs.others -= 20  # space again: blanks are made, and the log says so
    assert maker.top_up() == 20
    assert any("making blank files" in r.getMessage() for r in caplog.records)


def test_the_reserve_is_a_tenth_of_a_large_file_system(tmp_path: Path) -> None:
    directory = tmp_path / "blank"
    directory.mkdir()
    fs = InodeCounts(directory, total=1_000_000, others=1_000_000 - 100_000 - 7)
    assert blanks.BlankMaker(str(directory), stock=40, statvfs=fs).top_up() == 7


def test_a_file_system_that_counts_no_inodes_is_not_limited(tmp_path: Path) -> None:
    """btrfs reports ``f_files`` 0: inodes are made as needed, nothing to keep."""
    directory = tmp_path / "blank"
    directory.mkdir()

    def btrfs(path: str) -> os.statvfs_result:
        return os.statvfs_result((4096, 4096, 1 << 20, 1 << 19, 1 << 19, 0, 0, 0, 0, 255))

    assert blanks.BlankMaker(str(directory), stock=40, statvfs=btrfs).top_up() == 40
