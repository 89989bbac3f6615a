"""What the login path counts (smtpgate.metrics), and who may be dropped to
(server/privileges.py): the result classes, bounded labels, refusals."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from smtpgate import metrics
from smtpgate.auth.guard import Refusal
from smtpgate.auth.service import REFUSED_POLICY, REFUSED_UNKNOWN, Resolution
from smtpgate.config import Config, MetricsConfig
from smtpgate.errors import StartupError
from smtpgate.sasl import base as sasl
from smtpgate.server import privileges
from smtpgate.server.metrics_http import MetricsServer
from tests.unit.test_auth_login import CTX, PLAIN, USER, Outcome, World


def count(mechanism: str, result: str, front_door: str = "smtp") -> float:
    return metrics._m.auth_attempts.labels(mechanism, front_door, result)._value.get()


def observed(result: str) -> float:
    """How many login latencies were observed for ``result``."""
    for family in metrics._m.login_seconds.collect():
        for s in family.samples:
            if s.name.endswith("_count") and s.labels == {"result": result}:
                return s.value
    return 0.0


@pytest.mark.parametrize(
    ("resolution", "outcome", "guard_refusal", "expected"),
    [
        (Resolution(sasl.Verdict(ok=True, identity=USER)),
         Outcome("PLAIN", "success", identity=USER), None, "success"),
        (Resolution(sasl.Verdict(ok=False, reason="bad password")),
         Outcome("PLAIN", "failure", reason="bad password"), None, "failure"),
        (Resolution(sasl.Verdict(ok=False, reason="locked"), refusal=REFUSED_POLICY),
         Outcome("PLAIN", "failure", reason="locked"), None, "refused_policy"),
        # A name of no account under CRAM-MD5: counted as a not-opted-in account's
        # attempt by the guard, still a failure here.
        (Resolution(sasl.NotFound(reason="unknown user"), refusal=REFUSED_UNKNOWN),
         Outcome("PLAIN", "failure", reason="unknown user"), None, "failure"),
        (Resolution(sasl.Verdict(ok=False, reason="db down", temporary=True)),
         Outcome("PLAIN", "tempfail", reason="db down"), None, "temporary"),
        (Resolution(sasl.Verdict(ok=True, identity=USER)),
         Outcome("PLAIN", "tempfail", reason="address blocked"),
         Refusal("address", "address blocked"), "refused_guard"),
    ],
)
async def test_each_attempt_is_counted_once_in_its_class_with_its_latency(
    resolution: Resolution, outcome: Outcome, guard_refusal: Refusal | None, expected: str
) -> None:
    w = World()
    w.auth.resolution = resolution
    w.guard.refusal = guard_refusal
    before = {r: count("PLAIN", r) for r in metrics.AUTH_RESULTS}
    latencies = observed(expected)
    attempt = w.login().begin(CTX)
    await attempt.resolve(PLAIN)
    await attempt.finish(outcome)
    after = {r: count("PLAIN", r) for r in metrics.AUTH_RESULTS}
    assert {r: after[r] - before[r] for r in after} == {
        r: (1.0 if r == expected else 0.0) for r in metrics.AUTH_RESULTS}
    assert observed(expected) == latencies + 1


async def test_a_mechanism_the_client_made_up_is_not_a_label() -> None:
    """The mechanism comes from the wire: anything unknown is "other", so a client
    cannot create series (nor smuggle an account name into the metrics)."""
    w = World()
    before = count("other", "failure")
    attempt = w.login().begin(CTX)
    await attempt.finish(Outcome("ALICE@EXAMPLE.ORG", "failure", username=""))
    assert count("other", "failure") == before + 1
    assert "ALICE@EXAMPLE.ORG" not in {
        s.labels.get("mechanism") for f in metrics._m.auth_attempts.collect() for s in f.samples}


def _cfg(tmp_path: Path, **server: str) -> Config:
    return Config.model_validate({
        "listeners": [{"name": "s", "address": "127.0.0.1:2525", "tls": "starttls"}],
        "server": server, "base_dir": tmp_path})


def test_an_unknown_user_or_group_is_named(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as e:
        privileges.resolve(_cfg(tmp_path, user="no-such-user-xyz"))
    assert e.value.key == "server.user"
    with pytest.raises(StartupError) as e:
        privileges.resolve(_cfg(tmp_path, user="nobody", group="no-such-group-xyz"))
    assert e.value.key == "server.group"


def test_root_is_not_an_unprivileged_user(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as e:
        privileges.resolve(_cfg(tmp_path, user="root"))
    assert e.value.key == "server.user"


def test_a_group_without_a_user_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="group is set without user"):
        _cfg(tmp_path, group="nogroup")


@pytest.mark.skipif(os.geteuid() != 0, reason="the drop target is resolved only as root")
def test_nobody_resolves_with_its_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # This Python may be one nobody cannot read (test_privileges_python.py tests that).
    monkeypatch.setattr(privileges, "python_paths", list)
    who = privileges.resolve(_cfg(tmp_path, user="nobody"))
    assert who is not None and who.user == "nobody" and who.uid != 0
    assert who.gid in who.groups


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_handing_over_a_tree_follows_no_link(tmp_path: Path) -> None:
    """The user owns the state directory and could plant links in the spool: the
    root start-up must give it what is in the tree, never what a link points to."""
    who = privileges.RunAs("nobody", 65534, 65534, (65534,))
    outside = tmp_path / "outside"
    outside.write_text("root's")
    spool = tmp_path / "spool"
    (spool / "queue").mkdir(parents=True)
    (spool / "queue" / "m.msg").write_text("a message")
    (spool / "queue" / "link").symlink_to(outside)
    (spool / "dirlink").symlink_to(tmp_path)
    os.link(outside, spool / "queue" / "hard")
    privileges._chown_tree(spool, who)
    assert spool.stat().st_uid == (spool / "queue").stat().st_uid == 65534
    assert (spool / "queue" / "m.msg").stat().st_uid == 65534
    assert outside.stat().st_uid == 0  # neither through the symlink nor the hard link
    assert tmp_path.stat().st_uid == 0


@pytest.mark.parametrize(("listen", "loose"), [("127.0.0.1:9465", False), ("[::1]:9465", False),
                                                ("0.0.0.0:9465", True), ("192.0.2.1:9465", True)])
def test_metrics_beyond_loopback_is_named_a_loosening(
    tmp_path: Path, listen: str, loose: bool
) -> None:
    from smtpgate.preflight import loosenings

    cfg = _cfg(tmp_path).model_copy(update={"metrics": MetricsConfig(listen=listen)})
    assert ("metrics.listen" in {p.key for p in loosenings(cfg)}) is loose


def test_a_reload_moves_closes_and_opens_the_endpoint(
    tmp_path: Path,
) -> None:
    from smtpgate.server.reload import changed_keys, merge

    on = _cfg(tmp_path).model_copy(update={"metrics": MetricsConfig(listen="127.0.0.1:9465")})
    moved = on.model_copy(update={"metrics": MetricsConfig(listen="127.0.0.1:9466")})
    off = _cfg(tmp_path)
    assert merge(on, moved).metrics.listen == "127.0.0.1:9466"
    assert merge(on, off).metrics.listen == ""
    opened = merge(off, on)
    assert opened.metrics.listen == "127.0.0.1:9465"  # every process counts in files
    assert "metrics.listen" not in changed_keys(opened, on)


@pytest.mark.skipif(os.geteuid() != 0, reason="the warning is for a start as root")
def test_serving_as_root_without_a_user_is_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="smtpgate"):
        assert privileges.resolve(_cfg(tmp_path)) is None
    assert "server.user: not set: serving as root" in caplog.text


async def test_a_malformed_request_to_metrics_is_one_log_line_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As for the web admin (web/http_socket.py): anyone who reaches /metrics
    must not be able to fill the log with tracebacks."""
    import socket

    from smtpgate.server.metrics_http import MetricsServer, fresh_dir
    from smtpgate.web.http_socket import bind_endpoint
    from tests.unit.test_web_admin import http_status, malformed_lines

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = _cfg(tmp_path).model_copy(
        update={"metrics": MetricsConfig(listen=f"127.0.0.1:{port}")})
    fresh_dir(cfg)
    sock = bind_endpoint(cfg.metrics, "metrics.listen")
    assert sock is not None
    server = await MetricsServer.start(cfg, sock)
    caplog.set_level(logging.DEBUG)
    try:
        assert await http_status(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab") == 400
    finally:
        await server.stop()
    lines = malformed_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("metrics: "), lines


async def _metrics_server(tmp_path: Path) -> tuple[int, Config, MetricsServer]:
    """A metrics endpoint on a free loopback port that answers only
    ``metrics.example.net`` (and loopback names) as Host: its port, config, server."""
    import socket

    from smtpgate.server.metrics_http import fresh_dir
    from smtpgate.web.http_socket import bind_endpoint

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = _cfg(tmp_path).model_copy(update={"metrics": MetricsConfig(
        listen=f"127.0.0.1:{port}", allowed_hosts=["metrics.example.net"])})
    fresh_dir(cfg)
    sock = bind_endpoint(cfg.metrics, "metrics.listen")
    assert sock is not None
    return port, cfg, await MetricsServer.start(cfg, sock)


async def test_metrics_refuse_a_host_of_another_name_dns_rebinding(tmp_path: Path) -> None:
    """Before: any Host was answered, so a page on attacker.example rebound to
    127.0.0.1 read /metrics from a browser on this machine (found with
    ``curl -H 'Host: attacker.example:PORT'``)."""
    import socket

    from tests.unit.test_web_admin import http_status

    port, cfg, server = await _metrics_server(tmp_path)
    try:
        def get(host: str) -> bytes:
            return f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

        assert await http_status(port, get(f"attacker.example:{port}")) == 421
        assert await http_status(port, get("127.0.0.1.attacker.example")) == 421
        for host in (f"127.0.0.1:{port}", "localhost", f"[::1]:{port}", "192.0.2.1",
                     f"{socket.gethostname()}:{port}", "Metrics.Example.NET.", cfg.hostname):
            assert await http_status(port, get(host)) == 200, host
    finally:
        await server.stop()


def test_allowed_hosts_are_names_without_a_port() -> None:
    assert MetricsConfig(listen="", allowed_hosts=[" A.example. "]).allowed_hosts == ["a.example"]
    for bad in ("a.example:80", "http://a.example", ""):
        with pytest.raises(ValidationError):
            MetricsConfig(listen="", allowed_hosts=[bad])


_MULTIPROCESS_SCRIPT = r"""
import os, sys
from pathlib import Path
from smtpgate import metrics
directory = Path(sys.argv[1])
metrics.use_multiprocess(directory)
metrics.rate_limited("messages")
calls = 0
def profile(frame, event, arg):
    global calls
    if event == "c_call" and arg is os.getpid:
        calls += 1
sys.setprofile(profile)
for _ in range(100):
    metrics.rate_limited("messages")
sys.setprofile(None)
print("getpid calls", calls)
child = os.fork()
if child == 0:
    metrics.rate_limited("recipients")  # counted in the child's own file
    os._exit(0)
os.waitpid(child, 0)
print("child", child)
"""


def test_multiprocess_values_follow_a_fork_without_a_getpid_per_count(tmp_path: Path) -> None:
    """prometheus_client asks for the process id on every count to notice a fork;
    ``os.getpid`` made that a system call per count (28 a session). The id is now
    kept up to date at fork, and a forked child still counts into its own file."""
    import subprocess
    import sys

    from prometheus_client.mmap_dict import MmapedDict

    out = subprocess.run([sys.executable, "-c", _MULTIPROCESS_SCRIPT, str(tmp_path)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    lines = dict(line.rsplit(" ", 1) for line in out.splitlines())
    assert int(lines["getpid calls"]) == 0
    files = sorted(p.name for p in tmp_path.glob("counter_*.db"))
    assert f"counter_{lines['child']}.db" in files and len(files) == 2

    def total(name: str, limit: str) -> float:
        d = MmapedDict(str(tmp_path / name))
        try:
            return sum(v for k, v, _ in d.read_all_values() if f'"{limit}"' in k)
        finally:
            d.close()

    child_file = f"counter_{lines['child']}.db"
    parent_file = next(f for f in files if f != child_file)
    assert total(parent_file, "messages") == 101 and total(parent_file, "recipients") == 0
    assert total(child_file, "recipients") == 1 and total(child_file, "messages") == 0


async def test_metrics_answers_say_server_smtpgate_not_the_versions(tmp_path: Path) -> None:
    """/metrics said ``Server: Python/3.11 aiohttp/3.x.y`` (the versions to look
    advisories up for) on every answer, a refused Host and a malformed request
    included; as the web admin, it now says ``Server: smtpgate``."""
    import asyncio


    port, _, server = await _metrics_server(tmp_path)

    async def head(raw: bytes) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        lines = []
        while (line := await reader.readline()) not in (b"\r\n", b""):
            lines.append(line.rstrip(b"\r\n"))
        writer.close()
        return lines

    try:
        for host, path, status in (("localhost", "/metrics", b"200"),
                                   ("localhost", "/nothing", b"404"),
                                   ("attacker.example", "/metrics", b"421")):
            lines = await head(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                               "Connection: close\r\n\r\n".encode())
            assert lines[0].split()[1] == status, lines
            assert [x for x in lines if x.lower().startswith(b"server:")] == [
                b"Server: smtpgate"], lines
        lines = await head(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                           b"Content-Length: 2\r\n\r\nab")
        assert lines[0].split()[1] == b"400", lines
        assert not [x for x in lines if b"aiohttp" in x or b"Python" in x], lines
    finally:
        await server.stop()


def test_the_help_of_refused_connections_names_every_reason() -> None:
    """The scrape's HELP said '(reason: total, per_ip)' while the series carried
    reason="rate" too (limits.connection_rate_per_ip) since that limit came."""
    help_text = metrics._Metrics().connections_refused._documentation
    assert all(reason in help_text for reason in metrics.CONNECTION_REFUSALS), help_text


class _FlakyGuard:
    """A guard state whose reads fail while ``down`` (Redis stopped), as a scrape finds it."""

    def __init__(self) -> None:
        self.down = True

    def active_blocks(self, now: float) -> list[object]:
        from smtpgate.auth.guard_state import GuardStoreError

        if self.down:
            raise GuardStoreError("Redis: Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return []

    def close(self) -> None:
        pass


def test_a_guard_state_outage_is_logged_once_per_episode_not_per_scrape(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """docs/scale-out.md, "Redis down": one line when the outage starts and one
    when it ends. Each scrape (every 15 s from Prometheus) that could not read the
    guard's blocks wrote its own warning: 240 an hour, where the guard logs one."""
    from smtpgate.server.metrics_http import StateCollector

    collector = StateCollector(_cfg(tmp_path))
    guard = _FlakyGuard()
    collector._guard = guard  # type: ignore[assignment]
    caplog.set_level(logging.WARNING, logger="smtpgate.metrics")
    for _ in range(5):
        names = {m.name for m in collector.collect()}
        assert "smtpgate_guard_blocks_active" not in names
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "unavailable" in lines[0] and "Connection refused" in lines[0]
    guard.down = False
    for _ in range(2):
        assert "smtpgate_guard_blocks_active" in {m.name for m in collector.collect()}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "answering again" in lines[1], lines
    assert "5 operation(s) failed meanwhile" in lines[1]


def test_an_auth_refused_before_any_exchange_is_logged_and_counted_apart() -> None:
    """Found by the h27authlog review: AUTH in clear or with a mechanism not offered
    was in no record and no series. It is one ``refused`` record and one
    ``refused_protocol`` count (a mechanism of no known name as "other"), and the
    guard counts nothing: no credential was read."""
    w = World()
    before = {r: count("other", r) for r in metrics.AUTH_RESULTS}
    w.login().refused(CTX, "NOSUCH", "", "mechanism not offered")
    assert w.auth.records == [("", "refused", "mechanism not offered")]
    assert w.guard.calls == []
    after = {r: count("other", r) for r in metrics.AUTH_RESULTS}
    assert {r: after[r] - before[r] for r in after} == {
        r: (1.0 if r == "refused_protocol" else 0.0) for r in metrics.AUTH_RESULTS}
