"""The intake: Received header, envelope and spool hand-off from the session's principal."""

from __future__ import annotations

import asyncio
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smtpgate.auth.principal import AppPasswordUse, Principal
from smtpgate.queue import tmpfiles
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.intake import Arrival, Intake, Message
from smtpgate.queue.spool import Spool, SpoolError

ALICE = Principal("alice@example.org", "PLAIN", app_password=AppPasswordUse(3, "phone"))
MESSAGE = Message("alice@example.org", ("bob@example.net",), b"Subject: hi\r\n\r\nhi\r\n")


@dataclass
class FakeSpool:
    fail: bool = False
    stored: list[tuple[Envelope, bytes]] = field(default_factory=list)
    qid: str = ""

    async def store(self, envelope: Envelope, data: bytes, qid: str | None = None) -> str:
        if self.fail:
            raise SpoolError("disk full")
        self.stored.append((envelope, data))
        self.qid = qid or "Q1"
        return self.qid


def arrival(principal: Principal | None = ALICE) -> Arrival:
    return Arrival("sess1", "submission", "192.0.2.7", "client.test", True, principal,
                   "TLSv1.3", "TLS_AES_128_GCM_SHA256")


async def test_the_principal_goes_into_the_received_header_and_the_envelope() -> None:
    spool, stored = FakeSpool(), []
    intake = Intake(spool, lambda: stored.append(True))  # type: ignore[arg-type]
    reply = await intake.accept(MESSAGE, arrival(), hostname="mx.test", received_login=True)
    assert reply.code == 250 and f"queued as {spool.qid}" in reply.text
    envelope, data = spool.stored[0]
    assert envelope.auth_identity == "alice@example.org"
    assert (envelope.mail_from, envelope.rcpt_to, envelope.listener) == (
        "alice@example.org", ("bob@example.net",), "submission")
    head = data.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("Received: from client.test ([192.0.2.7])")
    assert "(Authenticated sender: alice@example.org)" in head
    # The Received id is the queue id: the client's copy finds the message in the
    # queue and the logs.
    assert f"with ESMTPSA id {spool.qid}\r\n" in head and "sess1" not in head
    assert data.endswith(MESSAGE.data)
    assert stored == [True]  # the delivery worker was woken


async def test_the_login_is_left_out_of_the_received_header_unless_asked_for() -> None:
    """Before: every recipient read the submitting account's login, with no way to
    keep the rest of the header and hide it (Postfix's
    smtpd_sasl_authenticated_header defaults to no). ESMTPSA still says the client
    logged in; the envelope (the logs) still names the account."""
    spool = FakeSpool()
    await Intake(spool, lambda: None).accept(  # type: ignore[arg-type]
        MESSAGE, arrival(), hostname="mx.test")
    envelope, data = spool.stored[0]
    head = data.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("Received: from client.test ([192.0.2.7])\r\n\tby mx.test")
    assert f"with ESMTPSA id {spool.qid}\r\n" in head
    assert "alice" not in head and "Authenticated" not in head
    assert envelope.auth_identity == "alice@example.org"


async def test_without_received_header_the_bytes_are_kept_as_they_came() -> None:
    spool = FakeSpool()
    await Intake(spool, lambda: None).accept(  # type: ignore[arg-type]
        MESSAGE, arrival(None), hostname="mx.test", add_received=False)
    envelope, data = spool.stored[0]
    assert data == MESSAGE.data and envelope.auth_identity is None


async def test_work_alongside_is_awaited_even_when_the_spool_fails() -> None:
    done = []

    async def count() -> None:
        done.append(True)

    intake = Intake(FakeSpool(fail=True), lambda: None)  # type: ignore[arg-type]
    reply = await intake.accept(MESSAGE, arrival(), hostname="mx.test", alongside=count())
    assert (reply.code, reply.enhanced) == (451, "4.3.0")
    assert done == [True]


async def test_a_message_received_in_parts_has_its_received_header_first(tmp_path: Path) -> None:
    """The streaming path (begin, incoming.write, finish) stores what `accept` does."""
    spool = Spool(tmp_path / "spool", prefill=False)
    woken: list[bool] = []
    intake = Intake(spool, lambda: woken.append(True))
    receiving = intake.begin(MESSAGE, arrival(), hostname="mx.test")
    for part in (b"Subject: hi\r\n", b"\r\n", b"hi\r\n"):
        receiving.incoming.write(part)
    reply = await intake.finish(receiving)
    [qid] = spool.list_ids()
    # The 250 is returned first; the delivery process is woken on the loop's next turn.
    assert reply.code == 250 and f"queued as {qid}" in reply.text and woken == []
    await asyncio.sleep(0)
    assert woken == [True]
    envelope, data = spool.load(qid)
    assert envelope.auth_identity == "alice@example.org" and data.endswith(MESSAGE.data)
    assert data.startswith(b"Received: from client.test ([192.0.2.7])")
    assert f"with ESMTPSA id {qid}\r\n".encode() in data
    await spool.close()


@pytest.mark.parametrize(("code", "reply"), [
    (errno.ENOSPC, (452, "4.3.1")),  # RFC 5321 §4.2.2: insufficient system storage
    (errno.EDQUOT, (452, "4.3.1")),
    (errno.EIO, (451, "4.3.0")),  # any other failure: local error in processing
])
async def test_a_message_received_in_parts_that_cannot_be_written_is_a_temporary_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reply: tuple[int, str]
) -> None:
    def failing(path: str) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tmpfiles, "open_new", failing)
    spool = Spool(tmp_path / "spool", prefill=False)
    done: list[bool] = []

    async def count() -> None:
        done.append(True)

    intake = Intake(spool, lambda: None)
    receiving = intake.begin(MESSAGE, arrival(), hostname="mx.test")
    receiving.incoming.write(b"x" * 10)
    got = await intake.finish(receiving, alongside=count())
    assert (got.code, got.enhanced) == reply and done == [True]
    assert spool.list_ids() == [] and os.listdir(tmp_path / "spool" / "tmp") == []
    await spool.close()
