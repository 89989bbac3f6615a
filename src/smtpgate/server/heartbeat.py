"""Each node's heartbeat in Redis, for ``smtpgate cluster status`` (docs/scale-out.md).

With ``[state] backend = "redis"`` the main process (the one that keeps the
status file) also writes its status document to ``PREFIX node:NAME`` every
``EVERY`` seconds with a one-minute expiry: a node that dies or loses Redis
drops out of the list within a minute by itself, and nothing needs cleaning up.
A node that stops (SIGTERM, ``systemctl stop``) takes its heartbeat out as its
last act (``Heartbeat.stop``), so ``cluster status`` stops listing it at once:
an administrator draining a node reads there that it is gone, not that it was
"seen 20 s ago" for another minute.
Redis being down is logged once and otherwise ignored here: the guard has its
own account of that (docs/scale-out.md, "Redis down").

Each beat also reads Redis's clock (``TIME``, in the same round trip) and warns
once when this node's differs from it by more than ``CLOCK_WARN`` seconds. The
guard keeps its blocks and failure windows in the wall-clock times of the node
that wrote them, so nodes whose clocks disagree disagree on them: a block that
another node started more than ``guard.CLOCK_SLACK`` ahead of this node's clock
reads as one from before a step back of the clock and is started again from now,
its failures forgotten (``guard.restart_stepped``), and each such block logged
"the clock went back", with nothing saying that the clocks differ, nor which.
Redis's clock is the one every node can compare with.

Each time Redis answers again after beats that failed (a Redis down when the node
started, restarted, or failed over), and every ``POLICY_EVERY`` seconds besides (a
restart quicker than a beat goes unseen: the client reconnects by itself), the
beat also asks Redis whether it may evict keys (``auth/redis_check.py``): start-up
refuses such a Redis, but a node that started while Redis was down, or whose Redis
came back configured otherwise (``maxmemory-policy allkeys-lru`` in the new one's
config), was never asked, and served on while a full Redis could drop its blocks
and failure counts without a word. It is logged as an error, once, until Redis
says otherwise. A login that may not read the policy (an ACL without ``INFO``,
warned about at start-up) is not asked again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smtpgate.auth.guard import CLOCK_SLACK
from smtpgate.auth.state_backend import redis_client
from smtpgate.config import Config
from smtpgate.server.shared_settings import describe, differences, shared_settings
from smtpgate.server.status_file import ServerStatus

if TYPE_CHECKING:  # imported by `Heartbeat`, which only a redis backend builds
    import redis

log = logging.getLogger("smtpgate")

#: Seconds between heartbeats; a node is listed while its last one is younger
#: than ``TTL``.
EVERY = 10.0
TTL = 60
#: Seconds this node's clock may differ from Redis's before a warning: well inside
#: the guard's ``CLOCK_SLACK`` (60 s), well outside what NTP leaves (milliseconds).
CLOCK_WARN = 10.0
#: Seconds between two questions about Redis's eviction policy (module docstring).
POLICY_EVERY = 60.0

#: What tells one process's heartbeat from another's under the same name.
_IDENTITY = ("host", "pid", "started")

#: Deletes the heartbeat only if it is still the one this process wrote: a node
#: started meanwhile under the same ``node_name`` keeps its own.
_DELETE_OWN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def node_name(cfg: Config) -> str:
    return cfg.state.node_name or f"{socket.gethostname()}:{cfg.base_dir.resolve()}"


def _queue_size(spool: Path) -> int | None:
    """Messages in the spool's queue; 0 before the first message made the directory
    (a node's first heartbeat), None if it cannot be read (``cluster status`` says
    unknown: -1 there read as a count)."""
    try:
        return sum(1 for n in os.listdir(spool / "queue") if n.endswith(".msg"))
    except FileNotFoundError:
        return 0
    except OSError:
        return None


class Heartbeat:
    """Writes this node's status; ``beat`` is cheap to call often (it writes every
    ``EVERY`` seconds) and never raises."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time) -> None:
        import redis  # here, not at the top: single-node processes never need it

        self._error: type[Exception] = redis.RedisError
        self._key = cfg.state.key_prefix + "node:" + node_name(cfg)
        self._name = node_name(cfg)
        self._spool = cfg.path(cfg.queue.spool)
        self._client: redis.Redis | None = None
        self._cfg = cfg
        self._next = 0.0
        self._failing = False
        #: The last document written (what ``stop`` deletes, if still there).
        self._written: str | None = None
        self._host = socket.gethostname()
        #: Another process writes under this node's name (warned once).
        self._twin = False
        self._clock = clock
        #: This node's clock is off Redis's by more than CLOCK_WARN (warned once).
        self._skewed = False
        #: The eviction error logged last (module docstring); "" while none applies.
        self._evicts = ""
        #: When to ask about the eviction policy next (monotonic; start-up just did);
        #: infinity once the login proved it may not read it.
        self._next_policy = time.monotonic() + POLICY_EVERY
        #: The settings every node must share (`shared_settings`), as running.
        self._shared = shared_settings(cfg)
        #: When to compare them with the other nodes' next (monotonic; 0: at the next
        #: beat that reaches Redis), and the warning logged last ("" while they agree).
        self._next_settings = 0.0
        self._settings_warned = ""

    def reloaded(self, cfg: Config) -> None:
        """A reload changed what runs: the next beat carries and compares the new
        settings."""
        self._shared = shared_settings(cfg)
        self._next_settings = 0.0
        self._next = 0.0

    def beat(self, status: ServerStatus) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + EVERY
        doc: dict[str, Any] = {**asdict(status), "node": self._name, "host": self._host,
                               "queue": _queue_size(self._spool), "shared": self._shared}
        text = json.dumps(doc, sort_keys=True)
        try:
            if self._client is None:
                self._client = redis_client(self._cfg)
            pipe = self._client.pipeline(transaction=False)
            pipe.get(self._key)
            pipe.set(self._key, text, ex=TTL)
            pipe.time()
            asked = self._clock()
            before, _, (secs, micros) = pipe.execute()
            answered = self._clock()
        except (self._error, OSError) as e:
            if not self._failing:
                log.warning("cluster heartbeat: cannot write to Redis: %s", e)
            self._failing = True
            return
        if self._failing:
            log.info("cluster heartbeat: Redis answers again")
        if self._failing or now >= self._next_policy:
            self._check_eviction(self._client, now)
        self._failing = False
        ours_before, self._written = self._written, text
        self._check_twin(before, doc, wrote_before=ours_before is not None)
        self._check_clock((asked + answered) / 2 - (int(secs) + int(micros) / 1e6))
        if now >= self._next_settings:
            self._check_settings(self._client, now)

    def _check_settings(self, client: redis.Redis, now: float) -> None:
        """Warn when another live node runs other shared settings than this one
        (`shared_settings`), naming each key and each node's value; once per
        distinct difference, and a line when they agree again."""
        self._next_settings = now + POLICY_EVERY
        try:
            keys = [k for k in client.scan_iter(
                match=glob_escaped(self._cfg.state.key_prefix) + "node:*", count=500)
                if (k.decode() if isinstance(k, bytes) else k) != self._key]
            docs = client.mget(keys) if keys else []
        except (self._error, OSError):
            return  # the next beat says whether Redis is down
        theirs: dict[str, dict[str, Any]] = {}
        for text in docs:
            try:
                doc = json.loads(text) if text is not None else None
            except ValueError:
                continue
            if (isinstance(doc, dict) and isinstance(doc.get("shared"), dict)
                    and isinstance(doc.get("node"), str) and doc["node"] != self._name):
                theirs[doc["node"]] = doc["shared"]
        lines = []
        for node in sorted(theirs):
            differ = differences({self._name: self._shared, node: theirs[node]})
            if differ:
                lines.append(f"node {node!r}: " + "; ".join(
                    describe(key, values) for key, values in differ.items()))
        warning = " | ".join(lines)
        if warning and warning != self._settings_warned:
            log.warning("cluster heartbeat: other nodes run other [guard], [policy] or hourly "
                        "[limits] settings than this node (%r): %s. Each node applies its own "
                        "to the failures, blocks and counters all of them share, so a client "
                        "gets whichever node the balancer picks, and an attacker the laxest: "
                        "give every node the same (docs/scale-out.md)", self._name, warning)
        elif not warning and self._settings_warned:
            log.info("cluster heartbeat: every live node runs this node's [guard], [policy] "
                     "and hourly [limits] settings again")
        self._settings_warned = warning

    def _check_eviction(self, client: redis.Redis, now: float) -> None:
        """The check start-up makes (module docstring), made again: an error while
        Redis may evict keys, once; a line when it no longer may. A Redis whose
        policy cannot be read (an ACL without ``INFO``) was warned about at
        start-up, and is not asked again."""
        from smtpgate.auth.redis_check import eviction

        self._next_policy = now + POLICY_EVERY
        found = eviction(client, f"Redis at {self._cfg.state.redis_url}")
        if found is not None and not found.refused and not found.outage:
            self._next_policy = float("inf")
        if found is not None and found.refused:
            if found.message != self._evicts:
                log.error("cluster heartbeat: state.redis_url: %s (serve would not start "
                          "with it; logins go on meanwhile)", found.message)
            self._evicts = found.message
        elif found is None and self._evicts:
            log.info("cluster heartbeat: Redis at %s no longer evicts keys",
                     self._cfg.state.redis_url)
            self._evicts = ""

    def _check_clock(self, offset: float) -> None:
        """Warn once when this node's clock is ``offset`` s off Redis's (module
        docstring); say so when it agrees again."""
        if abs(offset) > CLOCK_WARN:
            if not self._skewed:
                log.warning("cluster heartbeat: this node's clock is %.0f s %s Redis's: the "
                            "guard's blocks and failure windows are kept in each node's "
                            "wall-clock time, so nodes that disagree shorten or restart each "
                            "other's blocks (a block from a clock over %.0f s ahead is logged as "
                            "'the clock went back' and started again, its failures forgotten); "
                            "keep every node's clock in sync (NTP, chrony)", abs(offset),
                            "ahead of" if offset > 0 else "behind", CLOCK_SLACK)
            self._skewed = True
        elif self._skewed:
            log.info("cluster heartbeat: this node's clock agrees with Redis's again "
                     "(%.1f s off)", offset)
            self._skewed = False

    def _check_twin(self, before: bytes | None, doc: dict[str, Any], *,
                    wrote_before: bool) -> None:
        """Warn (once) when the heartbeat replaced was written by another live
        process: two nodes configured with one ``node_name`` overwrite each other,
        and ``cluster status`` would list one node where two serve. A heartbeat
        found on the first write may be a predecessor's (a node restarted after a
        crash): only one found after this process wrote its own says "twin"."""
        other = None
        if before is not None and wrote_before:
            try:
                found = json.loads(before)
            except ValueError:
                found = None
            if isinstance(found, dict) and [found.get(k) for k in _IDENTITY] != [
                    doc.get(k) for k in _IDENTITY]:
                other = found
        if other is None:
            self._twin = False
            return
        if not self._twin:
            log.warning("cluster heartbeat: another process writes the heartbeat of node "
                        "%r (host %s, pid %s): give each node its own [state] node_name; "
                        "until then cluster status lists one node where two serve",
                        self._name, other.get("host", "?"), other.get("pid", "?"))
        self._twin = True

    def stop(self) -> None:
        """The node stops: delete its heartbeat (never raises; with Redis down the
        heartbeat expires by itself)."""
        if self._written is None:
            return
        try:
            if self._client is None:
                self._client = redis_client(self._cfg)
            self._client.eval(_DELETE_OWN, 1, self._key, self._written)
        except (self._error, OSError) as e:
            log.info("cluster heartbeat: could not remove it from Redis (it expires "
                     "within %d s): %s", TTL, e)
        finally:
            self._written = None
            self._next = float("inf")  # no beat after the stop
            if self._client is not None:
                self._client.close()
                self._client = None


def glob_escaped(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern (SCAN MATCH, KEYS): each
    ``*``, ``?``, ``[``, ``]`` and ``\\`` behind a backslash, Redis's own escape. A
    key_prefix is free text, and as a pattern ``a*:`` would also match the keys of
    another cluster's ``ab:``."""
    return _GLOB_SPECIAL.sub(r"\\\g<0>", text)


_GLOB_SPECIAL = re.compile(r"[*?\[\]\\]")


def nodes(cfg: Config) -> list[dict[str, Any]]:
    """The heartbeats of the last minute, by node name, under this config's
    key_prefix only (`glob_escaped`).

    Raises:
        redis.RedisError, OSError: Redis cannot be read.
    """
    client = redis_client(cfg)
    try:
        keys = sorted(client.scan_iter(match=glob_escaped(cfg.state.key_prefix) + "node:*",
                                     count=500))
        docs = [client.get(k) for k in keys]
    finally:
        client.close()
    return [json.loads(d) for d in docs if d is not None]
