"""Maildir delivery: one copy per message, exactly once across crashes."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from smtpgate.queue import tmpfiles
from smtpgate.queue.delivery import Delivered, QueuedMessage, TempFailure
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.maildir import (
    MaildirDeliverer,
    maildir_name,
    return_path,
    without_return_path,
)

ENV = Envelope(
    mail_from="alice@example.org",
    rcpt_to=("bob@example.net", "carol@example.net"),
    auth_identity="alice",
    client_ip="192.0.2.7",
    helo="laptop.example.org",
    listener="submission",
    received_at=1_700_000_000.9,
)
DATA = b"Subject: hi\r\n\r\nhello\r\n"
MSG = QueuedMessage("18f00000000-1-0-00000000", ENV, DATA)


Factory = Callable[..., MaildirDeliverer]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    """MaildirDeliverer factory (one per simulated process); all closed at the end."""
    made: list[MaildirDeliverer] = []

    def factory(path: Path, prefill: bool = False) -> MaildirDeliverer:
        made.append(MaildirDeliverer(path, prefill=prefill))
        return made[-1]

    yield factory
    for d in made:
        await d.close()


def _files(md: Path) -> dict[str, list[str]]:
    return {sub: sorted(os.listdir(md / sub)) for sub in ("tmp", "new", "cur")}


@pytest.mark.parametrize("prefill", [False, True])
async def test_one_copy_with_return_path_for_all_recipients(
    tmp_path: Path, make: Factory, prefill: bool
) -> None:
    md = tmp_path / "Maildir"
    deliverer = make(md, prefill)
    results = await deliverer.deliver(MSG, ENV.rcpt_to)
    await deliverer.close()  # the pool's spare files go too
    assert set(results) == set(ENV.rcpt_to)
    assert all(isinstance(r, Delivered) for r in results.values())
    name = maildir_name(MSG)
    assert name.startswith("1700000000.") and MSG.queue_id in name
    assert _files(md) == {"tmp": [], "new": [name], "cur": []}
    assert (md / "new" / name).read_bytes() == b"Return-Path: <alice@example.org>\r\n" + DATA


def test_return_path_for_null_sender_and_no_header_injection() -> None:
    assert return_path("") == b"Return-Path: <>\r\n"
    assert return_path("a@x\r\nBcc: victim@y") == b"Return-Path: <a@xBcc: victim@y>\r\n"


async def test_rfc5321_s4_4_return_path_from_the_client_is_dropped(
    tmp_path: Path, make: Factory
) -> None:
    """A submitted message that carries Return-Path fields (a saved .eml sent again,
    an application copying a received message) is delivered with one Return-Path,
    the envelope's: RFC 5321 §4.4 lets final delivery remove the others, and
    Postfix drops them (message_drop_headers). Folded and any-case fields go;
    the body and look-alike fields stay."""
    data = (
        b"Received: from laptop ([192.0.2.7])\r\n\tby mail.example.org\r\n"
        b"Return-Path: <ceo@bank.example>\r\n"
        b"From: alice@example.org\r\n"
        b"return-path :\r\n <other@bank.example>\r\n"
        b"X-Original-Return-Path: <kept@example.net>\r\n"
        b"Subject: resent\r\n"
        b"\r\n"
        b"Return-Path: <in-the-body@example.net>\r\n"
    )
    message = QueuedMessage("18f00000000-1-0-00000001", ENV, data)
    md = tmp_path / "Maildir"
    results = await make(md).deliver(message, ENV.rcpt_to)
    assert all(isinstance(r, Delivered) for r in results.values())
    assert (md / "new" / maildir_name(message)).read_bytes() == (
        b"Return-Path: <alice@example.org>\r\n"
        b"Received: from laptop ([192.0.2.7])\r\n\tby mail.example.org\r\n"
        b"From: alice@example.org\r\n"
        b"X-Original-Return-Path: <kept@example.net>\r\n"
        b"Subject: resent\r\n"
        b"\r\n"
        b"Return-Path: <in-the-body@example.net>\r\n"
    )


async def test_redelivery_after_crash_finds_the_copy_in_new(tmp_path: Path, make: Factory) -> None:
    md = tmp_path / "Maildir"
    await make(md).deliver(MSG, ENV.rcpt_to)
    # The process died before the spool recorded it; a new process retries.
    retry = QueuedMessage(MSG.queue_id, ENV, DATA, maybe_delivered=True)
    results = await make(md).deliver(retry, ENV.rcpt_to)
    assert all(isinstance(r, Delivered) for r in results.values())
    assert len(os.listdir(md / "new")) == 1


async def test_redelivery_after_crash_finds_the_copy_a_reader_moved_to_cur(
    tmp_path: Path, make: Factory
) -> None:
    md = tmp_path / "Maildir"
    await make(md).deliver(MSG, ENV.rcpt_to)
    name = maildir_name(MSG)
    (md / "new" / name).rename(md / "cur" / f"{name}:2,S")  # a mail reader saw it
    retry = QueuedMessage(MSG.queue_id, ENV, DATA, maybe_delivered=True)
    results = await make(md).deliver(retry, ENV.rcpt_to)
    assert all(isinstance(r, Delivered) for r in results.values())
    assert _files(md) == {"tmp": [], "new": [], "cur": [f"{name}:2,S"]}


async def test_retry_in_the_same_process_never_links_a_second_copy(tmp_path: Path, make: Factory) -> None:
    md = tmp_path / "Maildir"
    deliverer = make(md)
    await deliverer.deliver(MSG, ENV.rcpt_to)
    name = maildir_name(MSG)
    (md / "new" / name).rename(md / "cur" / f"{name}:2,S")
    # e.g. the worker's await was cancelled after the link: no suspicion flag.
    await deliverer.deliver(MSG, ENV.rcpt_to)
    assert _files(md)["new"] == []


async def test_crash_between_link_and_tmp_unlink_leaves_the_copy_intact(
    tmp_path: Path, make: Factory
) -> None:
    md = tmp_path / "Maildir"
    await make(md).deliver(MSG, ENV.rcpt_to)
    name = maildir_name(MSG)
    # Recreate the crash state: a dead process's temp name for the delivered inode.
    dead_pid = _dead_pid()
    leftover = md / "tmp" / f"{dead_pid}.sgdeadbeef.pool.1"
    os.link(md / "new" / name, leftover)
    # Another MDA's file, even with an 8-character middle part, is not ours.
    foreign = md / "tmp" / "1700000000.M1234P56.otherhost"
    foreign.write_bytes(b"x")
    delivered = (md / "new" / name).read_bytes()
    restarted = make(md)  # start-up removes our dead temp names, never foreign ones
    await restarted.deliver(QueuedMessage(MSG.queue_id, ENV, DATA, maybe_delivered=True),
                            ENV.rcpt_to)
    assert (md / "new" / name).read_bytes() == delivered
    assert _files(md) == {"tmp": [foreign.name], "new": [name], "cur": []}


async def test_unwritable_maildir_is_a_temporary_failure(
    tmp_path: Path, make: Factory, caplog: pytest.LogCaptureFixture,
) -> None:
    md = tmp_path / "Maildir"
    deliverer = make(md)
    shutil.rmtree(md / "tmp")
    (md / "tmp").write_bytes(b"")  # in the way (chmod does not stop root)
    with caplog.at_level(logging.WARNING, logger="smtpgate.queue"):
        results = await deliverer.deliver(MSG, ("bob@example.net",))
    assert isinstance(results["bob@example.net"], TempFailure)
    assert os.listdir(md / "new") == []
    assert f"maildir {md}: tmp/ missing and cannot be created: " in caplog.text


@pytest.mark.parametrize("maybe_delivered", [False, True])
async def test_a_maildir_removed_while_running_is_made_again(
    tmp_path: Path, make: Factory, caplog: pytest.LogCaptureFixture, maybe_delivered: bool,
) -> None:
    """Start-up makes the Maildir, but one removed afterwards deferred every message
    ("No such file or directory") until queue.max_age bounced it; and a message
    flagged as possibly delivered raised FileNotFoundError out of the batch."""
    md = tmp_path / "box" / "Maildir"
    deliverer = make(md, prefill=True)
    shutil.rmtree(tmp_path / "box")
    msg = QueuedMessage(MSG.queue_id, ENV, DATA, maybe_delivered=maybe_delivered)
    with caplog.at_level(logging.WARNING, logger="smtpgate.queue"):
        (result,) = deliverer.deliver_blocking([msg])
    assert isinstance(result, Delivered), result
    files = _files(md)
    assert (files["new"], files["cur"]) == ([maildir_name(MSG)], [])  # tmp/: the pool's
    assert (f"maildir {md}: tmp/, new/, cur/ missing (removed while the server runs?): "
            "created again") in caplog.text


@pytest.mark.parametrize(("code", "status"), [
    (errno.ENOSPC, "4.3.1"),  # RFC 3463 X.3.1: mail system full
    (errno.EDQUOT, "4.3.1"),
    (errno.EIO, "4.3.0"),
])
async def test_full_maildir_defers_with_4_3_1_and_warns_naming_the_maildir(
    tmp_path: Path, make: Factory, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, code: int, status: str,
) -> None:
    """A Maildir on a full file system was deferred with 4.3.0 and only the INFO
    "deferred" record, which names neither the Maildir nor the cause's class."""
    md = tmp_path / "Maildir"
    deliverer = make(md)

    def full(fd: int, chunks: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tmpfiles, "write_all", full)
    other = QueuedMessage("18f00000000-1-1-00000001", ENV, b"other")
    with caplog.at_level(logging.WARNING, logger="smtpgate.queue"):
        results = deliverer.deliver_blocking([MSG, other])
    for result in results:
        assert isinstance(result, TempFailure)
        assert result.reply.startswith(f"{status} maildir delivery failed: "), result.reply
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    want = f"maildir {md}: cannot write into {md / 'tmp'}: {os.strerror(code)}; 2 messages"
    assert warnings == [want + " deferred"]
    assert os.listdir(md / "new") == []


