"""The supervisor, the shared connection limits and reload merging, driven directly
(real forks, tiny child bodies; no server)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.config import parse_config
from smtpgate.server import reload as reloading
from smtpgate.server.limits import SharedConnectionLimiter
from smtpgate.server.logs import IsoFormatter
from smtpgate.server.supervisor import (
    ChildSpec,
    Launch,
    StatusWriter,
    Supervisor,
    describe_status,
)
from smtpgate.tls.certs import write_self_signed
from smtpgate.tls.session import TlsConfigError, make_server_context


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))

    def at(self, level: int) -> list[str]:
        return [m for lvl, m in self.lines if lvl == level]


@pytest.fixture
def records() -> Iterator[Records]:
    logger = logging.getLogger("smtpgate")
    handler = Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def spec(name: str, body: object) -> ChildSpec:
    return ChildSpec(name, "worker", lambda: Launch(body))  # type: ignore[arg-type]


def fails_at_start(status: StatusWriter) -> int:
    raise RuntimeError("account database x: schema version 9 is newer than this smtpgate supports")


def serves_then_dies(status: StatusWriter) -> int:
    status.ready()
    time.sleep(0.05)
    return 7


def test_a_child_failing_at_start_up_ends_the_server_with_one_error(records: Records) -> None:
    def waits(status: StatusWriter) -> int:
        status.ready()
        time.sleep(30)  # stopped by the supervisor's SIGTERM long before
        return 0

    t0 = time.monotonic()
    code = Supervisor([spec("worker 1", waits), spec("worker 2", fails_at_start)]).run()
    assert code == 1
    assert time.monotonic() - t0 < 20  # not the 30 s of the healthy child
    errors = records.at(logging.ERROR)
    assert len(errors) == 1, records.lines
    assert errors[0].startswith("cannot start: worker 2 (pid ")
    assert "exited with status 1: account database x: schema version 9 is newer" in errors[0]
    assert not any("started" in m for _, m in records.lines)


def test_a_child_that_dies_after_serving_is_restarted_then_the_supervisor_gives_up(
    records: Records,
) -> None:
    sup = Supervisor([spec("worker 1", serves_then_dies)], backoff_initial=0.01,
                     backoff_max=0.05, give_up_failures=3, give_up_window=60)
    assert sup.run() == 1
    errors = records.at(logging.ERROR)
    assert sum("worker 1 (pid" in m and "exited with status 7" in m for m in errors) == 3
    assert errors[-1].startswith("giving up: 3 process failures within 60 s")
    infos = records.at(logging.INFO)
    assert infos[0].startswith("started 1 worker processes: ")
    assert sum(m.startswith("restarting worker 1 in ") for m in infos) == 2
    assert sum(m.startswith("worker 1 restarted (pid ") for m in infos) == 2


def test_back_off_doubles_per_consecutive_failure(records: Records) -> None:
    sup = Supervisor([spec("worker 1", serves_then_dies)], backoff_initial=0.1,
                     backoff_max=0.3, give_up_failures=5, give_up_window=60)
    sup.run()
    delays = [m.split(" in ")[1] for m in records.at(logging.INFO) if m.startswith("restarting")]
    assert delays == ["0.1 s", "0.2 s", "0.3 s", "0.3 s"]  # doubling, capped at backoff_max


def test_describe_status() -> None:
    assert describe_status(1 << 8) == "exited with status 1"
    assert describe_status(9) == "killed by signal 9 (SIGKILL)"


# --- shared limits ----------------------------------------------------------------------------


def test_shared_limits_count_every_worker_and_forget_a_dead_one() -> None:
    limiter = SharedConnectionLimiter(max_total=100, max_per_ip=5, workers=2)
    go, done = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker in slot 1 holds three connections from one address
        limiter.attach(1)
        ok = all(limiter.acquire("192.0.2.1") is None for _ in range(3))
        os.write(done, b"1" if ok else b"0")
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(go, 1) == b"1"
        limiter.attach(0)
        assert limiter.acquire("192.0.2.1") is None
        assert limiter.acquire("192.0.2.1") is None
        assert limiter.acquire("192.0.2.1") == "per_ip"  # 3 there + 2 here
        assert limiter.acquire("192.0.2.2") is None  # another address is unaffected
        assert limiter.server_total() == 6
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    limiter.clear(1)  # what the supervisor does when that worker is gone
    assert limiter.server_total() == 3
    assert limiter.acquire("192.0.2.1") is None
    limiter.release("192.0.2.1")
    limiter.release("192.0.2.1")
    limiter.release("192.0.2.1")
    assert limiter.server_total() == 1
    limiter.close()


def test_shared_limits_total_and_new_maxima() -> None:
    limiter = SharedConnectionLimiter(max_total=3, max_per_ip=10, workers=2)
    limiter.attach(0)
    assert [limiter.acquire(f"198.51.100.{i}") for i in range(4)] == [None, None, None, "total"]
    limiter.set_limits(4, 10)  # a reload
    assert limiter.acquire("198.51.100.9") is None
    limiter.close()


def test_unattached_shared_limiter_refuses_to_count() -> None:
    limiter = SharedConnectionLimiter(max_total=3, max_per_ip=10, workers=1)
    with pytest.raises(RuntimeError):
        limiter.acquire("192.0.2.1")
    limiter.close()


# --- reload ---------------------------------------------------------------------------------

BASE = """
hostname = "mail.example.org"
[[listeners]]
name = "submission"
address = "127.0.0.1:587"
tls = "starttls"
"""


def _cfg(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "tls").mkdir(exist_ok=True)
    if not (tmp_path / "tls" / "cert.pem").exists():
        write_self_signed(tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem", "mail.example.org")
    path = tmp_path / "smtpgate.toml"
    path.write_text(BASE + extra)
    return path


def test_reload_takes_reloadable_keys_and_names_the_others(tmp_path: Path) -> None:
    path = _cfg(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    _cfg(tmp_path, "[limits]\nmax_connections_per_ip = 7\n[server]\nworkers = 3\n"
                   "[guard]\nlockout_threshold = 4\ndatabase = 'other.sqlite'\n")
    new = reloading.load(path, running)
    assert new.cfg.limits.max_connections_per_ip == 7
    assert new.cfg.guard.lockout_threshold == 4
    assert new.cfg.server.workers == running.server.workers
    assert new.cfg.guard.database == running.guard.database
    assert new.needs_restart == ("guard.database", "server.workers")


def _documented_reload_keys() -> tuple[list[str], list[str], list[str]]:
    """The keys docs/operations.md lists under "Reloaded keys" and "Keys that need a
    restart" (``tls.*`` for a whole table; ``(except `guard.database`)`` left out)."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()

    def bullet(title: str) -> tuple[list[str], list[str]]:
        m = re.search(r"- \*\*" + re.escape(title) + r"\*\*:(.*?)(?=\n- \*\*|\n\n)", page, re.DOTALL)
        assert m, f"docs/operations.md has no bullet **{title}**"
        text = m.group(1).split(". ")[0]
        excepted = re.findall(r"`([a-z_.]+)`", " ".join(re.findall(r"\(except\s([^)]*)\)", text)))
        text = re.sub(r"\(except\s[^)]*\)", "", text)
        return re.findall(r"`([a-z_]+(?:\.[a-z_*]+)?)`", text), excepted

    reloaded, excepted = bullet("Reloaded keys")
    restart, _ = bullet("Keys that need a restart")
    return reloaded, excepted, restart


