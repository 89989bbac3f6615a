"""Two smtpgate nodes behind a real HAProxy (TCP mode, ``send-proxy-v2``, round
robin), sharing one Redis for the guard and the sending counters and one
PostgreSQL database for the accounts, as docs/scale-out.md sets them up. N
nodes must behave as one: guesses spread over the nodes are blocked at the
one-node threshold, an hourly limit holds across nodes, a lock made on one node
refuses the next login on the other, and the nodes see the clients' addresses
that HAProxy passes (distinct 127.0.0.x sources)."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from smtpgate.smtp import replies as R
from tests.peers.haproxy import HAProxy
from tests.peers.redis_server import RedisServer, available

from .backends import set_accounts
from .conftest import SMTPGATE, Server, make_server, require_tool
from .test_attacks import Raw, plain
from .test_protection import (
    BOB,
    BOB_PASSWORD,
    CAROL,
    CAROL_PASSWORD,
    GUARDED,
    LOCKOUT,
    PASSWORD,
    PENALTY_BASE,
    PENALTY_MAX,
    USER,
)

DAVE, DAVE_PASSWORD = "dave@example.org", "plum-orbit-canvas-47"


@dataclass
class Cluster:
    nodes: list[Server]
    proxy: HAProxy
    redis: RedisServer
    ctx: ssl.SSLContext

    def connect(self, source: str) -> Raw:
        """An EHLO'd session over implicit TLS through HAProxy, from ``source``."""
        sock = socket.create_connection(("127.0.0.1", self.proxy.submissions), timeout=20,
                                        source_address=(source, 0))
        r = Raw.__new__(Raw)
        r.ctx, r.buf = self.ctx, b""
        r.sock = self.ctx.wrap_socket(sock, server_hostname="localhost")
        r.banner = r.reply()
        r.cmd("EHLO client.example")
        return r

    def login(self, source: str, user: str, password: str) -> str:
        r = self.connect(source)
        try:
            return r.cmd(f"AUTH PLAIN {plain(user, password)}")
        finally:
            r.close()

    def records(self, node: Server) -> list[dict[str, object]]:
        path = node.root / "auth.log"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _node_config(srv: Server, redis: RedisServer, name: str) -> None:
    text = srv.config.read_text()
    for tls in ("starttls", "implicit"):
        text = text.replace(f'tls = "{tls}"', f'tls = "{tls}"\nproxy_protocol = true\n'
                            'trusted_proxies = ["127.0.0.1/32"]')
    text += (f'\n[state]\nbackend = "redis"\nredis_url = "{redis.url}"\n'
             f'password_file = "{redis.password_file}"\nkey_prefix = "cluster:"\n'
             f'node_name = "{name}"\n')
    srv.config.write_text(text)


def start_node(srv: Server) -> None:
    """Start and wait until every process is ready (the listeners want a PROXY
    header, so the fixture's SMTP probe cannot tell)."""
    with open(srv.log_path, "ab") as log:
        srv.proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(srv.config)],
                                    stdout=log, stderr=log, env=srv.env)
    status = srv.root / "smtpgate.status.json"
    deadline = time.monotonic() + 60
    while True:
        assert srv.proc.poll() is None, srv.log_text()
        assert time.monotonic() < deadline, srv.log_text()
        try:
            doc = json.loads(status.read_text())
            if doc["pid"] == srv.proc.pid and doc["processes"] and all(
                    p["ready"] for p in doc["processes"]):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    for tool in ("haproxy", "redis-server"):
        if tool == "haproxy" and Path("/usr/sbin/haproxy").exists():
            continue
        if available() is not None and tool == "redis-server":
            require_tool("redis-server")
    if not Path("/usr/sbin/haproxy").exists():
        require_tool("haproxy")
    from tests.postgres_server import shared_cluster

    root = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(root / "redis")
    redis.start()
    pg = shared_cluster()
    dsn = pg.create_database()
    guarded = GUARDED.format(allowlist="[]", penalty_base=PENALTY_BASE,
                             penalty_max=PENALTY_MAX, lockout=LOCKOUT)
    nodes = []
    for name in ("a", "b"):
        srv = make_server(root / name, guarded)
        pg.write_password_file(srv.root)
        set_accounts(srv, "postgresql", f'[accounts.postgresql]\ndsn = "{dsn}"\n'
                                        'password_file = "pg.password"\n')
        _node_config(srv, redis, name)
        nodes.append(srv)
    # One certificate for the cluster's name, as behind a balancer.
    for part in ("cert.pem", "key.pem"):
        (nodes[1].root / "tls" / part).write_bytes((nodes[0].root / "tls" / part).read_bytes())
    assert nodes[0].cli("db", "migrate", check=False).returncode == 0
    for user, pw in ((USER, PASSWORD), (BOB, BOB_PASSWORD), (CAROL, CAROL_PASSWORD),
                     (DAVE, DAVE_PASSWORD)):
        nodes[0].add_user(user, pw)
    for srv in nodes:
        start_node(srv)
    proxy = HAProxy(root / "haproxy", [("a", nodes[0].submission, nodes[0].submissions),
                                       ("b", nodes[1].submission, nodes[1].submissions)])
    proxy.start()
    ctx = ssl.create_default_context(cafile=str(nodes[0].ca))
    yield Cluster(nodes, proxy, redis, ctx)
    proxy.stop()
    for srv in nodes:
        if srv.proc is not None:
            srv.stop()
    redis.stop()


