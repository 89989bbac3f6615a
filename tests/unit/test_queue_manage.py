"""Queue commands on a spool (queue/manage.py), and the worker honouring them:
hold, release, flush, delete and bounce take the message lock an attempt holds."""

from __future__ import annotations

import asyncio
import email
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from smtpgate.queue.delivery import Delivered, DeliveryResult, QueuedMessage, TempFailure
from smtpgate.queue.manage import ADMIN_BOUNCE, QueueBusy, QueueManager
from smtpgate.queue.spool import MessageNotFound, Spool
from smtpgate.queue.worker import DeliveryWorker

from .test_queue_worker import CFG, T0, FakeClock, FakeDeliverer, envelope

MESSAGE = b"From: alice@example.org\r\nSubject: hi\r\nMessage-ID: <m1@x>\r\n\r\nbody\r\n"


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "spool", prefill=False)
    yield s
    await s.close()


class FirstFails(FakeDeliverer):
    """The first attempt is deferred (451), later ones deliver."""

    async def deliver(self, message: QueuedMessage,
                      recipients: tuple[str, ...]) -> Mapping[str, DeliveryResult]:
        self.default = TempFailure("451 4.3.0 later") if not self.calls else Delivered()
        return await super().deliver(message, recipients)


def manager(spool: Spool, wait: float = 5.0) -> QueueManager:
    return QueueManager(spool, wait=wait, reporting_mta="mx.example.org")


async def test_held_message_is_not_attempted_until_released(spool: Spool) -> None:
    qid = spool.store_sync(envelope(), MESSAGE)
    mgr = manager(spool)
    assert mgr.hold(qid) is True and mgr.hold(qid) is False
    d = FakeDeliverer()
    worker = DeliveryWorker(spool, d, CFG, FakeClock())
    assert await worker.run_once() == 0
    assert spool.list_ids() == [qid] and d.calls == []
    assert mgr.flush(None) == 0  # flush leaves held mail alone, as postqueue -f does
    assert mgr.release(qid) is True
    assert await worker.run_once() == 1
    assert spool.list_ids() == []


async def test_flush_makes_a_deferred_message_due_and_asks_the_worker(spool: Spool) -> None:
    qid = spool.store_sync(envelope(), MESSAGE)
    clock = FakeClock()
    d = FakeDeliverer(TempFailure("451 4.3.0 later"))
    worker = DeliveryWorker(spool, d, CFG, clock)
    await worker.run_once()
    state = spool.load_state(qid)
    assert state is not None and state.next_attempt > T0
    assert await worker.run_once() == 0  # not due yet
    assert manager(spool).flush(qid) == 1
    assert (spool.directory / "flush" / qid).exists()  # the request the worker takes
    d.default = Delivered()
    assert await worker.run_once() == 1
    assert spool.list_ids() == []


