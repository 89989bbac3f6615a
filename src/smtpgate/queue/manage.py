"""What ``smtpgate queue`` does to the spool: list, show, hold, release, flush,
delete, bounce. Blocking; for the CLI.

Safe beside a running server: every change takes the message lock the delivery
worker holds during an attempt (`msglock`), so a command waits for an attempt in
progress to end and then acts on what it left (a delivered message is gone: the
command says so). Flush and release change the state file, then ask the worker
to look (`control`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from smtpgate.queue import control, dsn, msglock
from smtpgate.queue.envelope import Envelope
from smtpgate.queue.spool import (
    MessageNotFound,
    Spool,
    SpoolCorrupt,
    SpoolError,
)
from smtpgate.queue.state import HistoryEntry, MessageState, Outcome, RcptStatus

#: The diagnostic of recipients an administrator returned with ``queue bounce``.
ADMIN_BOUNCE = "5.0.0 returned to the sender by the mail administrator"


class QueueBusy(Exception):
    """A delivery attempt held the message for longer than the command waits."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One message as ``queue list`` shows it."""

    queue_id: str
    envelope: Envelope
    size: int
    state: MessageState
    #: The delivery worker held the message's lock when it was listed: an attempt
    #: was in progress (``msglock.held_elsewhere``; Postfix's mailq marks such a
    #: message with ``*``).
    delivering: bool = False

    def as_json(self, now: float) -> dict[str, object]:
        # A delivered recipient's result is the hop's 250, no error: the message's
        # last error is that of the last recipient still without a delivery.
        errors = [e for e in (_error(r.last_result, r.status) for r in self.state.recipients)
                  if e is not None]
        return {
            "id": self.queue_id,
            "sender": self.envelope.mail_from,
            "recipients": [
                {"address": r.address, "status": r.status.value, "attempts": r.attempts,
                 "next_attempt": r.next_attempt or None, "last_error": _error(r.last_result,
                                                                              r.status)}
                for r in self.state.recipients
            ],
            "age": max(0, int(now - self.envelope.received_at)),
            "arrived": self.envelope.received_at,
            "size": self.size,
            "held": self.state.held,
            "delivering": self.delivering,
            "last_error": errors[-1] if errors else None,
            "auth": self.envelope.auth_identity,
        }


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A message ``queue list`` or ``queue flush`` could not read or parse: shown to
    the administrator instead of stopping the command for every other message."""

    queue_id: str
    error: str


def _last_attempts(state: MessageState) -> dict[str, HistoryEntry]:
    """Each recipient's last attempt, from the history (a pending recipient's
    attempts end in "deferred"), for a report the administrator's bounce sends: its
    Last-Attempt-Date is that attempt's, not the bounce's, and its Status and
    Diagnostic-Code are what that attempt got. A recipient never tried (or whose
    attempts the bounded history no longer holds) is absent."""
    out: dict[str, HistoryEntry] = {}
    for h in state.history:
        if (h.kind == "deferred" and h.address
                and (h.address not in out or h.at >= out[h.address].at)):
            out[h.address] = h
    return out


#: Before the last attempt's error in the text part of an administrator's bounce.
_ADMIN_NOTE = "returned to the sender by the mail administrator; the last attempt got: "


def _admin_report(report: dsn.Report, last: HistoryEntry | None) -> dsn.Report:
    """``report`` (an administrator's bounce of one recipient) with the recipient's
    last attempt: its date, and, when it had an error, that error as the report's
    Diagnostic-Code (and Remote-MTA) and its code made permanent as the Status
    (`dsn.given_up_status`). Until 2026-12 every recipient got "5.0.0 returned to
    the sender by the mail administrator", and the sender never learnt why the
    message had not gone (the relay's 451, a host that did not answer)."""
    if last is None:
        return replace(report, last_attempt=0.0)
    if not last.detail:
        return replace(report, last_attempt=last.at)
    return replace(report, last_attempt=last.at, diagnostic=last.detail,
                   status=dsn.given_up_status(last.detail), note=_ADMIN_NOTE)


def _error(result: str, status: RcptStatus) -> str | None:
    return None if status is RcptStatus.DELIVERED or not result else result


class QueueManager:
    """The queue commands on one spool. ``wait`` bounds how long a command waits
    for a delivery attempt in progress (one to a slow relay can take minutes)."""

    def __init__(self, spool: Spool, *, wait: float = 30.0,
                 reporting_mta: str = "localhost",
                 report_size_limit: int | None = None) -> None:
        self._spool = spool
        self._wait = wait
        self._reporting_mta = reporting_mta
        self._report_size_limit = report_size_limit  # see `dsn.build_report`
        #: What the last `entries` or `flush` of the whole queue could not read.
        self.unreadable: list[Unreadable] = []

    # --- reading --------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every message, oldest first; one removed meanwhile is skipped, and one
        that cannot be read or parsed is left out and named in `unreadable`. A state
        read without the lock is a consistent snapshot (states are replaced by
        rename), possibly a moment old."""
        out = []
        self.unreadable = []
        for qid in self._spool.list_ids():
            try:
                envelope, size = self._spool.load_envelope(qid)
                state = self._spool.load_state(qid) or MessageState.initial(envelope.rcpt_to)
            except MessageNotFound:
                continue
            except SpoolError as e:
                self.unreadable.append(Unreadable(qid, str(e)))
                continue
            out.append(Entry(qid, envelope, size, state, self._delivering(qid)))
        return out

    def _delivering(self, qid: str) -> bool:
        """Whether a delivery attempt holds ``qid`` now; False when that cannot be
        told (the file went, or cannot be opened: the listing says what it read)."""
        try:
            return msglock.held_elsewhere(self._spool.message_path(qid))
        except (OSError, SpoolError):
            return False

    def to_deliver_for(self, account: str) -> list[str]:
        """The ids of the messages ``account`` submitted that are not held: what the
        queue will still deliver after ``user lock`` or ``user remove`` (neither
        touches them), oldest first."""
        return [e.queue_id for e in self.entries()
                if e.envelope.auth_identity == account and not e.state.held]

    def set_aside(self) -> tuple[list[str], Path]:
        """The messages the delivery worker moved to ``corrupt/`` (see
        `Spool.set_aside`), and that directory."""
        return self._spool.set_aside(), self._spool.corrupt_dir

    def show(self, qid: str) -> tuple[Entry, bytes]:
        """The entry and the message bytes. Raises: MessageNotFound, SpoolError."""
        envelope, data = self._spool.load(qid)
        state = self._spool.load_state(qid) or MessageState.initial(envelope.rcpt_to)
        return Entry(qid, envelope, len(data), state, self._delivering(qid)), data

    # --- changing -------------------------------------------------------------------

    def hold(self, qid: str) -> bool:
        """Stop delivery attempts; False if it was held already."""
        return self._set_held(qid, True)

    def release(self, qid: str) -> bool:
        """Undo `hold` and ask for an attempt now; False if it was not held."""
        changed = self._set_held(qid, False)
        if changed:
            control.request_flush(self._spool.directory, qid)
        return changed

    def flush(self, qid: str | None) -> int:
        """Make ``qid`` (every message not held, if None) due now and ask the worker
        to attempt it; how many messages were made due. Flushing the whole queue
        goes past a message it cannot read (named in `unreadable`); the worker is
        asked to look at every message all the same."""
        ids = self._spool.list_ids() if qid is None else [qid]
        n = 0
        self.unreadable = []
        for one in ids:
            try:
                # Never waits: a message locked by an attempt is being tried right
                # now, which is what a flush asks for.
                with self._lock(one, wait=0.0):
                    state = self._state(one)
                    if state.held:
                        continue
                    due = replace(state, recipients=tuple(
                        replace(r, next_attempt=0.0) for r in state.recipients))
                    self._spool.save_state_sync(one, due.with_history(
                        [HistoryEntry(time.time(), "", "flushed", "queue flush")]))
                    n += 1
            except QueueBusy:
                n += 1
            except MessageNotFound:
                if qid is not None:
                    raise
            except SpoolError as e:
                if qid is not None:
                    raise
                self.unreadable.append(Unreadable(one, str(e)))
        control.request_flush(self._spool.directory, qid)
        return n

    def delete(self, qid: str) -> Envelope | SpoolCorrupt:
        """Remove the message without delivering or bouncing it; its envelope, or
        what is wrong with its file when that does not parse: such a message can
        only be deleted (or left to the worker, which moves it to ``corrupt/``),
        and ``queue list`` tells the administrator to. Raises: MessageNotFound,
        QueueBusy, SpoolError (the file cannot be read or removed)."""
        with self._lock(qid):
            found: Envelope | SpoolCorrupt
            try:
                found, _ = self._spool.load_envelope(qid)
            except SpoolCorrupt as e:
                found = e
            self._spool.remove_sync(qid)
        return found

    def bounce(self, qid: str) -> str | None:
        """Give up every undelivered recipient now and send the sender a bounce
        (RFC 3464) saying so; the bounce's queue id (None when nobody is told: a
        null sender, or NOTIFY without FAILURE). The message leaves the queue."""
        with self._lock(qid):
            envelope, data = self._spool.load(qid)
            state = self._spool.load_state(qid) or MessageState.initial(envelope.rcpt_to)
            outcomes = [Outcome(r.address, "bounced", ADMIN_BOUNCE)
                        for r in state.recipients if r.status is RcptStatus.PENDING]
            tried = _last_attempts(state)
            reports = [_admin_report(r, tried.get(r.address))
                       for r in dsn.reports_for(envelope, outcomes, "failed")]
            built = dsn.build_report(
                envelope=envelope, queue_id=qid, data=data, reports=reports,
                reporting_mta=self._reporting_mta, now=time.time(),
                size_limit=self._report_size_limit,
            )
            report_id = self._spool.store_sync(*built) if built is not None else None
            self._spool.remove_sync(qid)
        if report_id is not None:
            control.request_flush(self._spool.directory, report_id)
        return report_id

    # --- helpers --------------------------------------------------------------------

    def _set_held(self, qid: str, held: bool) -> bool:
        with self._lock(qid):
            state = self._state(qid)
            if state.held == held:
                return False
            kind = "held" if held else "released"
            changed = replace(state, held=held).with_history(
                [HistoryEntry(time.time(), "", kind, f"queue {'hold' if held else 'release'}")])
            if not held:  # released: due now
                changed = replace(changed, recipients=tuple(
                    replace(r, next_attempt=0.0) for r in changed.recipients))
            self._spool.save_state_sync(qid, changed)
        return True

    def _state(self, qid: str) -> MessageState:
        state = self._spool.load_state(qid)
        if state is None:
            envelope, _ = self._spool.load_envelope(qid)
            state = MessageState.initial(envelope.rcpt_to)
        return state

    def _lock(self, qid: str, wait: float | None = None) -> msglock.MessageLock:
        try:
            lock = msglock.wait_lock(self._spool.message_path(qid),
                                     self._wait if wait is None else wait)
        except msglock.MessageBusy:
            raise QueueBusy(qid) from None
        except OSError as e:
            raise SpoolError(f"cannot open {qid}: {e}") from e
        if lock is None:
            raise MessageNotFound(qid)
        return lock