def served_by(c: Cluster, source: str) -> set[int]:
    """Which nodes logged an AUTH from ``source``."""
    return {i for i, n in enumerate(c.nodes) if any(r["client_ip"] == source for r in c.records(n))}


def test_brute_force_over_both_nodes_is_blocked_at_the_one_node_threshold(c: Cluster) -> None:
    assert c.login("127.0.0.21", USER, PASSWORD).startswith("235")  # the owner: known address
    replies = [c.login("127.0.0.20", USER, f"guess{i}") for i in range(LOCKOUT)]
    assert replies == [str(R.AUTH_FAILED)] * LOCKOUT
    # Locked for new addresses, whichever node answers (round robin: both do).
    for _ in range(2):
        assert c.login("127.0.0.20", USER, PASSWORD) == str(R.AUTH_ACCOUNT_LOCKED)
    assert served_by(c, "127.0.0.20") == {0, 1}
    for _ in range(2):
        assert c.login("127.0.0.21", USER, PASSWORD).startswith("235")
    assert served_by(c, "127.0.0.21") == {0, 1}


def test_guesses_sent_at_once_to_every_node_are_held_to_the_threshold(c: Cluster) -> None:
    """One guess from each of 16 new addresses, all sent at the same moment, so
    they reach both nodes' workers together. Each process's attempt gate let one
    attempt per account through at a time, but four processes each let one
    through, all read the same count in Redis and all were verified: 5 or 6
    passwords tried where distributed_addresses (3) throttles the account. The
    gate's lease in Redis (auth/shared_gate.py) makes them go one at a time
    across the cluster, so the count is exact."""
    import threading

    target = "erin@example.org"  # no account: guesses against it count the same
    sessions = [c.connect(f"127.0.3.{i + 10}") for i in range(16)]
    start = threading.Barrier(len(sessions))
    replies: list[str] = []

    def guess(i: int, r: Raw) -> None:
        start.wait()
        replies.append(r.cmd(f"AUTH PLAIN {plain(target, f'guess-{i}')}"))
        r.close()

    threads = [threading.Thread(target=guess, args=(i, r)) for i, r in enumerate(sessions)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(replies) == len(sessions)
    assert {i for i, n in enumerate(c.nodes) for r in c.records(n)
            if str(r["client_ip"]).startswith("127.0.3.")} == {0, 1}
    verified = [x for x in replies if x.startswith("535")]
    assert len(verified) == 3, sorted(replies)  # distributed_addresses
    assert all(x.startswith("454") for x in replies if not x.startswith("535")), replies


def test_a_spray_over_both_nodes_is_blocked_at_the_threshold(c: Cluster) -> None:
    targets = [BOB, CAROL, DAVE] + [f"user{i}@example.org" for i in range(3)]
    replies = [c.login("127.0.0.22", name, "Summer2024!") for name in targets]
    assert replies[:3] == [str(R.AUTH_FAILED)] * 3
    assert replies[3:] == [str(R.AUTH_BLOCKED)] * 3, replies
    assert served_by(c, "127.0.0.22") == {0, 1}
    assert c.login("127.0.0.22", BOB, BOB_PASSWORD) == str(R.AUTH_BLOCKED)


def test_an_hourly_limit_holds_across_nodes(c: Cluster) -> None:
    replies = []
    for i in range(5):  # one message per session: the sessions alternate between nodes
        r = c.connect("127.0.0.23")
        assert r.cmd(f"AUTH PLAIN {plain(DAVE, DAVE_PASSWORD)}").startswith("235")
        reply = r.cmd(f"MAIL FROM:<{DAVE}>")
        if reply.startswith("250"):
            assert r.cmd("RCPT TO:<x@example.net>").startswith("250")
            assert r.cmd("DATA").startswith("354")
            reply = r.cmd(f"From: {DAVE}\r\nSubject: n{i}\r\n\r\nbody\r\n.")
        replies.append(reply)
        r.close()
    assert [x[:3] for x in replies[:3]] == ["250"] * 3  # messages_per_hour = 3
    assert replies[3:] == [str(R.MESSAGE_RATE_EXCEEDED)] * 2


def test_a_lock_made_on_one_node_refuses_the_next_login_on_the_other(c: Cluster) -> None:
    assert c.login("127.0.0.24", CAROL, CAROL_PASSWORD).startswith("235")
    c.nodes[0].cli("user", "lock", CAROL)
    replies = [c.login("127.0.0.24", CAROL, CAROL_PASSWORD) for _ in range(2)]
    assert all(x.startswith("535") for x in replies), replies
    refused = [i for i, n in enumerate(c.nodes) if any(
        r["username"] == CAROL and r["result"] == "failure" for r in c.records(n))]
    assert refused == [0, 1]
    c.nodes[1].cli("user", "unlock", CAROL)
    assert c.login("127.0.0.24", CAROL, CAROL_PASSWORD).startswith("235")


def test_cluster_status_lists_both_nodes(c: Cluster) -> None:
    out = c.nodes[1].cli("cluster", "status", "--json").stdout
    docs = {d["node"]: d for d in map(json.loads, out.splitlines())}
    assert set(docs) == {"a", "b"}
    assert docs["a"]["pid"] == c.nodes[0].proc.pid  # type: ignore[union-attr]
    assert datetime.fromisoformat(docs["a"]["updated"]).tzinfo is not None  # docs/cli.md
    assert "a:" in c.nodes[0].cli("cluster", "status").stdout


def test_a_node_that_stops_leaves_cluster_status_at_once(c: Cluster) -> None:
    """docs/scale-out.md, draining: after ``systemctl stop`` the node is gone from
    ``cluster status`` (it took its heartbeat out), not listed for another minute as
    "seen 10 s ago"; started again, it is back."""
    def listed() -> set[str]:
        out = c.nodes[0].cli("cluster", "status", "--json").stdout
        return {json.loads(line)["node"] for line in out.splitlines()}

    assert listed() == {"a", "b"}
    c.nodes[1].stop()
    assert listed() == {"a"}
    start_node(c.nodes[1])
    deadline = time.monotonic() + 15
    while listed() != {"a", "b"}:
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_kill_9_of_one_node_under_load_loses_no_acknowledged_message(c: Cluster) -> None:
    acknowledged: list[str] = []
    c.nodes[1].cli("user", "limits", BOB, "--messages-per-hour", "0", "--recipients-per-hour", "0")
    victim = c.nodes[0]
    assert victim.proc is not None
    for i in range(16):
        if i == 6:
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            victim.proc = None
        subject = f"load-{i}"
        try:
            r = c.connect("127.0.0.25")
            assert r.cmd(f"AUTH PLAIN {plain(BOB, BOB_PASSWORD)}").startswith("235")
            mail = r.cmd(f"MAIL FROM:<{BOB}>")
            if mail.startswith("250") and r.cmd(
                    "RCPT TO:<bob@example.org>").startswith("250") and r.cmd(
                    "DATA").startswith("354"):
                end = r.cmd(f"From: {BOB}\r\nSubject: {subject}\r\n\r\nx\r\n.")
                if end.startswith("250"):
                    acknowledged.append(subject)
            r.close()
        except (OSError, EOFError):
            pass  # a session cut by the kill: not acknowledged
    assert len(acknowledged) >= 10  # the surviving node kept serving
    start_node(victim)  # its spool is delivered after the restart
    deadline = time.monotonic() + 60
    while True:
        got = {line.split(":", 1)[1].strip() for n in c.nodes for m in n.delivered()
               for line in m.read_text(errors="replace").splitlines()
               if line.startswith("Subject: load-")}
        if set(acknowledged) <= got:
            break
        assert time.monotonic() < deadline, (sorted(acknowledged), sorted(got))
        time.sleep(0.2)


@pytest.fixture
def c(cluster: Cluster) -> Cluster:
    for srv in cluster.nodes:
        if srv.proc is None:
            start_node(srv)
    return cluster


def test_redis_down_degrades_as_documented_and_recovers_without_restart(c: Cluster) -> None:
    """docs/scale-out.md, "Redis down": never a 535 for the fault; addresses this
    node has not seen log in to nothing (454) while Redis is down; rate limits are
    not applied; each node logs the episode; service is whole again once Redis
    answers, without restarting the nodes."""
    c.redis.stop()
    try:
        replies = [c.login("127.0.0.26", BOB, BOB_PASSWORD) for _ in range(2)]
        assert all(x.startswith("454 ") for x in replies), replies  # a new address
        assert c.login("127.0.0.26", BOB, "wrong").startswith(("454 ", "535 "))
        for node in c.nodes:
            assert "unavailable" in node.log_text()
    finally:
        c.redis.start()  # empty: no persistence in this test set-up
    deadline = time.monotonic() + 30
    while not c.login("127.0.0.26", BOB, BOB_PASSWORD).startswith("235"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    # Both nodes answer normally again.
    assert all(c.login("127.0.0.27", BOB, BOB_PASSWORD).startswith("235") for _ in range(2))


def test_a_stopping_node_removes_only_its_own_heartbeat(c: Cluster) -> None:
    """Two processes under one ``node_name`` (a node restarted while its old process
    still shuts down): the one that stops removes its own heartbeat, never the
    other's."""
    from smtpgate.config import load_config
    from smtpgate.server.heartbeat import Heartbeat, nodes
    from smtpgate.server.status_file import ServerStatus

    cfg = load_config(c.nodes[0].config)
    cfg = cfg.model_copy(update={"state": cfg.state.model_copy(update={"node_name": "twin"})})
    def status(pid: int) -> ServerStatus:
        return ServerStatus(pid, "0", 0.0, None, 0.0, [], [], 1, updated=time.time())

    old, new = Heartbeat(cfg), Heartbeat(cfg)
    old.beat(status(1))
    assert [d["pid"] for d in nodes(cfg) if d["node"] == "twin"] == [1]
    new.beat(status(2))
    old.stop()
    assert [d["pid"] for d in nodes(cfg) if d["node"] == "twin"] == [2]
    new.stop()
    assert [d for d in nodes(cfg) if d["node"] == "twin"] == []


@pytest.mark.parametrize("version", ["send-proxy", "send-proxy-v2"])
def test_haproxy_health_checks_leave_no_warnings(c: Cluster, version: str) -> None:
    """docs/scale-out.md's HAProxy set-up has ``check`` on each server: a TCP
    connect that HAProxy resets at once, so the node may find its peer already gone
    when it looks at the address. That is the balancer checking, not an untrusted
    client: nothing is logged for it (one warning per check per listener per node
    was tens of thousands of false lines a day). Sessions through that balancer, in
    either PROXY version, still see the client's own address."""
    n = c.nodes
    checked = HAProxy(c.proxy.root.parent / f"checked-{version}",
                      [("a", n[0].submission, n[0].submissions),
                       ("b", n[1].submission, n[1].submissions)],
                      server_options=f"{version} check inter 100")
    marks = [len(node.log_text()) for node in n]
    checked.start()
    main, c.proxy = c.proxy, checked
    try:
        time.sleep(3)  # about 30 checks per listener and node
        source = "127.0.0.28" if version == "send-proxy" else "127.0.0.29"
        for _ in range(2):
            assert c.login(source, BOB, BOB_PASSWORD).startswith("235")
    finally:
        c.proxy = main
        checked.stop()
    assert served_by(c, source) == {0, 1}
    for node, mark in zip(n, marks):
        # Only the listeners' lines: a process may end an earlier test's Redis
        # outage with its "answering again" warning at one of these logins.
        warnings = [line for line in node.log_text()[mark:].splitlines()
                    if " WARNING " in line and ("listener " in line or "PROXY" in line)]
        assert warnings == [], warnings


def test_two_nodes_under_one_node_name_are_warned_about(
        c: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    """Two nodes left with one ``node_name`` (a copied config) overwrite each
    other's heartbeat, and ``cluster status`` lists one node where two serve: each
    says so in its log, once; a node restarted after a crash, which finds its
    predecessor's heartbeat, does not."""
    from smtpgate.config import load_config
    from smtpgate.server import heartbeat
    from smtpgate.server.status_file import ServerStatus

    cfg = load_config(c.nodes[0].config)
    cfg = cfg.model_copy(update={"state": cfg.state.model_copy(update={"node_name": "copied"})})

    def status(pid: int) -> ServerStatus:
        return ServerStatus(pid, "0", float(pid), None, 0.0, [], [], 1, updated=time.time())

    crashed, restarted = heartbeat.Heartbeat(cfg), heartbeat.Heartbeat(cfg)
    crashed.beat(status(1))
    restarted.beat(status(2))  # finds pid 1's heartbeat on its first write: no warning
    assert "another process" not in caplog.text
    twin = heartbeat.Heartbeat(cfg)
    for _ in range(3):
        for hb, pid in ((twin, 3), (restarted, 2)):
            hb._next = 0.0  # the next beat is due
            hb.beat(status(pid))
    warned = [r.getMessage() for r in caplog.records if "another process" in r.getMessage()]
    assert len(warned) == 2, warned  # once by each of the two
    assert "'copied'" in warned[0] and "pid 3" in warned[0] and "pid 2" in warned[1]
    for hb in (twin, restarted):
        hb.stop()


def test_a_postgresql_outage_is_logged_by_smtpgate_alone(c: Cluster) -> None:
    """docs/scale-out.md, "PostgreSQL down": each process says so once when it
    starts and once when it ends (``outage_log``). The connection pool's own line
    per reconnection attempt (about one a second per process, unformatted, to
    stderr even with ``server.log_file``) repeated that, and buried the rest."""
    from tests.postgres_server import shared_cluster

    marks = [len(node.log_text()) for node in c.nodes]
    pg = shared_cluster()
    pg.stop()
    try:
        replies = [c.login("127.0.0.30", BOB, BOB_PASSWORD) for _ in range(2)]
        assert all(x.startswith("454 ") for x in replies), replies
        time.sleep(12)  # beyond the pool's reconnection attempt (10 s)
    finally:
        pg.start()
    deadline = time.monotonic() + 30
    while not all(c.login("127.0.0.30", BOB, BOB_PASSWORD).startswith("235") for _ in range(2)):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    texts = [node.log_text()[mark:] for node, mark in zip(c.nodes, marks)]
    assert "unavailable" in "".join(texts)  # "answering again" with the process's next read
    for text in texts:
        assert "error connecting in" not in text and "reconnection attempt" not in text, text
        # One line per record (docs/operations.md): libpq's message has a second
        # line ("\n\tIs the server running on that host...?"), which broke the
        # outage lines in two for anything reading the log line by line.
        stray = [line for line in text.splitlines() if not line[:4].isdigit()]
        assert stray == [], text


def test_cluster_status_marks_a_node_whose_heartbeats_stopped(c: Cluster) -> None:
    """A node killed with ``kill -9`` (or cut off from Redis) stays listed until its
    last heartbeat expires: "seen 40 s ago" alone reads like a node that is up;
    the line says that heartbeats are late, and ``--json`` has ``late``."""
    import redis as redis_py

    client = redis_py.Redis(port=c.redis.port, password=c.redis.password_file.read_text().strip())
    doc = json.loads(client.get("cluster:node:a") or b"{}")
    doc.update(node="gone", pid=4242, updated=time.time() - 40)
    client.set("cluster:node:gone", json.dumps(doc), ex=30)
    try:
        lines = c.nodes[0].cli("cluster", "status").stdout.splitlines()
        gone = [x for x in lines if x.startswith("gone:")]
        assert gone and re.search(r"seen 4\d s ago \(late: ", gone[0]), lines
        assert not any("late" in x for x in lines if x.startswith(("a:", "b:"))), lines
        docs = {d["node"]: d for d in map(json.loads, c.nodes[0].cli(
            "cluster", "status", "--json").stdout.splitlines())}
        assert docs["gone"]["late"] is True and docs["a"]["late"] is False
    finally:
        client.delete("cluster:node:gone")
        client.close()


def test_a_node_with_other_guard_policy_or_limits_is_named(
        c: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    """Nodes share the guard's counts and the sending counters but each compares
    them with its own config, so a node with a higher lockout threshold, no hourly
    limit or sender ownership off gives a client (and an attacker who retries) the
    laxest rules: the odd node warns, naming each key with each node's value, and
    ``cluster status`` lists the keys; nodes that agree say nothing."""
    from smtpgate.config import load_config
    from smtpgate.server import heartbeat
    from smtpgate.server.status_file import ServerStatus

    caplog.set_level(logging.INFO, logger="smtpgate")
    cfg = load_config(c.nodes[0].config)
    docs = {d["node"]: d for d in map(json.loads, c.nodes[0].cli(
        "cluster", "status", "--json").stdout.splitlines())}
    # The real nodes carry their settings, and agree: nothing listed, nothing warned.
    assert docs["a"]["shared"] == docs["b"]["shared"], docs
    assert docs["a"]["shared"]["guard.lockout_threshold"] == cfg.guard.lockout_threshold
    assert "differ" not in c.nodes[0].cli("cluster", "status").stdout
    assert not any("other nodes run other" in n.log_text() for n in c.nodes)

    odd = cfg.model_copy(update={
        "state": cfg.state.model_copy(update={"node_name": "odd"}),
        "guard": cfg.guard.model_copy(update={"lockout_threshold": cfg.guard.lockout_threshold
                                              + 10}),
        "policy": cfg.policy.model_copy(update={"sender_ownership": "off"}),
        "limits": cfg.limits.model_copy(update={"messages_per_hour": 0}),
    })
    status = ServerStatus(4343, "0", 1.0, None, 0.0, [], [], 1, updated=time.time())
    hb = heartbeat.Heartbeat(odd)
    try:
        hb.beat(status)
        warned = [r.getMessage() for r in caplog.records
                  if "other nodes run other" in r.getMessage()]
        assert len(warned) == 1, warned
        for node in ("a", "b"):
            assert (f"node {node!r}: guard.lockout_threshold: {node} "
                    f"{cfg.guard.lockout_threshold}, odd {cfg.guard.lockout_threshold + 10}"
                    in warned[0]), warned
        assert "policy.sender_ownership: a 'enforce', odd 'off'" in warned[0], warned
        assert f"limits.messages_per_hour: a {cfg.limits.messages_per_hour}, odd 0" in warned[0]
        assert "guard.database" not in warned[0] and "max_connections" not in warned[0]
        hb._next = 0.0  # the next beat is due, the same difference: not warned again
        hb.beat(status)
        assert len([r for r in caplog.records
                    if "other nodes run other" in r.getMessage()]) == 1

        out = c.nodes[1].cli("cluster", "status").stdout
        assert "settings that differ between the nodes" in out, out
        assert (f"  guard.lockout_threshold: a {cfg.guard.lockout_threshold}, b "
                f"{cfg.guard.lockout_threshold}, odd {cfg.guard.lockout_threshold + 10}"
                in out), out
        assert "  policy.sender_ownership: a 'enforce', b 'enforce', odd 'off'" in out, out

        # Put right (a reload with the same settings): said once, and not listed.
        hb.reloaded(cfg.model_copy(update={
            "state": cfg.state.model_copy(update={"node_name": "odd"})}))
        hb.beat(status)
        assert any("every live node runs this node's" in r.getMessage()
                   for r in caplog.records), caplog.text
        assert "differ" not in c.nodes[1].cli("cluster", "status").stdout
    finally:
        hb.stop()

    # A real node reloaded into another threshold says so at its next beat, and
    # again when a reload puts it right.
    node = c.nodes[1]
    text = node.config.read_text()
    key = f"lockout_threshold = {cfg.guard.lockout_threshold}\n"
    assert text.count(key) == 1, text
    mark = len(node.log_text())
    try:
        node.config.write_text(text.replace(key, f"lockout_threshold = "
                                                 f"{cfg.guard.lockout_threshold + 1}\n"))
        node.cli("reload")
        deadline = time.monotonic() + 30
        want = (f"guard.lockout_threshold: a {cfg.guard.lockout_threshold}, "
                f"b {cfg.guard.lockout_threshold + 1}")
        while want not in node.log_text()[mark:]:
            assert time.monotonic() < deadline, node.log_text()[mark:]
            time.sleep(0.5)
    finally:
        node.config.write_text(text)
        node.cli("reload")
    deadline = time.monotonic() + 30
    while "every live node runs this node's" not in node.log_text()[mark:]:
        assert time.monotonic() < deadline, node.log_text()[mark:]
        time.sleep(0.5)
