"""Deliver into one Maildir, exactly once even across ``kill -9``.

Theory of operation
-------------------
One copy per message, not per recipient: every recipient shares the one mailbox.
The copy is the message as spooled with ``Return-Path: <sender>`` prepended (RFC
5321 §4.4: the final delivery adds it). Line ends stay CRLF as received; Dovecot
and mutt read both.

Delivery is the Maildir protocol: write ``tmp/<name>``, fsync, hard-link it to
``new/<name>``, fsync ``new/``, remove the ``tmp/`` name. The link is the commit
point and it fails with EEXIST if the name exists, which is what makes delivery
idempotent: ``<name>`` is derived from the queue id alone, so a second attempt for
the same message can only find its own earlier copy.

The spool forgets a message only after the deliverer returns, so a crash in
between makes the worker try again with ``maybe_delivered`` set. The copy may then
sit in ``new/`` or, if a mail reader has seen it, in ``cur/`` as
``<name>:2,<flags>``. We look in both; for ``cur/`` we list the directory once
(after this process started, hence after any copy the crashed process made) and
reuse that listing for a minute. A copy the user already deleted cannot be
recognised; that window is the time between the crash and the restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path

from smtpgate.queue import tmpfiles
from smtpgate.queue.delivery import Delivered, DeliveryResult, QueuedMessage, TempFailure

#: Names linked by this process, remembered so a retry after a failure *after*
#: the link (fsync of new/ failed, cancelled await) does not link a second copy
#: once a reader has moved the first to cur/. Bounded: a retry comes soon.
_RECENT_LINKS = 10_000
#: How long a listing of new/ + cur/ may be reused for crash-recovery checks.
_LISTING_TTL = 60.0


def maildir_name(message: QueuedMessage) -> str:
    """The unique Maildir base name of a message: a function of its queue id only
    (and its arrival second, for readers that sort by the leading time)."""
    return f"{int(message.envelope.received_at)}.Q{message.queue_id}.smtpgate"


def return_path(sender: str) -> bytes:
    """``Return-Path: <sender>`` with CRLF; CR and LF in the sender are dropped so the
    envelope can never inject a header."""
    clean = sender.replace("\r", "").replace("\n", "")
    return b"Return-Path: <" + clean.encode("utf-8", "surrogateescape") + b">\r\n"


class MaildirDeliverer:
    """See the module docstring. Creates ``path`` with tmp/, new/ and cur/."""

    def __init__(self, path: Path) -> None:
        self.path = path
        for sub in ("", "tmp", "new", "cur"):
            _make_dir(path / sub)
        self._tmp = str(path / "tmp")
        self._new = str(path / "new")
        self._cur = str(path / "cur")
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._listing: tuple[float, frozenset[str]] | None = None

    async def deliver(
        self, message: QueuedMessage, recipients: tuple[str, ...]
    ) -> Mapping[str, DeliveryResult]:
        result = await asyncio.to_thread(self._deliver, message)
        return {r: result for r in recipients}

    def _deliver(self, message: QueuedMessage) -> DeliveryResult:
        name = maildir_name(message)
        if name in self._recent or (message.maybe_delivered and self._present(name)):
            try:
                # The earlier attempt linked the file; make sure the link is durable.
                _fsync_dir(self._new)
            except OSError as e:
                return TempFailure(f"4.3.0 cannot sync maildir: {e.strerror}")
            return Delivered(f"already in maildir as {name}")
        tmp = f"{self._tmp}/{name}"
        new = f"{self._new}/{name}"
        try:
            # An earlier attempt may have left tmp/<name>, possibly hard-linked to
            # new/<name>: unlink it rather than truncate, never touch that inode.
            tmpfiles.unlink_quietly(tmp)
            # Durability step 1: content fsynced before it is visible in new/.
            tmpfiles.write_and_sync(
                tmpfiles.open_new(tmp), (return_path(message.envelope.mail_from), message.data)
            )
            try:
                # Step 2, the commit point: link() refuses to replace an existing name.
                os.link(tmp, new)
            except FileExistsError:
                pass  # an earlier attempt got here: this is that copy
            self._remember(name)
            # Step 3: the new name survives a power cut.
            _fsync_dir(self._new)
        except OSError as e:
            return TempFailure(f"4.3.0 maildir delivery failed: {e.strerror or e}")
        finally:
            tmpfiles.unlink_quietly(tmp)
        return Delivered(f"maildir {name}")

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


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dir(path: Path) -> None:
    if path.is_dir():
        return
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        _fsync_dir(str(path.parent))  # the new directory entry is durable too
