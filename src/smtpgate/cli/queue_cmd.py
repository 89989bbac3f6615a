"""``smtpgate queue ...``: see and act on the mail queue, as Postfix's ``postqueue``
and ``postsuper`` do (docs/delivery.md maps one to the other).

Safe while ``serve`` runs: the commands take the per-message lock the delivery
worker holds during an attempt (``queue/msglock.py``). Run as root, they act as
the spool's owner, so the server can read and remove what they write; everything
they need is imported before that (the owner may not be able to read the Python
installation's files). Changes (hold, release, delete, bounce) go to the admin log
with the OS user who ran the command.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from smtpgate.cli.common import (
    NotFound,
    OperationalError,
    admin_service,
    config_option,
    get_config,
    iso_time,
)
from smtpgate.cli.output import echo, shown
from smtpgate.config import Config
from smtpgate.plural import count
from smtpgate.queue.factory import make_deliverer
from smtpgate.queue.manage import Entry, QueueBusy, QueueManager, Unreadable
from smtpgate.queue.spool import (
    MessageNotFound,
    NotAQueueId,
    Spool,
    SpoolCorrupt,
    SpoolError,
    StateCorrupt,
)
from smtpgate.queue.worker import DeliveryWorker

_WAIT = click.option(
    "--wait", default=30.0, show_default=True, type=click.FloatRange(0),
    help="Seconds to wait for a delivery attempt in progress on the message.",
)
QUEUE_ID = click.argument("queue_id", metavar="ID")


@click.group()
def queue() -> None:
    """See and act on the mail queue (like postqueue and postsuper)."""


@contextmanager
def _manager(cfg: Config, wait: float = 30.0) -> Iterator[QueueManager]:
    """The queue of ``cfg``; errors become exit codes (3: no such message, or no
    spool at all)."""
    spool_dir = cfg.path(cfg.queue.spool)
    if not spool_dir.is_dir():
        # Not made here: root's spool (mode 0700) would keep out a server running
        # as its own user, and an empty queue from a mistyped path misleads.
        raise NotFound(f"no spool at {spool_dir}",
                       "check [queue].spool; `smtpgate serve` creates it at its first start")
    _become_spool_owner(spool_dir)
    try:
        spool = Spool(cfg.path(cfg.queue.spool), prefill=False, tidy=False)
    except OSError as e:
        raise OperationalError(f"cannot open the spool: {e}",
                               "check [queue].spool and its permissions") from None
    try:
        yield QueueManager(spool, wait=wait, reporting_mta=cfg.hostname,
                           report_size_limit=cfg.limits.max_message_size)
    except NotAQueueId as e:
        raise NotFound(str(e), "'smtpgate queue list' shows the ids of the messages "
                               "in the queue") from None
    except MessageNotFound as e:
        raise NotFound(f"no message {e} in the queue",
                       "it may have been delivered; 'smtpgate queue list' shows the queue") from None
    except QueueBusy as e:
        raise OperationalError(f"{e} is being delivered right now",
                               "try again when the attempt ends, or pass a longer --wait") from None
    except StateCorrupt as e:
        # The message itself is intact: deleting it would lose it for nothing.
        raise OperationalError(str(e), "the delivery worker moves the state file to corrupt/ "
                               "under [queue].spool and delivers the message at its next "
                               "attempt") from None
    except SpoolCorrupt as e:
        # Read, and damaged: no permission to check. The worker sets it aside at
        # its next attempt; `queue delete` removes it now.
        raise OperationalError(str(e), "the delivery worker moves it to corrupt/ under "
                               "[queue].spool at its next attempt; 'smtpgate queue delete "
                               "ID' removes it") from None
    except SpoolError as e:
        raise OperationalError(str(e), "check [queue].spool and its permissions") from None
    finally:
        asyncio.run(spool.close())


def _become_spool_owner(spool_dir: Path) -> None:
    """Run as root, act as the owner of the spool (the user ``serve`` runs as), as
    Postfix's postsuper acts as the mail owner: a state file, a flush request or a
    bounce written by root would be one the server cannot read or remove."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(spool_dir)
    except OSError:
        return  # no spool yet: Spool() creates it, owned by whoever runs this
    if st.st_uid == 0:
        return
    try:
        os.setgroups([st.st_gid])
        os.setgid(st.st_gid)
        os.setuid(st.st_uid)
    except OSError as e:
        raise OperationalError(f"cannot act as the spool's owner (uid {st.st_uid}): {e}",
                               "run this as that user") from None


