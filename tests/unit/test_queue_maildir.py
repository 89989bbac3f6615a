"""Maildir delivery: one copy per message, exactly once across crashes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from smtpgate.queue.delivery import Delivered, QueuedMessage, TempFailure
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.maildir import MaildirDeliverer, maildir_name, return_path

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


def _files(md: Path) -> dict[str, list[str]]:
    return {sub: sorted(os.listdir(md / sub)) for sub in ("tmp", "new", "cur")}


async def test_one_copy_with_return_path_for_all_recipients(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    results = await MaildirDeliverer(md).deliver(MSG, ENV.rcpt_to)
    assert set(results) == set(ENV.rcpt_to)
    assert all(isinstance(r, Delivered) for r in results.values())
    name = maildir_name(MSG)
    assert name.startswith("1700000000.") and MSG.queue_id in name
    assert _files(md) == {"tmp": [], "new": [name], "cur": []}
    assert (md / "new" / name).read_bytes() == b"Return-Path: <alice@example.org>\r\n" + DATA


def test_return_path_for_null_sender_and_no_header_injection() -> None:
    assert return_path("") == b"Return-Path: <>\r\n"
    assert return_path("a@x\r\nBcc: victim@y") == b"Return-Path: <a@xBcc: victim@y>\r\n"


async def test_redelivery_after_crash_finds_the_copy_in_new(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    await MaildirDeliverer(md).deliver(MSG, ENV.rcpt_to)
    # The process died before the spool recorded it; a new process retries.
    retry = QueuedMessage(MSG.queue_id, ENV, DATA, maybe_delivered=True)
    results = await MaildirDeliverer(md).deliver(retry, ENV.rcpt_to)
    assert all(isinstance(r, Delivered) for r in results.values())
    assert len(os.listdir(md / "new")) == 1


async def test_redelivery_after_crash_finds_the_copy_a_reader_moved_to_cur(
    tmp_path: Path,
) -> None:
    md = tmp_path / "Maildir"
    await MaildirDeliverer(md).deliver(MSG, ENV.rcpt_to)
    name = maildir_name(MSG)
    (md / "new" / name).rename(md / "cur" / f"{name}:2,S")  # a mail reader saw it
    retry = QueuedMessage(MSG.queue_id, ENV, DATA, maybe_delivered=True)
    results = await MaildirDeliverer(md).deliver(retry, ENV.rcpt_to)
    assert all(isinstance(r, Delivered) for r in results.values())
    assert _files(md) == {"tmp": [], "new": [], "cur": [f"{name}:2,S"]}


async def test_retry_in_the_same_process_never_links_a_second_copy(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    deliverer = MaildirDeliverer(md)
    await deliverer.deliver(MSG, ENV.rcpt_to)
    name = maildir_name(MSG)
    (md / "new" / name).rename(md / "cur" / f"{name}:2,S")
    # e.g. the worker's await was cancelled after the link: no suspicion flag.
    await deliverer.deliver(MSG, ENV.rcpt_to)
    assert _files(md)["new"] == []


async def test_crash_between_link_and_tmp_unlink_never_truncates_the_delivered_copy(
    tmp_path: Path,
) -> None:
    md = tmp_path / "Maildir"
    await MaildirDeliverer(md).deliver(MSG, ENV.rcpt_to)
    name = maildir_name(MSG)
    # Recreate the crash state: tmp/<name> is the same inode as new/<name>.
    os.link(md / "new" / name, md / "tmp" / name)
    delivered = (md / "new" / name).read_bytes()
    # Even without the suspicion flag the link step recognises its own copy.
    await MaildirDeliverer(md).deliver(MSG, ENV.rcpt_to)
    assert (md / "new" / name).read_bytes() == delivered
    assert _files(md) == {"tmp": [], "new": [name], "cur": []}


async def test_unwritable_maildir_is_a_temporary_failure(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    deliverer = MaildirDeliverer(md)
    shutil.rmtree(md / "tmp")
    results = await deliverer.deliver(MSG, ("bob@example.net",))
    assert isinstance(results["bob@example.net"], TempFailure)
    assert os.listdir(md / "new") == []


async def test_different_messages_get_different_files(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    deliverer = MaildirDeliverer(md)
    other = QueuedMessage("18f00000000-1-1-00000001", ENV, b"other")
    await deliverer.deliver(MSG, ENV.rcpt_to)
    await deliverer.deliver(other, ENV.rcpt_to)
    assert len(os.listdir(md / "new")) == 2