async def test_different_messages_get_different_files(tmp_path: Path, make: Factory) -> None:
    md = tmp_path / "Maildir"
    deliverer = make(md)
    other = QueuedMessage("18f00000000-1-1-00000001", ENV, b"other")
    await deliverer.deliver(MSG, ENV.rcpt_to)
    await deliverer.deliver(other, ENV.rcpt_to)
    assert len(os.listdir(md / "new")) == 2


async def test_delivered_spool_files_are_recycled_into_the_maildir_pool(
    tmp_path: Path, make: Factory
) -> None:
    from smtpgate.config import QueueConfig
    from smtpgate.queue.spool import Spool
    from smtpgate.queue.worker import DeliveryWorker

    spool = Spool(tmp_path / "spool", prefill=False)
    qid = await spool.store(ENV, DATA)
    inode = (tmp_path / "spool" / "queue" / f"{qid}.msg").stat().st_ino
    md = tmp_path / "Maildir"
    deliverer = make(md, prefill=True)
    await DeliveryWorker(spool, deliverer, QueueConfig()).run_once()
    await spool.close()
    assert spool.list_ids() == []
    spare = [f for f in (md / "tmp").iterdir() if ".pool.r" in f.name]
    # The spent spool inode, emptied, now waits to hold the next Maildir copy.
    assert [(f.stat().st_ino, f.stat().st_size) for f in spare] == [(inode, 0)]
    assert os.listdir(tmp_path / "spool" / "tmp") == []


@pytest.mark.parametrize(
    ("data", "kept"),
    [
        (b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\r\n"),
        (b"\r\nReturn-Path: <body@example.net>\r\n", b"\r\nReturn-Path: <body@example.net>\r\n"),
        # All header (BDAT may end without CRLF): the last field goes too.
        (b"Subject: x\r\nReturn-Path: <a@b>", b"Subject: x\r\n"),
        (b"RETURN-PATH:<a@b>\r\n\t<c@d>\r\nSubject: x\r\n\r\n", b"Subject: x\r\n\r\n"),
    ],
)
def test_without_return_path_looks_at_the_header_section_only(data: bytes, kept: bytes) -> None:
    assert b"".join(without_return_path(data)) == kept