def _audit(cfg: Config, action: str, qid: str, details: dict[str, object]) -> None:
    # create: the queue's action is done by now; its admin-log row must not fail on
    # an account database not made yet (queue commands need no account).
    with admin_service(cfg, create=True) as admin:
        admin.record(action, qid, details)


def _age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of the messages.")
@config_option
def list_(as_json: bool, config_path: Path | None) -> None:
    """List the queued messages, oldest first (like postqueue -p)."""
    cfg = get_config(config_path)
    with _manager(cfg) as mgr:
        entries = mgr.entries()
        aside, corrupt_dir = mgr.set_aside()
    now = time.time()
    if as_json:
        echo(json.dumps([_json(e, now) for e in entries]
                        + [_json_unreadable(u) for u in mgr.unreadable], indent=1))
    elif not entries and not mgr.unreadable:
        echo("the queue is empty")
    else:
        for e in entries:
            _echo_entry(e, now)
        for u in mgr.unreadable:
            echo(f"{u.queue_id}  (unreadable)")
        # KiB rounded up, as Postfix's mailq: a queue of small messages read "0 KiB".
        kib = -(-sum(e.size for e in entries) // 1024)
        n = len(entries)
        echo(f"-- {kib} KiB in {count(n, 'message')}"
                   + (f", {len(mgr.unreadable)} unreadable" if mgr.unreadable else ""))
    if aside:
        # Not in the queue, so not listed above, but each may have had its 250:
        # the one ERROR line the worker logged is easily missed (stderr with
        # --json, whose array stays the queue's).
        echo(f"-- {_set_aside(len(aside), corrupt_dir)}", err=as_json)
    _unreadable(mgr.unreadable)


def _set_aside(n: int, corrupt_dir: Path) -> str:
    """The line that names the messages in ``corrupt/`` (queue list, status)."""
    return (f"{count(n, 'message')} set aside in {shown(str(corrupt_dir))}/, not "
            "delivered: found damaged (the server log says why); see docs/delivery.md, "
            '"Spool"')


def _unreadable(problems: list[Unreadable]) -> None:
    """Name each message a command went past (stderr), then exit 1."""
    if not problems:
        return
    for u in problems:
        echo(f"error: {u.error}", err=True)
    raise OperationalError(
        f"{count(len(problems), 'message')} in the queue could "
        "not be read",
        "the delivery worker moves a corrupt message to corrupt/ under [queue].spool, "
        "and a corrupt state file alone there, then delivers the message; "
        "'smtpgate queue delete ID' removes one by hand")


def _json(e: Entry, now: float) -> dict[str, object]:
    """``Entry.as_json`` with its times as every command's JSON gives them (ISO 8601
    with the zone, docs/cli.md), not seconds since the epoch; ``error`` is null (an
    entry of a damaged message has its reason there, `_json_unreadable`)."""
    obj = e.as_json(now)
    obj["error"] = None
    obj["arrived"] = iso_time(e.envelope.received_at)
    rows = obj["recipients"]
    assert isinstance(rows, list)
    for r, row in zip(e.state.recipients, rows, strict=True):
        row["next_attempt"] = iso_time(r.next_attempt) if r.next_attempt else None
    return obj


def _json_unreadable(u: Unreadable) -> dict[str, object]:
    """A message that could not be read, as an entry of the array: it is in the
    queue (a script counting the array must not undercount it), its ``error`` says
    why, and what could not be read is null (its recipients an empty list), so
    that every entry has the same keys."""
    return {"id": u.queue_id, "sender": None, "recipients": [], "age": None,
            "arrived": None, "size": None, "held": None, "delivering": None,
            "last_error": None,
            "auth": None, "error": u.error}


def _marks(e: Entry) -> str:
    """What follows the queue id: ``(held)``, and ``(being delivered)`` while the
    delivery worker holds the message (an attempt is under way: a hold or delete
    now waits for it to end, and a relay's reply may still deliver it)."""
    return (" (held)" if e.state.held else "") + (" (being delivered)" if e.delivering else "")


def _echo_entry(e: Entry, now: float) -> None:
    held = _marks(e)
    age = _age(max(0, int(now - e.envelope.received_at)))
    echo(f"{e.queue_id}{held}  {e.size}  {age}  <{e.envelope.mail_from}>")
    for r in e.state.recipients:
        line = f"    <{r.address}> {r.status.value}"
        if r.attempts:
            line += f", {count(r.attempts, 'attempt')}"
            if r.status.value == "pending" and not e.state.held:
                # When the next attempt is (Postfix's mailq does not say; `queue
                # flush ID` makes it now).
                wait = int(r.next_attempt - now)
                line += f", next in {_age(wait)}" if wait > 0 else ", due now"
        if r.last_result and r.status.value != "delivered":
            line += f": {shown(r.last_result)}"
        echo(line)


@queue.command()
@QUEUE_ID
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--body", is_flag=True, help="Print the whole message, not only its headers.")
@config_option
def show(queue_id: str, as_json: bool, body: bool, config_path: Path | None) -> None:
    """Show one message: envelope, headers, delivery history (like postcat -q)."""
    cfg = get_config(config_path)
    with _manager(cfg) as mgr:
        entry, data = mgr.show(queue_id)
    end = data.find(b"\r\n\r\n")
    headers = data if body or end < 0 else data[: end + 2]
    text = headers.decode("utf-8", "replace")
    if as_json:
        obj = _json(entry, time.time())
        env = entry.envelope
        obj.update({
            "client_ip": env.client_ip, "helo": env.helo, "listener": env.listener,
            "dsn": {"ret": env.dsn_ret, "envid": env.dsn_envid},
            "headers": [[k, str(v)] for k, v in email.parser.BytesHeaderParser(
                policy=email.policy.compat32).parsebytes(headers).items()],
            "history": [{"time": iso_time(h.at), "recipient": h.address or None,
                         "event": h.kind, "detail": h.detail} for h in entry.state.history],
        })
        echo(json.dumps(obj, indent=1))
        return
    env = entry.envelope
    echo(f"id: {entry.queue_id}{_marks(entry)}")
    echo(f"arrived: {iso_time(env.received_at)} from [{env.client_ip}] ({env.helo}) "
               f"on {env.listener}" + (f" as {env.auth_identity}" if env.auth_identity else ""))
    echo(f"sender: <{env.mail_from}>  size: {entry.size}")
    for r in entry.state.recipients:
        echo(f"recipient: <{r.address}> {r.status.value}, {count(r.attempts, 'attempt')}"
                   + (f": {shown(r.last_result)}" if r.last_result else ""))
    echo("history:")
    for h in entry.state.history:
        who = f" <{h.address}>" if h.address else ""
        echo(f"  {iso_time(h.at)} {h.kind}{who}: {shown(h.detail)}")
    echo("message:" if body else "headers:")
    echo(text.rstrip("\r\n").replace("\r\n", "\n"))


@queue.command()
@click.argument("queue_id", metavar="[ID]", required=False)
@config_option
def flush(queue_id: str | None, config_path: Path | None) -> None:
    """Attempt delivery now: one message, or every one not held (like postqueue -f).

    The running server makes the attempts; with no server delivering from this
    spool, this command makes them itself and returns when they are done."""
    cfg = get_config(config_path)
    with _manager(cfg) as mgr:
        n = mgr.flush(queue_id)
        spool_dir = cfg.path(cfg.queue.spool)
    if queue_id is not None and n == 0:
        # Only a held message is skipped (an unknown one raised). Nothing was
        # done and nothing asked for holds (the message stays undelivered), so
        # it is an error, exit 1: `queue flush ID && ...` must not go on as if
        # the message had been sent on its way.
        then = ("a running server attempts it at once" if _server_delivers(spool_dir)
                else f"no server is delivering: then `smtpgate queue flush {queue_id}` "
                "attempts it here")
        raise OperationalError(f"{queue_id} is held: not flushed",
                               f"`smtpgate queue release {queue_id}` lets it go; {then}")
    echo(f"flushed {count(n, 'message')}")
    here = _deliver_here(cfg, spool_dir)
    if here is not None:
        attempts, outcomes = here
        echo(f"no server is delivering: made {count(attempts, 'delivery attempt')} here"
             + (f": {_outcome_words(outcomes)}" if outcomes else ""))
    _unreadable(mgr.unreadable)
    if here is not None and here[1]["deferred"]:
        # The attempts were made here and some failed for now: a script's
        # `queue flush && ...` must not go on as if the queue were drained (with a
        # server delivering, the request is all there is to do: exit 0, as
        # postqueue -f).
        raise OperationalError(
            f"{count(here[1]['deferred'], 'recipient')} deferred: still in the queue",
            "'smtpgate queue list' shows the last error of each; they are retried "
            "at their next attempt (or by the next flush)")


def _outcome_words(outcomes: Counter[str]) -> str:
    """What the attempts made here did to the recipients: "1 recipient delivered",
    "3 recipients: 1 delivered, 2 deferred"."""
    parts = [(n, what) for n, what in (
        (outcomes["delivered"], "delivered"), (outcomes["deferred"], "deferred"),
        (outcomes["bounced"] + outcomes["expired"], "bounced")) if n]
    if len(parts) == 1:
        n, what = parts[0]
        return f"{count(n, 'recipient')} {what}"
    total = sum(n for n, _ in parts)
    return f"{count(total, 'recipient')}: " + ", ".join(f"{n} {w}" for n, w in parts)


def _deliver_here(cfg: Config, spool_dir: Path) -> tuple[int, Counter[str]] | None:
    """Deliver what is due in this process if no server holds the delivery lock:
    how many attempts were made, and the recipients' outcomes by kind; None when
    a server does (it takes the flush request)."""
    async def run() -> tuple[int, Counter[str]] | None:
        spool = Spool(spool_dir, prefill=False)
        deliverer = make_deliverer(cfg)
        worker = DeliveryWorker(spool, deliverer, cfg.queue, reporting_mta=cfg.hostname,
                                drop_fields=cfg.delivery.drop_fields,
                                report_size_limit=cfg.limits.max_message_size)
        try:
            return await worker.run_once(), worker.outcomes
        except RuntimeError:
            return None  # a server took the lock meanwhile: it takes the request
        finally:
            await deliverer.close()
            await spool.close()

    if _server_delivers(spool_dir):
        return None
    return asyncio.run(run())


def _server_delivers(spool_dir: Path) -> bool:
    """Whether a server holds this spool's delivery lock, so a message made due is
    attempted at once; else nothing attempts it until a server starts or a flush
    delivers here."""
    probe = Spool(spool_dir, prefill=False, tidy=False)
    try:
        lock = probe.try_lock_delivery()
    finally:
        asyncio.run(probe.close())
    if lock is None:
        return True
    lock.release()
    return False


@queue.command()
@QUEUE_ID
@_WAIT
@config_option
def hold(queue_id: str, wait: float, config_path: Path | None) -> None:
    """Stop delivery attempts of a message until released (like postsuper -h)."""
    _set_held(queue_id, wait, config_path, held=True)


@queue.command()
@QUEUE_ID
@_WAIT
@config_option
def release(queue_id: str, wait: float, config_path: Path | None) -> None:
    """Release a held message; it is due now, and a running server attempts it at
    once (like postsuper -H); with none, `queue flush ID` attempts it here."""
    _set_held(queue_id, wait, config_path, held=False)


def _set_held(queue_id: str, wait: float, config_path: Path | None, *, held: bool) -> None:
    cfg = get_config(config_path)
    with _manager(cfg, wait) as mgr:
        changed = mgr.hold(queue_id) if held else mgr.release(queue_id)
    if changed:
        _audit(cfg, "queue hold" if held else "queue release", queue_id, {})
    done, already = ("held", "was held already") if held else ("released", "was not held")
    echo(f"{queue_id} {done if changed else already}")
    if changed and not held and not _server_delivers(cfg.path(cfg.queue.spool)):
        # Due now, but nothing attempts it: "released" alone let the operator
        # believe it was on its way while it waited for the server's next start.
        echo(f"no server is delivering: `smtpgate queue flush {queue_id}` attempts it "
             "here (else the server does when it starts)")


@queue.command()
@QUEUE_ID
@_WAIT
@config_option
def delete(queue_id: str, wait: float, config_path: Path | None) -> None:
    """Remove a message: no delivery, no bounce (like postsuper -d)."""
    cfg = get_config(config_path)
    with _manager(cfg, wait) as mgr:
        env = mgr.delete(queue_id)
    if isinstance(env, SpoolCorrupt):
        # Its sender and recipients cannot be read: the log keeps why.
        _audit(cfg, "queue delete", queue_id, {"unreadable": str(env)})
        echo(f"{queue_id} deleted (its file did not parse: {shown(str(env))})")
        return
    _audit(cfg, "queue delete", queue_id,
           {"sender": env.mail_from, "recipients": list(env.rcpt_to)})
    echo(f"{queue_id} deleted")


@queue.command()
@QUEUE_ID
@_WAIT
@config_option
def bounce(queue_id: str, wait: float, config_path: Path | None) -> None:
    """Give a message up now and return it to its sender with a bounce (like
    postsuper -e / -f, or exim -Mg)."""
    cfg = get_config(config_path)
    with _manager(cfg, wait) as mgr:
        report = mgr.bounce(queue_id)
    _audit(cfg, "queue bounce", queue_id, {"report": report})
    if report is None:
        echo(f"{queue_id} removed; no bounce (null sender, or NOTIFY excluded failures)")
    else:
        echo(f"{queue_id} bounced; the report to the sender is {report}")


COMMANDS = [queue]
