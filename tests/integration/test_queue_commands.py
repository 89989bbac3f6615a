"""``smtpgate queue ...`` beside a running ``smtpgate serve`` (uvloop, ``workers = 0``,
the config ``init`` writes), and ``queue flush`` cut by ``kill -9``.

The next hop is aiosmtpd (tests/peers/next_hop.py) answering the end of DATA only
after a delay, so deliveries are in flight while the commands run. What must
hold whatever the interleaving: every message not deleted reaches the next hop
exactly once, and a deleted one never does.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.queue.envelope import Envelope
from smtpgate.queue.spool import Spool
from smtpgate.queue.state import MessageState

from .conftest import SMTPGATE, Server, free_port, make_server
from .test_relay_delivery import HOP_SCRIPT, NextHop, relay_server, send, spooled, wait_for_log

EXIT_NOT_FOUND = 3


class SlowHop(NextHop):
    """`NextHop` answering the end of DATA after ``delay`` seconds."""

    def __init__(self, port: int, out: Path, delay: float) -> None:
        self.port = port
        self.out = out
        self.log = out.parent / f"next-hop-{port}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HOP_SCRIPT), "--port", str(port), "--out", str(out),
                 "--delay", str(delay)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 20
        while not self._greets():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("next hop did not start:\n" + self.log.read_text())
            time.sleep(0.05)


def message_ids(hop: NextHop) -> Counter[str]:
    return Counter(m.group(1).decode() for data in hop.messages()
                   if (m := re.search(rb"Message-ID: <([^@]+)@", data)))


def queue_ids(srv: Server) -> dict[str, str]:
    """Subject tag -> queue id of what is spooled, read from the files (a CLI call
    per message would cost seconds)."""
    out = {}
    for path in spooled(srv):
        try:
            m = re.search(rb"\r\nSubject: (\S+)\r\n", path.read_bytes())
        except FileNotFoundError:
            continue
        if m:
            out[m.group(1).decode()] = path.name.removesuffix(".msg")
    return out


@pytest.fixture
def things() -> Iterator[list[NextHop | Server]]:
    held: list[NextHop | Server] = []
    yield held
    for thing in reversed(held):
        if isinstance(thing, Server):
            if thing.proc is not None:
                thing.proc.kill()
                thing.proc.wait(10)
                thing.proc = None
        else:
            thing.stop()


def test_commands_during_delivery_never_deliver_twice_nor_lose_mail(
    tmp_path: Path, things: list[NextHop | Server]
) -> None:
    port = free_port()
    hop = SlowHop(port, tmp_path / "hop", delay=1.5)
    things.append(hop)
    srv = relay_server(tmp_path / "srv", port)
    # A retry only after a minute: what is attempted sooner was flushed or released.
    srv.config.write_text(srv.config.read_text().replace(
        "retry_initial = 1\nretry_max = 2", "retry_initial = 60\nretry_max = 120"))
    things.append(srv)
    srv.start()

    # Phase 1: commands while deliveries are in flight at the slow hop.
    tags = [f"inflight{i}" for i in range(4)]
    for tag in tags:
        send(srv, tag)
    ids = queue_ids(srv)
    flush = srv.cli("queue", "flush")
    assert flush.returncode == 0, flush.stderr
    victim = ids.get("inflight3")
    deleted = False
    if victim is not None:
        gone = srv.cli("queue", "delete", victim, "--wait", "30", check=False)
        assert gone.returncode in (0, EXIT_NOT_FOUND), gone.stderr
        deleted = gone.returncode == 0
    deadline = time.monotonic() + 30
    while spooled(srv) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not spooled(srv), srv.log_text()
    got = message_ids(hop)
    for tag in tags[:3]:
        assert got[tag] == 1, (tag, got)
    assert got["inflight3"] == (0 if deleted else 1), got

    # Phase 2: the hop is down; messages wait for a retry a minute away.
    hop.stop()
    send(srv, "held")
    send(srv, "doomed")
    wait_for_log(srv, "deferred to=<bob@example.net>")
    deadline = time.monotonic() + 30
    while len(queue_ids(srv)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    ids = queue_ids(srv)
    while srv.log_text().count("deferred to=<bob@example.net>") < 2:
        assert time.monotonic() < deadline, srv.log_text()
        time.sleep(0.05)
    listed = {e["id"]: e for e in json.loads(srv.cli("queue", "list", "--json").stdout)}
    for tag in ("held", "doomed"):
        entry = listed[ids[tag]]
        assert entry["sender"] == "alice@example.org" and entry["size"] > 0
        (rcpt,) = entry["recipients"]
        assert rcpt["address"] == "bob@example.net" and rcpt["status"] == "pending"
        assert rcpt["last_error"] and entry["last_error"] == rcpt["last_error"]
    assert srv.cli("queue", "hold", ids["held"]).returncode == 0
    assert srv.cli("queue", "delete", ids["doomed"]).returncode == 0
    missing = srv.cli("queue", "delete", ids["doomed"], check=False)
    assert missing.returncode == EXIT_NOT_FOUND and "no message" in missing.stderr
    shown = srv.cli("queue", "show", ids["held"])
    assert "(held)" in shown.stdout and "Subject: held" in shown.stdout
    # The Received id is the queue id (the client's copy of the header finds it).
    assert re.search(rf"with ESMTPSA id {ids['held']}\s*(\(|;)", shown.stdout), shown.stdout
    assert "deferred" in shown.stdout  # the delivery history

    hop2 = SlowHop(port, tmp_path / "hop2", delay=0)
    things.append(hop2)
    assert srv.cli("queue", "release", ids["held"]).returncode == 0
    # Delivered long before the one-minute retry: the release asked for it.
    got2 = hop2.wait_for(1, timeout=20)
    assert len(got2) == 1 and b"Subject: held" in got2[0]
    assert message_ids(hop2) == Counter({"held": 1})

    log = [json.loads(line) for line in srv.cli("admin-log", "--json").stdout.splitlines()]
    actions = {(e["action"], e["target"]) for e in log}
    assert {("queue hold", ids["held"]), ("queue delete", ids["doomed"]),
            ("queue release", ids["held"])} <= actions
    assert all(e["os_user"] for e in log if e["action"].startswith("queue "))
    assert srv.stop() == 0


def _seed(spool_dir: Path, n: int, tag: str) -> set[str]:
    """``n`` messages waiting for a retry an hour away (as after a failed attempt)."""
    spool = Spool(spool_dir, prefill=False)
    later = time.time() + 3600
    ids = set()
    for i in range(n):
        env = Envelope("alice@example.org", ("bob@example.net",), "alice", "127.0.0.1",
                       "test", "submission")
        data = f"Message-ID: <{tag}-{i}@example.org>\r\nSubject: {i}\r\n\r\nbody {i}\r\n".encode()
        qid = spool.store_sync(env, data)
        state = MessageState.initial(env.rcpt_to)
        state = MessageState(tuple(r.__class__(r.address, next_attempt=later, attempts=1)
                                   for r in state.recipients))
        spool.save_state_sync(qid, state)
        ids.add(qid)
    asyncio.run(spool.close())
    return ids


def test_kill_9_during_queue_flush_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """No server runs, so ``queue flush`` delivers into the Maildir itself; killed
    in the middle, the next flush finishes the job: every message exactly once."""
    srv = make_server(tmp_path / "srv")
    spool_dir = srv.root / "spool"
    total: set[str] = set()
    cut_midway = False
    for n in (100, 1000):  # a larger queue if the first flush ended before the kill
        total |= _seed(spool_dir, n, f"r{n}")
        proc = subprocess.Popen([SMTPGATE, "queue", "flush", "--config", str(srv.config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=srv.env)
        before = len(srv.delivered())
        while len(srv.delivered()) == before and proc.poll() is None:
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left = len(list((spool_dir / "queue").glob("*.msg")))
        if proc.returncode == -signal.SIGKILL and left > 0:
            cut_midway = True
            break
    assert cut_midway, "every flush finished before the kill"
    again = srv.cli("queue", "flush")
    assert re.search(r"made \d+ delivery attempts? here", again.stdout), again.stdout
    assert not list((spool_dir / "queue").glob("*.msg"))
    names = [p.name for p in srv.delivered()]
    delivered_ids = Counter(re.search(r"\.Q([0-9a-f-]+)\.smtpgate", n).group(1)  # type: ignore[union-attr]
                            for n in names)
    assert set(delivered_ids) == total
    assert all(c == 1 for c in delivered_ids.values())
    contents = Counter(re.search(rb"Message-ID: <([^>]+)>", p.read_bytes()).group(1)  # type: ignore[union-attr]
                       for p in srv.delivered())
    assert len(contents) == len(total) and all(c == 1 for c in contents.values())


def test_run_as_root_the_commands_act_as_the_spool_owner() -> None:
    """What root writes into the spool (a state file, a flush request) must stay
    readable and removable by the user ``serve`` runs as."""
    if os.geteuid() != 0:
        pytest.skip("needs root to change users")
    root = Path(tempfile.mkdtemp(prefix="sgq-", dir="/tmp"))
    try:
        root.chmod(0o755)
        srv = make_server(root / "srv")
        (qid,) = _seed(srv.root / "spool", 1, "owner")
        nobody = pwd.getpwnam("nobody")
        for path in [srv.root, *srv.root.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        assert srv.cli("queue", "hold", qid).returncode == 0
        state = srv.root / "spool" / "queue" / f"{qid}.state"
        assert state.stat().st_uid == nobody.pw_uid
        # A held message is not flushed (exit 1); released, it is.
        assert srv.cli("queue", "flush", qid, check=False).returncode == 1
        assert srv.cli("queue", "release", qid).returncode == 0
        assert srv.cli("queue", "flush", qid).returncode == 0
        assert (srv.root / "spool" / "flush").stat().st_uid == nobody.pw_uid
        log = srv.cli("admin-log", "--json").stdout
        assert '"queue hold"' in log
    finally:
        shutil.rmtree(root, ignore_errors=True)