async def test_running_worker_takes_a_flush_request(spool: Spool) -> None:
    # Arrived now (the worker runs on the real clock): deferred, not expired.
    spool.store_sync(replace(envelope(), received_at=time.time()), MESSAGE)
    d = FakeDeliverer(TempFailure("451 4.3.0 later"))
    worker = DeliveryWorker(spool, d, CFG, time.time, poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while not (spool.load_state(spool.list_ids()[0]) or None):
                await asyncio.sleep(0.01)  # the first attempt is recorded: retry in 60 s
        d.default = Delivered()
        await asyncio.to_thread(manager(spool).flush, None)
        async with asyncio.timeout(10):
            while spool.list_ids():
                await asyncio.sleep(0.02)
        assert len(d.calls) == 2
    finally:
        worker.stop(0)
        await task


async def test_a_directory_in_flush_does_not_stop_the_worker(
    spool: Spool, caplog: pytest.LogCaptureFixture,
) -> None:
    """Something in spool/flush/ the worker cannot remove (a directory, a file it
    may not unlink) raised out of every scan: "cannot list the spool" four times a
    second, and no message was delivered any more. It is ignored, logged once."""
    stray = spool.directory / "flush" / "stray"
    stray.mkdir(parents=True)
    spool.store_sync(replace(envelope(), received_at=time.time()), MESSAGE)
    d = FirstFails()
    worker = DeliveryWorker(spool, d, CFG, time.time, poll_interval=0.05)
    with caplog.at_level(logging.WARNING, logger="smtpgate.queue"):
        task = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(10):
                while not (spool.load_state(spool.list_ids()[0]) or None):
                    await asyncio.sleep(0.01)  # deferred: retry in 60 s
            await asyncio.to_thread(manager(spool).flush, None)  # a request beside it
            async with asyncio.timeout(10):
                while spool.list_ids():
                    await asyncio.sleep(0.02)
        finally:
            worker.stop(0)
            await task
    assert stray.is_dir()
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [(f"queue: {stray} is no flush request and cannot be removed "
                       "(Is a directory); ignored, remove it")]


async def test_flush_during_an_attempt_gets_one_more_attempt_after_it(spool: Spool) -> None:
    """The command cannot reset a state the attempt is about to write; the worker
    remembers the request and tries again as soon as the attempt ends."""
    spool.store_sync(replace(envelope(), received_at=time.time()), MESSAGE)
    d = FirstFails()
    d.gate = asyncio.Event()
    worker = DeliveryWorker(spool, d, CFG, time.time, poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        await d.called.wait()
        assert await asyncio.to_thread(manager(spool).flush, None) == 1  # busy: in progress
        await asyncio.sleep(0.2)  # the worker's next scans take the request
        d.gate.set()
        async with asyncio.timeout(10):
            while spool.list_ids():
                await asyncio.sleep(0.02)
        assert len(d.calls) == 2
    finally:
        worker.stop(0)
        await task


async def test_delete_waits_for_the_attempt_in_progress(spool: Spool) -> None:
    """The attempt delivers; the delete then finds nothing to delete (no loss, no
    second copy): it never removes a message a deliverer is handing over."""
    qid = spool.store_sync(envelope(), MESSAGE)
    d = FakeDeliverer()
    d.gate = asyncio.Event()
    worker = DeliveryWorker(spool, d, CFG, FakeClock())
    attempt = asyncio.create_task(worker.run_once())
    await d.called.wait()
    loop = asyncio.get_running_loop()
    started = threading.Event()

    def delete() -> BaseException | None:
        started.set()
        try:
            manager(spool, wait=10).delete(qid)
        except BaseException as e:  # noqa: BLE001 - returned to the test
            return e
        return None

    deleting = loop.run_in_executor(None, delete)
    await asyncio.to_thread(started.wait)
    await asyncio.sleep(0.2)
    assert not deleting.done()  # waiting for the lock
    d.gate.set()
    assert await attempt == 1
    assert isinstance(await deleting, MessageNotFound)
    assert len(d.calls) == 1


async def test_delete_gives_up_after_wait_while_an_attempt_runs(spool: Spool) -> None:
    qid = spool.store_sync(envelope(), MESSAGE)
    d = FakeDeliverer()
    d.gate = asyncio.Event()
    worker = DeliveryWorker(spool, d, CFG, FakeClock())
    attempt = asyncio.create_task(worker.run_once())
    await d.called.wait()
    with pytest.raises(QueueBusy):
        await asyncio.to_thread(manager(spool, wait=0.1).delete, qid)
    d.gate.set()
    await attempt
    assert spool.list_ids() == []


async def test_delete_removes_a_held_message_for_good(spool: Spool) -> None:
    qid = spool.store_sync(envelope(), MESSAGE)
    mgr = manager(spool)
    mgr.hold(qid)
    env = mgr.delete(qid)
    assert env.rcpt_to == ("bob@example.net",)
    assert spool.list_ids() == []
    with pytest.raises(MessageNotFound):
        mgr.delete(qid)


def test_unknown_or_malformed_ids_are_not_found(spool: Spool) -> None:
    mgr = manager(spool)
    for bad in ("0-0-0-0", "../../etc/passwd", ""):
        with pytest.raises(MessageNotFound):
            mgr.hold(bad)


def test_bounce_returns_the_message_to_its_sender_with_a_report(spool: Spool) -> None:
    qid = spool.store_sync(envelope("bob@example.net", "carol@example.net"), MESSAGE)
    report_id = manager(spool).bounce(qid)
    assert report_id is not None and spool.list_ids() == [report_id]
    env, data = spool.load(report_id)
    assert env.mail_from == "" and env.rcpt_to == ("alice@example.org",)
    msg = email.message_from_bytes(data)
    assert msg.get_content_type() == "multipart/report"
    status = msg.get_payload()[1]
    assert status.get_content_type() == "message/delivery-status"
    recipients = [b["Final-Recipient"] for b in status.get_payload()[1:]]
    assert recipients == ["rfc822; bob@example.net", "rfc822; carol@example.net"]
    assert ADMIN_BOUNCE in data.decode()


async def test_bounce_dates_each_recipient_by_its_last_attempt(spool: Spool) -> None:
    """RFC 3464 §2.3.7: Last-Attempt-Date is when the recipient was last tried, not
    when the administrator bounced it (the report named the bounce's own time, so a
    message deferred for days read as just tried); one never tried has none."""
    from smtpgate.smtp.received import utc_date

    qid = spool.store_sync(envelope("bob@example.net"), MESSAGE)
    d = FakeDeliverer()
    d.default = TempFailure("451 4.3.0 later")
    assert await DeliveryWorker(spool, d, CFG, FakeClock(T0 + 60)).run_once() == 1
    untried = spool.store_sync(envelope("carol@example.net"), MESSAGE)
    mgr = manager(spool)
    for bounced, want in ((qid, [utc_date(T0 + 60)]), (untried, [])):
        report_id = mgr.bounce(bounced)
        assert report_id is not None
        status = email.message_from_bytes(spool.load(report_id)[1]).get_payload()[1]
        (rcpt,) = status.get_payload()[1:]
        assert rcpt.get_all("Last-Attempt-Date", []) == want


async def test_bounce_gives_each_recipient_the_error_of_its_last_attempt(spool: Spool) -> None:
    """RFC 3464 §2.3.4-6: Status, Remote-MTA and Diagnostic-Code say what the last
    attempt got. The report said "5.0.0 returned to the sender by the mail
    administrator" for every recipient (seen with a real serve whose relay closed
    each connection at the greeting), so the sender never learnt why the message
    had not gone; a recipient never tried still gets those words."""
    qid = spool.store_sync(envelope("bob@example.net"), MESSAGE)
    d = FakeDeliverer()
    d.default = TempFailure("relay mx.example.net:25 refused recipient: 451 4.2.1 mailbox busy")
    assert await DeliveryWorker(spool, d, CFG, FakeClock(T0 + 60)).run_once() == 1
    untried = spool.store_sync(envelope("carol@example.net"), MESSAGE)
    mgr = manager(spool)
    fields = {}
    for bounced in (qid, untried):
        report_id = mgr.bounce(bounced)
        assert report_id is not None
        report = email.message_from_bytes(spool.load(report_id)[1])
        (rcpt,) = report.get_payload()[1].get_payload()[1:]
        fields[bounced] = {k: " ".join(str(v).split()) for k, v in rcpt.items()}
        fields[bounced]["text"] = " ".join(report.get_payload()[0].get_payload().split())
    tried = fields[qid]
    assert tried["Status"] == "5.2.1"  # the 451's code, given up: permanent
    assert tried["Remote-MTA"] == "dns; mx.example.net"
    assert tried["Diagnostic-Code"] == "smtp; 451 4.2.1 mailbox busy"
    assert ("<bob@example.net>: returned to the sender by the mail administrator; the "
            "last attempt got: relay mx.example.net:25 refused recipient: 451 4.2.1 "
            "mailbox busy") in tried["text"]
    never = fields[untried]
    assert never["Status"] == "5.0.0" and "Remote-MTA" not in never
    assert never["Diagnostic-Code"] == f"x-smtpgate; {ADMIN_BOUNCE}"


def test_bounce_of_a_bounce_sends_nothing(spool: Spool) -> None:
    """Loop prevention: a message from the null sender is never reported on."""
    from smtpgate.queue.envelope import Envelope

    qid = spool.store_sync(Envelope("", ("alice@example.org",), None, "127.0.0.1", "mx",
                                    "dsn"), MESSAGE)
    assert manager(spool).bounce(qid) is None
    assert spool.list_ids() == []


def test_list_shows_recipients_status_and_last_error(spool: Spool) -> None:
    qid = spool.store_sync(envelope(), MESSAGE)
    (entry,) = manager(spool).entries()
    obj = entry.as_json(T0 + 90)
    assert obj["id"] == qid and obj["sender"] == "alice@example.org"
    assert obj["recipients"] == [{"address": "bob@example.net", "status": "pending",
                                  "attempts": 0, "next_attempt": None, "last_error": None}]
    assert obj["size"] == len(MESSAGE) and obj["last_error"] is None


def test_list_json_last_error_is_never_a_delivered_recipients_reply() -> None:
    """Found with a relay that took one recipient (250) and deferred the other (451):
    the message's ``last_error`` in ``queue list --json`` was the 250 (the last
    recipient's result, delivered or not); it is now the last undelivered one's."""
    from smtpgate.queue.manage import Entry
    from smtpgate.queue.state import MessageState, RcptStatus, RecipientState

    later = "relay mx:25 refused recipient: 451 4.2.1 busy"
    state = MessageState((
        RecipientState("bob@example.net", RcptStatus.PENDING, 1, T0 + 60, later),
        RecipientState("carol@example.net", RcptStatus.DELIVERED, 1, 0.0,
                       "relay mx:25: 250 2.0.0 queued"),
    ))
    obj = Entry("q1", envelope(), len(MESSAGE), state).as_json(T0 + 90)
    assert obj["last_error"] == later
    assert [r["last_error"] for r in obj["recipients"]] == [later, None]  # type: ignore[union-attr]


def _held_message(tmp_path: Path) -> tuple[Path, Spool, str]:
    """A config written under ``tmp_path``, its spool (open: the caller closes it)
    and the id of one message in it, held."""
    from smtpgate.config import load_config

    from .cli_support import write_config

    config = write_config(tmp_path)
    cfg = load_config(config)
    spool = Spool(cfg.path(cfg.queue.spool), prefill=False)
    qid = spool.store_sync(envelope(), MESSAGE)
    assert manager(spool).hold(qid) is True
    return config, spool, qid


def test_cli_flush_of_a_held_message_says_it_is_held(tmp_path: Path) -> None:
    """``queue flush ID`` on a held message said "flushed 0 messages", then that it is
    held but exited 0; it now says why nothing happened and how to let it go, as an
    error (exit 1), for nothing was done and the message is still not on its way."""
    from click.testing import CliRunner

    from smtpgate.cli.main import cli

    config, spool, qid = _held_message(tmp_path)
    asyncio.run(spool.close())
    out = CliRunner().invoke(cli, ["queue", "flush", qid, "--config", str(config)])
    # Nothing done and the message stays undelivered: an error (docs/cli.md, exit 1),
    # so `queue flush ID && ...` does not go on as if it had been sent on its way.
    assert out.exit_code == 1, out.output
    assert out.stdout == ""
    assert out.stderr == (f"error: {qid} is held: not flushed\n"
                          f"hint: `smtpgate queue release {qid}` lets it go; no server is "
                          f"delivering: then `smtpgate queue flush {qid}` attempts it here\n")


def test_cli_release_says_truthfully_who_attempts_the_message(tmp_path: Path) -> None:
    """With no server running, the flush hint said the released message "is attempted
    now" and `queue release` said "released" alone: it sat due in the queue until a
    server started. Each now says what attempts it: the running server at once, or
    `queue flush ID`."""
    from click.testing import CliRunner

    from smtpgate.cli.main import cli

    config, spool, qid = _held_message(tmp_path)
    try:
        out = CliRunner().invoke(cli, ["queue", "release", qid, "--config", str(config)])
        assert out.exit_code == 0, out.output
        assert out.stdout == (f"{qid} released\nno server is delivering: `smtpgate queue "
                              f"flush {qid}` attempts it here (else the server does when "
                              "it starts)\n")
        assert manager(spool).hold(qid) is True
        lock = spool.try_lock_delivery()  # what a running server holds
        assert lock is not None
        try:
            out = CliRunner().invoke(cli, ["queue", "flush", qid, "--config", str(config)])
            assert out.exit_code == 1
            assert out.stderr.endswith(f"hint: `smtpgate queue release {qid}` lets it go; "
                                       "a running server attempts it at once\n")
            out = CliRunner().invoke(cli, ["queue", "release", qid, "--config", str(config)])
            assert out.exit_code == 0 and out.stdout == f"{qid} released\n"
        finally:
            lock.release()
    finally:
        asyncio.run(spool.close())


def _corrupt_queue(config: Path) -> tuple[str, str, str]:
    """A good message, one whose state file is damaged, one whose header is."""
    from smtpgate.config import load_config

    cfg = load_config(config)
    spool = Spool(cfg.path(cfg.queue.spool), prefill=False)
    try:
        good, bad_state, bad_msg = (spool.store_sync(envelope(), MESSAGE) for _ in range(3))
        Path(spool.message_path(bad_state)).with_suffix(".state").write_bytes(b"{garbage")
        msg = Path(spool.message_path(bad_msg))
        msg.write_bytes(b"SMTPGATE-SPOOL 2 x" + msg.read_bytes()[18:])
    finally:
        asyncio.run(spool.close())
    return good, bad_state, bad_msg


def test_cli_list_goes_past_an_unreadable_message_and_names_it(tmp_path: Path) -> None:
    """One damaged file made ``queue list`` print nothing but its error: the
    administrator lost sight of the whole queue."""
    from click.testing import CliRunner

    from smtpgate.cli.main import cli

    from .cli_support import write_config

    config = write_config(tmp_path)
    good, bad_state, bad_msg = _corrupt_queue(config)
    out = CliRunner().invoke(cli, ["queue", "list", "--config", str(config)])
    assert out.exit_code == 1
    assert out.stdout.startswith(f"{good}  ")
    assert f"{bad_state}  (unreadable)\n" in out.stdout
    assert f"{bad_msg}  (unreadable)\n" in out.stdout
    assert "1 message, 2 unreadable" in out.stdout
    assert f"error: corrupt state of {bad_state}" in out.stderr
    assert f"error: corrupt message {bad_msg}" in out.stderr
    js = CliRunner().invoke(cli, ["queue", "list", "--json", "--config", str(config)])
    assert js.exit_code == 1
    # The damaged ones are in the queue too: a script counting the array must
    # not undercount it. Each says why, with the keys every entry has.
    listed = json.loads(js.stdout)
    assert [e["id"] for e in listed] == [good, bad_state, bad_msg]
    assert listed[0]["error"] is None
    assert listed[1]["error"].startswith(f"corrupt state of {bad_state}")
    assert listed[2]["error"].startswith(f"corrupt message {bad_msg}")
    assert all(e.keys() == listed[0].keys() for e in listed)
    assert listed[2]["recipients"] == [] and listed[2]["sender"] is None
    assert f"error: corrupt message {bad_msg}" in js.stderr


def test_manager_flush_of_the_whole_queue_goes_past_an_unreadable_message(
    tmp_path: Path,
) -> None:
    from .cli_support import write_config

    config = write_config(tmp_path)
    _good, bad_state, bad_msg = _corrupt_queue(config)
    from smtpgate.config import load_config

    cfg = load_config(config)
    spool = Spool(cfg.path(cfg.queue.spool), prefill=False)
    try:
        mgr = manager(spool)
        assert mgr.flush(None) == 1
        assert [u.queue_id for u in mgr.unreadable] == [bad_state, bad_msg]
        assert (spool.directory / "flush" / "all").exists()  # the worker is still asked
    finally:
        asyncio.run(spool.close())


def test_cli_list_says_when_a_deferred_recipient_is_tried_next(tmp_path: Path) -> None:
    """`queue list` gave the reason of a deferral but not when the next attempt is
    (only --json had it): whether to wait or `queue flush` was a guess."""
    import time

    from click.testing import CliRunner

    from smtpgate.cli.main import cli
    from smtpgate.config import load_config
    from smtpgate.queue.state import MessageState, RcptStatus, RecipientState

    from .cli_support import write_config

    config = write_config(tmp_path)
    cfg = load_config(config)
    spool = Spool(cfg.path(cfg.queue.spool), prefill=False)
    try:
        later = spool.store_sync(envelope(), MESSAGE)
        due = spool.store_sync(envelope(), MESSAGE)
        for qid, when in ((later, time.time() + 5 * 3600 + 1800), (due, 1.0)):
            spool.save_state_sync(qid, MessageState((
                RecipientState("bob@example.net", RcptStatus.PENDING, 3, when,
                               "4.4.1 relay mx.example.net:25: cannot connect"),)))
    finally:
        asyncio.run(spool.close())
    out = CliRunner().invoke(cli, ["queue", "list", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert ("<bob@example.net> pending, 3 attempts, next in 5h: 4.4.1 relay "
            "mx.example.net:25: cannot connect\n") in out.stdout
    assert "<bob@example.net> pending, 3 attempts, due now: 4.4.1 relay" in out.stdout


def test_cli_names_the_messages_the_worker_set_aside_in_corrupt(tmp_path: Path) -> None:
    """A message the delivery worker finds damaged goes to corrupt/ (it may have
    had its 250; nothing delivers it from there), and then ``queue list`` said
    "the queue is empty" and ``status`` "0 messages": only one ERROR line in the
    server log told the administrator an accepted message was not delivered."""
    from click.testing import CliRunner

    from smtpgate.cli.main import cli

    from .cli_support import write_config

    config = write_config(tmp_path)
    _good, _bad_state, bad_msg = _corrupt_queue(config)
    # No server holds the delivery lock: the flush runs the real worker here,
    # which delivers the two it can read and moves the damaged one aside.
    flushed = CliRunner().invoke(cli, ["queue", "flush", "--config", str(config)])
    assert "no server is delivering: made 2 delivery attempts here" in flushed.stdout
    spool_dir = tmp_path / "spool"
    assert (spool_dir / "corrupt" / f"{bad_msg}.msg").exists()
    out = CliRunner().invoke(cli, ["queue", "list", "--config", str(config)])
    assert out.exit_code == 0
    assert out.stdout.splitlines() == [
        "the queue is empty",
        (f"-- 1 message set aside in {spool_dir}/corrupt/, not delivered: found damaged "
         '(the server log says why); see docs/delivery.md, "Spool"')]
    js = CliRunner().invoke(cli, ["queue", "list", "--json", "--config", str(config)])
    assert (js.exit_code, json.loads(js.stdout)) == (0, [])  # the array stays the queue's
    assert "1 message set aside in" in js.stderr
    status = CliRunner().invoke(cli, ["status", "--config", str(config)])
    assert "queue:        0 messages (0 held, 0 bytes, 1 set aside in corrupt/)\n" in (
        status.stdout)
    doc = json.loads(CliRunner().invoke(cli, ["status", "--json", "--config",
                                              str(config)]).stdout)
    assert doc["queue"]["set_aside"] == 1


def test_cli_delete_removes_a_message_whose_file_does_not_parse(tmp_path: Path) -> None:
    """``queue list`` says "'smtpgate queue delete ID' removes one by hand", but
    delete read the envelope first and failed on the damage it was asked to remove,
    with the hint "check [queue].spool and its permissions"; so did show."""
    from click.testing import CliRunner

    from smtpgate.cli.main import cli

    from .cli_support import write_config

    config = write_config(tmp_path)
    good, bad_state, bad_msg = _corrupt_queue(config)
    held = CliRunner().invoke(cli, ["queue", "hold", bad_state, "--config", str(config)])
    assert held.exit_code == 1
    assert held.stderr.splitlines()[1] == (
        "hint: the delivery worker moves the state file to corrupt/ under [queue].spool "
        "and delivers the message at its next attempt")
    shown = CliRunner().invoke(cli, ["queue", "show", bad_msg, "--config", str(config)])
    assert shown.exit_code == 1
    assert shown.stderr == (
        f"error: corrupt message {bad_msg}: bad header line\n"
        "hint: the delivery worker moves it to corrupt/ under [queue].spool at its next "
        "attempt; 'smtpgate queue delete ID' removes it\n")
    out = CliRunner().invoke(cli, ["queue", "delete", bad_msg, "--config", str(config)])
    assert out.exit_code == 0, out.stderr
    assert out.stdout == (f"{bad_msg} deleted (its file did not parse: corrupt message "
                          f"{bad_msg}: bad header line)\n")
    queue_dir = tmp_path / "spool" / "queue"
    assert not (queue_dir / f"{bad_msg}.msg").exists()
    assert not (queue_dir / f"{bad_msg}.state").exists()
    log = CliRunner().invoke(cli, ["admin-log", "--json", "--config", str(config)])
    (row,) = [r for r in map(json.loads, log.stdout.splitlines()) if r["target"] == bad_msg]
    assert row["action"] == "queue delete"
    assert row["details"] == {"unreadable": f"corrupt message {bad_msg}: bad header line"}
    assert (queue_dir / f"{good}.msg").exists()


async def test_list_marks_the_message_an_attempt_holds(spool: Spool) -> None:
    """`queue list` did not tell the message being delivered right now (its lock
    held by the delivery worker, where a hold or delete waits) from the others;
    it is marked, in the text and in --json, while the attempt runs only, and
    listing it does not stop the attempt."""
    busy = spool.store_sync(envelope("bob@example.net"), MESSAGE)
    d = FakeDeliverer()
    d.gate = asyncio.Event()
    worker = DeliveryWorker(spool, d, CFG, FakeClock())
    attempt = asyncio.create_task(worker.run_once())
    await d.called.wait()
    idle = spool.store_sync(envelope("carol@example.net"), MESSAGE)
    mgr = manager(spool)
    marks = {e.queue_id: e.delivering for e in await asyncio.to_thread(mgr.entries)}
    assert marks == {busy: True, idle: False}
    entry, _ = await asyncio.to_thread(mgr.show, busy)
    assert entry.as_json(T0)["delivering"] is True
    d.gate.set()
    assert await attempt == 1
    assert [(e.queue_id, e.delivering) for e in mgr.entries()] == [(idle, False)]


def test_cli_list_says_which_message_is_being_delivered(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from smtpgate.cli.main import cli
    from smtpgate.config import load_config
    from smtpgate.queue import msglock

    from .cli_support import write_config

    config = write_config(tmp_path)
    cfg = load_config(config)
    spool = Spool(cfg.path(cfg.queue.spool), prefill=False)
    try:
        qid = spool.store_sync(envelope(), MESSAGE)
        lock = msglock.try_lock(spool.message_path(qid))  # as an attempt holds it
        assert lock is not None
        with lock:
            out = CliRunner().invoke(cli, ["queue", "list", "--config", str(config)])
            as_json = CliRunner().invoke(cli, ["queue", "list", "--json", "--config", str(config)])
        after = CliRunner().invoke(cli, ["queue", "list", "--json", "--config", str(config)])
    finally:
        asyncio.run(spool.close())
    assert out.exit_code == 0, out.output
    assert f"{qid} (being delivered)  " in out.stdout
    assert json.loads(as_json.stdout)[0]["delivering"] is True
    assert json.loads(after.stdout)[0]["delivering"] is False