def _expand(keys: list[str], cfg: object) -> list[str]:
    out = []
    for key in keys:
        table, _, name = key.partition(".")
        if name == "*":
            out += [f"{table}.{f}" for f in type(getattr(cfg, table)).model_fields]
        else:
            out.append(key)
    return out


def _with(cfg: object, key: str, value: object) -> object:
    """``cfg`` with ``key`` (``table.name`` or a top-level name) set, unvalidated."""
    table, _, name = key.partition(".")
    if not name:
        return cfg.model_copy(update={table: value})  # type: ignore[attr-defined]
    inner = getattr(cfg, table).model_copy(update={name: value})
    return cfg.model_copy(update={table: inner})  # type: ignore[attr-defined]


def _get(cfg: object, key: str) -> object:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_reload_takes_the_keys_docs_operations_md_says_it_takes(tmp_path: Path) -> None:
    """Each key the page calls reloadable is taken from the file by a reload; each it
    says needs a restart keeps its running value. `auth.session_recheck` was documented
    as reloaded and was kept ('changed in the file; kept as running until a restart')."""
    running = parse_config(_cfg(tmp_path).read_text(), tmp_path)
    reloaded, excepted, restart = _documented_reload_keys()
    assert "auth.session_recheck" in reloaded and "auth.log_file" in restart
    assert excepted == ["guard.database"]
    for key in [k for k in _expand(reloaded, running) if k not in excepted]:
        changed = object()
        merged = reloading.merge(running, _with(running, key, changed))  # type: ignore[arg-type]
        assert _get(merged, key) is changed, f"{key}: documented as reloaded, kept as running"
    for key in _expand([k for k in restart if "." in k] + excepted, running):
        merged = reloading.merge(running, _with(running, key, object()))  # type: ignore[arg-type]
        assert _get(merged, key) is _get(running, key), f"{key}: documented as needing a restart"


