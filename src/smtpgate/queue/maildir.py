"""Deliver into one Maildir, exactly once even across ``kill -9``.

Theory of operation
-------------------
One copy per message, not per recipient: every recipient shares the one mailbox.
The copy is the message as spooled with ``Return-Path: <sender>`` prepended (RFC
5321 §4.4: the final delivery adds it), and without any Return-Path field the
client put in its header section (`without_return_path`). Line ends stay CRLF as received; Dovecot
and mutt read both.

Delivery is the Maildir protocol: write a file in ``tmp/``, fsync, hard-link it
to ``new/<name>``, fsync ``new/``, remove the ``tmp/`` name. The link is the
commit point and it fails with EEXIST if the name exists, which is what makes
delivery idempotent: ``<name>`` is derived from the queue id alone, so a second
attempt for the same message can only find its own earlier copy. As in the
spool, concurrent deliveries share one fsync of ``new/`` per batch: the delivery
worker hands every message due at once to `deliver_blocking` from its own
thread, and `deliver` (one message, from the event loop) goes through a
group-commit thread. Temp files come from a pool created ahead of time.

The spool forgets a message only after the deliverer returns, so a crash in
between makes the worker try again with ``maybe_delivered`` set. The copy may then
sit in ``new/`` or, if a mail reader has seen it, in ``cur/`` as
``<name>:2,<flags>``. We look in both; for ``cur/`` we list the directory once
(after this process started, hence after any copy the crashed process made) and
reuse that listing for a minute. A copy the user already deleted cannot be
recognised; that window is the time between the crash and the restart.

A write that fails defers the message (a temporary failure) and is logged as a
WARNING naming the Maildir, once per batch and kind of failure: the deferral
record alone says neither where nor that an operator must act. A full file
system or an exhausted quota (``ENOSPC``, ``EDQUOT``) is ``4.3.1`` (RFC 3463
X.3.1, mail system full), as the spool answers it; any other error ``4.3.0``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from smtpgate.queue import header_drop, tmpfiles
from smtpgate.queue.committer import CommitterClosed, GroupCommitter, Op
from smtpgate.queue.delivery import Delivered, DeliveryResult, QueuedMessage, TempFailure
from smtpgate.queue.space import OUT_OF_SPACE

log = logging.getLogger("smtpgate.queue")

#: Names linked by this process, remembered so a retry after a failure *after*
#: the link (fsync of new/ failed, cancelled await) does not link a second copy
#: once a reader has moved the first to cur/. Bounded: a retry comes soon.
_RECENT_LINKS = 10_000
#: How long a listing of new/ + cur/ may be reused for crash-recovery checks.
_LISTING_TTL = 60.0
#: Placeholder until `_write` sets every message's result.
_NOT_TRIED = TempFailure("4.3.0 maildir delivery not attempted")


def maildir_name(message: QueuedMessage) -> str:
    """The unique Maildir base name of a message: a function of its queue id only
    (and its arrival second, for readers that sort by the leading time)."""
    return f"{int(message.envelope.received_at)}.Q{message.queue_id}.smtpgate"


def return_path(sender: str) -> bytes:
    """``Return-Path: <sender>`` with CRLF; CR and LF in the sender are dropped so the
    envelope can never inject a header."""
    clean = sender.replace("\r", "").replace("\n", "")
    return b"Return-Path: <" + clean.encode("utf-8", "surrogateescape") + b">\r\n"


_RETURN_PATH_FIELD = header_drop.field_pattern(["return-path"])


def without_return_path(data: bytes) -> tuple[bytes, ...]:
    """``data`` as chunks to write, without the Return-Path fields of its header
    section. RFC 5321 §4.4: a message-originating system "SHOULD NOT send a message
    that already contains a Return-path header field", and the final delivery "MAY
    remove" such fields before adding its own; Postfix drops them from every
    message (``message_drop_headers``). Kept, a client's ``Return-Path:
    <ceo@bank.example>`` (a saved message sent again, often) sits below ours and
    readers that take the last one, or a filter, believe it. The body is never
    looked at; a message without such a field is passed on as it is, uncopied."""
    head_end = header_drop.header_end(data)
    head = data[:head_end]
    if _RETURN_PATH_FIELD is None or not _RETURN_PATH_FIELD.search(head):
        return (data,)
    return (_RETURN_PATH_FIELD.sub(b"", head), data[head_end:])


class MaildirDeliverer:
    """See the module docstring. Creates ``path`` with tmp/, new/ and cur/, and
    removes temp files our crashed processes left in tmp/ (only ours: other
    delivery agents may share the Maildir)."""

    def __init__(self, path: Path, *, prefill: bool = True) -> None:
        self.path = path
        for sub in ("", "tmp", "new", "cur"):
            tmpfiles.make_dir_durably(path / sub)
        self._tmp = str(path / "tmp")
        self._new = str(path / "new")
        self._cur = str(path / "cur")
        tmpfiles.remove_stale(self._tmp, only_ours=True)
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._listing: tuple[float, frozenset[str]] | None = None
        self._pool = tmpfiles.TempPool(self._tmp) if prefill else None
        self._syncer = tmpfiles.Syncer()
        # The group committer's thread and the worker's batch thread (`deliver_blocking`)
        # take turns: _recent, _listing and the pool are not shared safely otherwise.
        self._lock = threading.Lock()
        self._writer: GroupCommitter[QueuedMessage, DeliveryResult] = GroupCommitter(
            self._commit,
            name="smtpgate-maildir-writer",
        )

    @property
    def recycle_pool(self) -> tmpfiles.TempPool | None:
        """Where the worker may put the inodes of delivered spool files, so this
        deliverer writes into them instead of creating files."""
        return self._pool

    async def deliver(
        self, message: QueuedMessage, recipients: tuple[str, ...]
    ) -> Mapping[str, DeliveryResult]:
        try:
            result = await self._writer.submit(message)
        except CommitterClosed:
            result = TempFailure("4.3.0 maildir delivery is shutting down")
        return dict.fromkeys(recipients, result)

    async def close(self) -> None:
        """Finish queued deliveries and stop the threads."""
        await self._writer.close()
        self._syncer.close()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.stop)

    def deliver_blocking(self, messages: Sequence[QueuedMessage]) -> list[DeliveryResult]:
        """Deliver ``messages`` in the calling thread (the worker's batch thread),
        one fsync of ``new/`` for all of them; one result per message."""
        with self._lock:
            return self._write(messages)

    def _commit(self, batch: Sequence[Op[QueuedMessage, DeliveryResult]]) -> None:
        with self._lock:
            results = self._write([op.payload for op in batch])
        for op, result in zip(batch, results, strict=True):
            op.result = result

    def _recreate_missing(self) -> None:
        """Make tmp/, new/ and cur/ again if one is gone, as start-up does: a
        Maildir removed or moved away while the server runs (an administrator
        clearing a test box, a restore) otherwise deferred every message until
        ``queue.max_age`` bounced it, though a restart would have fixed it.
        Three stats a batch. What cannot be made (a read-only file system, a
        file in the way) is left to the writes below, which defer and say why."""
        missing = [sub for sub in ("tmp", "new", "cur") if not os.path.isdir(self.path / sub)]
        if not missing:
            return
        try:
            for sub in missing:
                tmpfiles.make_dir_durably(self.path / sub)
        except OSError as e:
            log.warning("maildir %s: %s/ missing and cannot be created: %s", self.path,
                        "/, ".join(missing), e.strerror or e)
            return
        self._listing = None
        log.warning("maildir %s: %s/ missing (removed while the server runs?): created "
                    "again", self.path, "/, ".join(missing))

    def _write(self, messages: Sequence[QueuedMessage]) -> list[DeliveryResult]:
        self._recreate_missing()
        prefix = tmpfiles.prefix(self._tmp)
        results: list[DeliveryResult] = [_NOT_TRIED] * len(messages)
        to_write: list[tuple[int, str]] = []  # (index, name)
        jobs: list[tuple[str, tuple[bytes, ...]]] = []
        synced: list[int] = []  # need the fsync of new/
        for i, message in enumerate(messages):
            name = maildir_name(message)
            if name in self._recent or (message.maybe_delivered and self._present(name)):
                # An earlier attempt linked it; the fsync below makes sure it stays.
                results[i] = Delivered(f"already in maildir as {name}")
                synced.append(i)
            else:
                to_write.append((i, name))
                jobs.append((f"{prefix}{name}",
                             (return_path(message.envelope.mail_from),
                              *without_return_path(message.data))))
        # Durability step 1: content fsynced (concurrently) before it is in new/.
        written = tmpfiles.write_synced(jobs, pool=self._pool, syncer=self._syncer)
        failures = _Failures(str(self.path))
        for (i, name), (tmp, error) in zip(to_write, written, strict=True):
            if error is not None:
                results[i] = failures.add("maildir delivery failed", f"write into {self._tmp}",
                                          error)
                continue
            try:
                # Step 2, the commit point: link() never replaces an existing name.
                os.link(tmp, f"{self._new}/{name}")
            except FileExistsError:
                pass  # an earlier attempt got here: this is that copy
            except OSError as e:
                results[i] = failures.add("maildir delivery failed", f"link into {self._new}", e)
                continue
            finally:
                tmpfiles.unlink_quietly(tmp)
            self._remember(name)
            results[i] = Delivered(f"maildir {name}")
            synced.append(i)
        if synced:
            try:
                # Step 3: one fsync of new/ makes every link of the batch durable.
                tmpfiles.fsync_dir(self._new)
            except OSError as e:
                # Retried soon; _recent makes the retry only repeat this fsync.
                for i in synced:
                    results[i] = failures.add("cannot sync maildir", f"sync {self._new}", e)
        failures.log()
        return results

    def _present(self, name: str) -> bool:
        if os.path.exists(f"{self._new}/{name}") or os.path.exists(f"{self._cur}/{name}"):
            return True
        now = time.monotonic()
        if self._listing is None or now - self._listing[0] > _LISTING_TTL:
            # new/ before cur/: a file moved from new/ to cur/ in between is seen in
            # cur/ (moves only go that way), so nothing present at the start is missed.
            names = os.listdir(self._new) + os.listdir(self._cur)
            self._listing = (now, frozenset(n.partition(":")[0] for n in names))
        return name in self._listing[1]

    def _remember(self, name: str) -> None:
        self._recent[name] = None
        if len(self._recent) > _RECENT_LINKS:
            self._recent.popitem(last=False)


class _Failures:
    """The failed writes of one batch: each message's temporary failure, and one
    WARNING per kind of failure naming the Maildir (see the module docstring)."""

    def __init__(self, maildir: str) -> None:
        self._maildir = maildir
        self._seen: dict[tuple[str, str], int] = {}

    def add(self, reply: str, step: str, error: OSError) -> TempFailure:
        why = error.strerror or str(error)
        code = "4.3.1" if error.errno in OUT_OF_SPACE else "4.3.0"
        key = (step, why)
        self._seen[key] = self._seen.get(key, 0) + 1
        return TempFailure(f"{code} {reply}: {why}")

    def log(self) -> None:
        for (step, why), count in self._seen.items():
            log.warning("maildir %s: cannot %s: %s; %d %s deferred", self._maildir, step, why,
                        count, "message" if count == 1 else "messages")