def test_reload_takes_oauth_mechanisms_with_their_issuers(tmp_path: Path) -> None:
    path = _cfg(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    (tmp_path / "jwks.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    _cfg(tmp_path, "[auth]\nmechanisms = ['OAUTHBEARER', 'PLAIN']\n[[auth.oauth_issuers]]\n"
                   "issuer = 'https://id.example'\naudience = ['smtp']\n"
                   "jwks_file = 'jwks.json'\nalgorithms = ['HS256']\n")
    new = reloading.load(path, running)
    assert new.cfg.auth.mechanisms == ["OAUTHBEARER", "PLAIN"]
    assert [i.issuer for i in new.cfg.auth.oauth_issuers] == ["https://id.example"]
    assert new.needs_restart == ()


@pytest.mark.parametrize(
    ("damage", "key"),
    [
        (lambda d: (d / "cert.pem").write_text("junk"), "tls.cert"),
        (lambda d: (d / "key.pem").write_text("junk"), "tls.key"),
        (lambda d: (d / "cert.pem").unlink(), "tls.cert"),
    ],
)
def test_reload_with_a_broken_certificate_names_the_key(tmp_path: Path, damage: object, key: str) -> None:
    path = _cfg(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    damage(tmp_path / "tls")  # type: ignore[operator]
    with pytest.raises(reloading.ReloadError) as e:
        reloading.load(path, running)
    assert e.value.key == key


def test_key_of_another_certificate_names_tls_key(tmp_path: Path) -> None:
    write_self_signed(tmp_path / "a.pem", tmp_path / "a.key", "a.example")
    write_self_signed(tmp_path / "b.pem", tmp_path / "b.key", "b.example")
    with pytest.raises(TlsConfigError) as e:
        make_server_context(tmp_path / "a.pem", tmp_path / "b.key")
    assert e.value.key == "tls.key" and "does not belong" in str(e.value)


def test_log_times_are_iso_8601_with_the_zone() -> None:
    record = logging.LogRecord("smtpgate", logging.INFO, __file__, 1, "x", None, None)
    stamp = IsoFormatter("%(asctime)s").format(record)
    assert len(stamp) == len("2026-03-01T14:03:07.412+01:00")
    assert stamp[10] == "T" and stamp[-6] in "+-" and stamp[-3] == ":"


@pytest.mark.parametrize("fraction", [0.0, 0.0004999, 0.0005, 0.412, 0.9994999, 0.9995,
                                      0.9999994, 0.9999996])
def test_log_times_match_datetime_to_the_millisecond_also_at_second_edges(
    fraction: float,
) -> None:
    # The second is cached (logs.py); the stamp must still be datetime's own.
    for whole in (1_764_590_400, 1_801_463_896, int(time.time())):
        record = logging.LogRecord("smtpgate", logging.INFO, __file__, 1, "x", None, None)
        record.created = whole + fraction
        expected = dt.datetime.fromtimestamp(record.created).astimezone().isoformat(
            timespec="milliseconds")
        assert IsoFormatter("%(asctime)s").format(record) == expected


def test_server_log_records_do_not_walk_the_stack_for_their_caller() -> None:
    from smtpgate.server.logs import setup_logging

    saved = (logging._srcfile, logging.logThreads, logging.logMultiprocessing)
    root = logging.getLogger("smtpgate")
    handlers, level, propagate = root.handlers[:], root.level, root.propagate
    seen: list[logging.LogRecord] = []
    try:
        setup_logging()
        root.handlers.append(type("H", (logging.Handler,), {"emit": lambda s, r: seen.append(r)})())
        logging.getLogger("smtpgate.session").info("x %s", 1)
    finally:
        logging._srcfile, logging.logThreads, logging.logMultiprocessing = saved
        root.handlers[:], root.propagate = handlers, propagate
        root.setLevel(level)
    # No caller looked up (the stack walk is the costly part), the format needs none.
    assert seen[0].lineno == 0 and seen[0].getMessage() == "x 1"


def test_server_log_file_is_created_0640_and_keeps_an_existing_mode(tmp_path: Path) -> None:
    # Its lines name accounts and client addresses: not for every local user.
    from smtpgate.server.logs import ReopenableFileHandler

    old_umask = os.umask(0o022)
    try:
        made = ReopenableFileHandler(tmp_path / "new.log", mode="a", encoding="utf-8")
        (tmp_path / "kept.log").touch(mode=0o600)
        kept = ReopenableFileHandler(tmp_path / "kept.log", mode="a", encoding="utf-8")
        made.reopen()
    finally:
        os.umask(old_umask)
    made.close()
    kept.close()
    assert (tmp_path / "new.log").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "kept.log").stat().st_mode & 0o777 == 0o600


def test_a_child_whose_event_loop_is_stuck_is_killed_and_restarted(
    records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a worker whose loop blocked (storage that hangs, a bug that never
    yields) kept its share of connections unanswered for ever; the parent saw it
    alive, and so did systemd's watchdog, which the parent feeds."""
    import asyncio

    from smtpgate.server import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "ALIVE_EVERY", 0.1)

    def stuck_after_a_while(status: StatusWriter) -> int:
        async def main() -> None:
            status.ready()
            await asyncio.sleep(0.6)  # alive lines every 0.1 s meanwhile
            time.sleep(30)  # noqa: ASYNC251 - the point: the loop blocks, no alive lines

        asyncio.run(main())
        return 0

    sup = Supervisor([spec("worker 1", stuck_after_a_while)], backoff_initial=0.01,
                     give_up_failures=2, give_up_window=60, unresponsive_after=1.0)
    t0 = time.monotonic()
    assert sup.run() == 1  # killed twice: given up, as after any two deaths
    assert time.monotonic() - t0 < 15  # not the 30 s of the blocked sleep
    errors = records.at(logging.ERROR)
    killed = [m for m in errors if "killed by signal 9" in m]
    assert len(killed) == 2, records.lines
    assert re.search(r"unresponsive: its event loop said nothing for \d+ s "
                     r"\(server\.worker_watchdog\)", killed[0]), killed
    assert sum(m.startswith("worker 1 restarted (pid ") for m in records.at(logging.INFO)) == 1


def test_a_child_that_keeps_saying_alive_is_left_alone(
    records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from smtpgate.server import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "ALIVE_EVERY", 0.1)

    def serves(status: StatusWriter) -> int:
        async def main() -> None:
            status.ready()
            await asyncio.sleep(2.0)  # twice the watchdog's limit, loop running

        asyncio.run(main())
        return 3

    sup = Supervisor([spec("worker 1", serves)], give_up_failures=1, unresponsive_after=1.0)
    assert sup.run() == 1
    errors = records.at(logging.ERROR)
    assert any("exited with status 3" in m for m in errors), records.lines
    assert not any("unresponsive" in m for m in errors), records.lines


def test_a_dead_child_waiting_for_its_restart_is_listed_as_down() -> None:
    """`processes` lists running children only: a worker killed and waiting out its
    back-off vanished from ``smtpgate status`` (exit 0, the other worker alone on
    screen), as if the server never had it. ``down`` names it, how it ended and when
    it comes back, and the status file is written at once (a tick right after the
    death, not at the next interval)."""
    seen: list[list[tuple[str, float, float, str]]] = []
    sup: Supervisor

    def tick() -> None:
        seen.append(sup.down())

    sup = Supervisor([spec("worker 1", serves_then_dies)], backoff_initial=0.5,
                     backoff_max=0.5, give_up_failures=2, give_up_window=60,
                     on_tick=tick, tick_every=60)
    before = time.time()
    assert sup.run() == 1
    down = [d for d in seen if d]
    assert down, seen
    name, ended, restart_at, how = down[0][0]
    assert name == "worker 1" and how == "exited with status 7"
    assert before <= ended <= time.time()
    assert restart_at == pytest.approx(ended + 0.5, abs=0.05)
    assert sup.down() == []  # it gave up: nothing waits for a restart


def test_a_child_whose_event_loop_is_stuck_is_said_silent_before_the_watchdog_kills_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Until ``server.worker_watchdog`` (60 s) killed it, a stuck worker was listed as
    any other: ``smtpgate status`` showed it running, exit 0, while it answered no
    connection. `processes` now gives how long it has been silent."""
    import asyncio

    from smtpgate.server import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "ALIVE_EVERY", 0.1)

    def stuck_after_a_while(status: StatusWriter) -> int:
        async def main() -> None:
            status.ready()
            await asyncio.sleep(0.3)
            time.sleep(30)  # noqa: ASYNC251 - the point: the loop blocks, no alive lines

        asyncio.run(main())
        return 0

    silences: list[float] = []
    sup: Supervisor

    def tick() -> None:
        silences.extend(p[4] for p in sup.processes())

    sup = Supervisor([spec("worker 1", stuck_after_a_while)], give_up_failures=1,
                     unresponsive_after=3.0, on_tick=tick, tick_every=0.2)
    assert sup.run() == 1  # killed by the watchdog: given up
    assert max(silences) >= 1.0, silences


def test_reload_done_says_how_many_children_failed_and_why() -> None:
    """The parent's own reload (as root) went through while the workers' (as
    ``server.user``, who could not read the key) failed; `smtpgate reload` read only
    the parent's outcome and said "reloaded". The supervisor now reports the
    children's answers once all are in."""
    import signal
    import threading

    def answers(ok: bool) -> object:
        def body(status: StatusWriter) -> int:
            signal.signal(signal.SIGHUP, lambda *_: status.reloaded(
                ok, "" if ok else "tls.key: permission denied: user nobody cannot read k.pem"))
            status.ready()
            while True:
                time.sleep(0.1)
        return body

    done: list[tuple[int, str]] = []

    def on_done(failed: int, why: str) -> None:
        done.append((failed, why))
        os.kill(os.getpid(), signal.SIGTERM)

    sup = Supervisor([spec("worker 1", answers(True)), spec("worker 2", answers(False)),
                      spec("worker 3", answers(False))], on_reload_done=on_done)

    def reload_once_ready() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not sup._running:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGHUP)

    threading.Thread(target=reload_once_ready, daemon=True).start()
    assert sup.run() == 0
    assert done == [(2, "tls.key: permission denied: user nobody cannot read k.pem")]
