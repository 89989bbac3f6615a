"""The parent of several worker processes: start them, watch them, restart them.

The parent runs no event loop and no threads (so forking a replacement at any
time is safe); it waits in ``select`` on one self-pipe for signals and one
status pipe per child. A child writes one line per event on its pipe:

- ``ready``: its listeners are bound and its stores open. ``started N worker
  processes`` is logged only when every child has said this.
- ``reloaded ok`` / ``reloaded failed [why]``: it has handled a forwarded SIGHUP or
  SIGUSR1. When every child has answered, the parent logs that the reload is
  complete and tells ``on_reload_done`` how many failed, and the first why.
- ``serving <what> <url>``: it now serves ``what`` (``admin``, ``metrics``) at
  ``url`` (``-``: nowhere), at start-up and after a reload moved, opened or closed
  it, or could not (``on_serving``: ``smtpgate status`` shows what is served, not
  what the config asks for).
- ``fatal <one line>``: the error that is ending it. The parent logs it with
  the exit status, so a worker's death always names its cause.
- ``alive``: every ``ALIVE_EVERY`` seconds (more often for a short limit) from
  the child's event loop once it is ready. A child whose loop is stuck (a blocking call on storage that hangs,
  a bug that never yields) still holds its listeners' share of connections and
  answers none of them; it cannot see that itself, and neither can systemd's
  watchdog, which the parent feeds. So the parent kills (SIGKILL) a ready child
  that has said nothing for ``unresponsive_after`` seconds
  (``server.worker_watchdog``) and restarts it as after any death.

A child that fails before the first start-up completed ends the server at
once: it would fail the same way again. The exit status is 2 when the child's
error was a `smtpgate.errors.StartupError` (a config key at fault; the child
exits 2 to say so), 1 otherwise. A child that dies after that
is logged and restarted after a back-off that doubles per consecutive failure
of its slot; after ``give_up_failures`` deaths within ``give_up_window`` seconds
the parent stops everything and exits 1, so a service manager sees a failure
instead of a server that keeps half-starting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from smtpgate.errors import StartupError
from smtpgate.server import logs, systemd

log = logging.getLogger("smtpgate")

#: ``serve`` exit codes (docs/operations.md).
EXIT_OK = 0
EXIT_STARTUP = 1
EXIT_GAVE_UP = 1  # the same "error" status; the log says which
#: A `StartupError`: the config key the log names must change; restarting as it is
#: will not help (the contrib unit's RestartPreventExitStatus=2).
EXIT_CONFIG = 2

_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)
#: Seconds between a ready child's ``alive`` lines.
ALIVE_EVERY = 5.0


class StatusWriter:
    """The child's end of its status pipe. Writes are best effort: a parent that
    is gone cannot be told anything, and the child dies with it anyway."""

    def __init__(self, fd: int, alive_every: float | None = ALIVE_EVERY) -> None:
        self._fd = fd
        self.was_ready = False
        #: Seconds between ``alive`` lines; None: none (no watchdog to feed).
        self._alive_every = alive_every
        # A parent that reads nothing (stuck itself) must not stop the child's
        # loop on a full pipe: a line that does not fit is dropped.
        os.set_blocking(fd, False)
        self._alive: asyncio.TimerHandle | None = None

    def _send(self, line: str) -> None:
        data = (line.replace("\n", " ")[:3000] + "\n").encode("utf-8", "replace")
        try:
            os.write(self._fd, data)
        except OSError:
            pass

    def ready(self) -> None:
        """Called from the child's running event loop: from here on that loop says
        ``alive`` every ``ALIVE_EVERY`` seconds (the module docstring)."""
        self.was_ready = True
        self._send("ready")
        if self._alive is None and self._alive_every is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a test's child): nothing to watch
            self._alive = loop.call_later(self._alive_every, self._say_alive, loop)

    def _say_alive(self, loop: asyncio.AbstractEventLoop) -> None:
        self._send("alive")
        assert self._alive_every is not None
        self._alive = loop.call_later(self._alive_every, self._say_alive, loop)

    def reloaded(self, ok: bool, why: str = "") -> None:
        self._send("reloaded ok" if ok else f"reloaded failed {why}".rstrip())

    def serving(self, what: str, url: str) -> None:
        self._send(f"serving {what} {url or '-'}")

    def fatal(self, line: str) -> None:
        self._send("fatal " + line)


#: Runs in the child; returns its exit code. Raising ends the child with its
#: error sent as the fatal line.
Body = Callable[[StatusWriter], int]


@dataclass
class Launch:
    """What ``ChildSpec.prepare`` made in the parent for one start of a child."""

    body: Body
    #: Called in the parent right after the fork (e.g. to close the child's sockets).
    after_fork: Callable[[], None] = lambda: None


@dataclass
class ChildSpec:
    """One slot the supervisor keeps filled: ``worker 1``, ``delivery``."""

    name: str
    kind: str  # "worker" or "delivery": how the start-up line counts it
    #: Called in the parent before each fork. Raises OSError or StartupError (e.g. a
    #: bind failed); the slot then counts as failed to start.
    prepare: Callable[[], Launch]
    #: Called in the parent after the child in this slot exited.
    on_exit: Callable[[], None] = lambda: None


@dataclass
class _Child:
    spec: ChildSpec
    pid: int
    fd: int
    started: float
    generation: int
    ready: bool = False
    ready_at: float = 0.0
    #: When it last said anything on its pipe (``alive`` and the rest).
    heard_at: float = 0.0
    fatal: str = ""
    buf: bytes = b""
    eof: bool = False


@dataclass
class Supervisor:
    """See the module docstring. ``on_reload(sig)`` runs in the parent on SIGHUP
    (full reload) or SIGUSR1 (reopen logs) and returns the signal to forward to
    the children, or None to forward nothing."""

    specs: list[ChildSpec]
    on_reload: Callable[[int], int | None] = lambda sig: sig
    startup_timeout: float = 60.0
    stop_timeout: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    give_up_failures: int = 5
    give_up_window: float = 60.0
    clock: Callable[[], float] = time.monotonic
    #: Called every ``tick_every`` seconds and when a child becomes ready (the
    #: status file is written from here).
    on_tick: Callable[[], None] = lambda: None
    tick_every: float = 2.0
    #: Called with the pid of each child that exited (its metrics files: metrics_http).
    on_reaped: Callable[[int], None] = lambda pid: None
    #: Seconds a ready child may say nothing before it is killed as stuck; 0: never.
    unresponsive_after: float = 0.0
    #: Called with what a child serves where ("admin", URL; "" for nowhere).
    on_serving: Callable[[str, str], None] = lambda what, url: None
    #: Called when every child has answered a forwarded SIGHUP: how many failed, and
    #: the first one's why ("" if none said). The parent's own reload went through:
    #: ``smtpgate reload`` must hear that the serving processes did not.
    on_reload_done: Callable[[int, str], None] = lambda failed, why: None

    _children: dict[int, _Child] = field(default_factory=dict)
    _restart_at: dict[str, float] = field(default_factory=dict)
    #: Why each slot waiting in ``_restart_at`` is empty: when its child ended (this
    #: clock) and how, for ``down`` (the status file).
    _ended: dict[str, tuple[float, str]] = field(default_factory=dict)
    _consecutive: dict[str, int] = field(default_factory=dict)
    _failures: deque[float] = field(default_factory=deque)
    _running: bool = False  # the first start-up completed
    _stopping: bool = False
    _stop_deadline: float | None = None
    _code: int = EXIT_OK
    _generation: int = 0  # reloads forwarded so far
    _last_forward: int | None = None
    _reload_waiting: set[int] = field(default_factory=set)
    _reload_failed: int = 0
    _reload_why: str = ""
    _sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    _wake_r: int = -1
    _wake_w: int = -1
    #: systemd's watchdog: seconds between pings, and when the next is due.
    _watchdog_every: float | None = None
    _watchdog_at: float = 0.0
    _tick_at: float = 0.0

    # --- the loop -------------------------------------------------------------------

    def run(self) -> int:
        """Start every child, supervise until stopped; returns the exit code."""
        self._install_signals()
        self._watchdog_every = systemd.watchdog_interval()
        try:
            deadline = self.clock() + self.startup_timeout
            for spec in self.specs:
                if not self._spawn(spec):
                    self._begin_stop(EXIT_STARTUP)
                    break
            while self._children or (not self._stopping and self._restart_at):
                self._wait(self._next_timer(deadline))
                now = self.clock()
                if not self._running and not self._stopping and now >= deadline:
                    late = [c.spec.name for c in self._children.values() if not c.ready]
                    log.error("cannot start: %s not ready within %.0f s",
                              ", ".join(late), self.startup_timeout)
                    self._begin_stop(EXIT_STARTUP)
                self._timers(now)
            if self._code == EXIT_OK:
                log.info("stopped")  # every child is gone; an error exit said why already
            return self._code
        finally:
            self._restore_signals()

    def _next_timer(self, startup_deadline: float) -> float | None:
        times = list(self._restart_at.values())
        if self._watchdog_every is not None:
            times.append(self._watchdog_at)
        times.append(self._tick_at)
        if not self._running and not self._stopping:
            times.append(startup_deadline)
        if self._stop_deadline is not None:
            times.append(self._stop_deadline)
        times += [c.started + self.startup_timeout for c in self._children.values()
                  if self._running and not c.ready and not self._stopping]
        if self.unresponsive_after > 0 and not self._stopping:
            times += [c.heard_at + self.unresponsive_after for c in self._children.values()
                      if c.ready and not c.eof]
        if not times:
            return None
        return max(0.0, min(times) - self.clock())

    def _wait(self, timeout: float | None) -> None:
        for key, _ in self._sel.select(timeout):
            if key.fd == self._wake_r:
                self._signals()
            else:
                child = key.data
                assert isinstance(child, _Child)
                self._read(child)

    def _timers(self, now: float) -> None:
        if self._watchdog_every is not None and now >= self._watchdog_at:
            systemd.watchdog()
            self._watchdog_at = now + self._watchdog_every
        if now >= self._tick_at:
            self._tick_at = now + self.tick_every
            self.on_tick()
        if self._stop_deadline is not None and now >= self._stop_deadline:
            for child in self._children.values():
                log.error("%s (pid %d) did not stop within %.0f s: killing it",
                          child.spec.name, child.pid, self.stop_timeout)
                _kill(child.pid, signal.SIGKILL)
            self._stop_deadline = None
        if self._stopping:
            return
        for child in list(self._children.values()):
            if self._running and not child.ready and now >= child.started + self.startup_timeout:
                child.fatal = child.fatal or f"not ready within {self.startup_timeout:.0f} s"
                _kill(child.pid, signal.SIGKILL)
            elif (self.unresponsive_after > 0 and child.ready and not child.eof
                  and not child.fatal and now >= child.heard_at + self.unresponsive_after):
                child.fatal = (f"unresponsive: its event loop said nothing for "
                               f"{now - child.heard_at:.0f} s (server.worker_watchdog)")
                log.error("%s (pid %d) is %s: killing it", child.spec.name, child.pid,
                          child.fatal)
                _kill(child.pid, signal.SIGKILL)
        for name, when in list(self._restart_at.items()):
            if now >= when:
                del self._restart_at[name]
                spec = next(s for s in self.specs if s.name == name)
                if not self._spawn(spec):
                    self._failed(spec, now)

    # --- children -----------------------------------------------------------------

    def _spawn(self, spec: ChildSpec) -> bool:
        try:
            launch = spec.prepare()
        except (OSError, StartupError) as e:
            log.error("cannot start %s: %s", spec.name, e)
            self._ended[spec.name] = (self.clock(), f"cannot start: {e}")
            return False
        r, w = os.pipe()
        parent = os.getpid()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(r)
            os.close(w)
            launch.after_fork()
            log.error("cannot start %s: fork: %s", spec.name, e)
            self._ended[spec.name] = (self.clock(), f"cannot start: fork: {e}")
            return False
        if pid == 0:  # pragma: no cover - runs in the child (covered by integration tests)
            os.close(r)
            self._in_child(parent, mask)
            _child_main(launch.body, StatusWriter(w, self._alive_every()))
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(w)
        launch.after_fork()
        os.set_blocking(r, False)
        child = _Child(spec, pid, r, self.clock(), self._generation)
        self._children[pid] = child
        self._ended.pop(spec.name, None)
        self._sel.register(r, selectors.EVENT_READ, child)
        log.debug("%s: pid %d", spec.name, pid)
        return True

    def _alive_every(self) -> float | None:
        """How often a child says ``alive``: at least four times within the
        watchdog's limit, and every ``ALIVE_EVERY`` seconds at most."""
        if self.unresponsive_after <= 0:
            return None
        return min(ALIVE_EVERY, self.unresponsive_after / 4)

    def _in_child(self, parent: int, mask: Iterable[int]) -> None:  # pragma: no cover - child
        """Forget the parent's loop: its pipes, its wake-up fd and its handlers. SIGHUP
        and SIGUSR1 are ignored until the child's own loop handles them, so a reload
        that arrives during start-up cannot kill it (it is re-sent once ready)."""
        signal.set_wakeup_fd(-1)
        systemd.forget_in_child()
        logs.end_startup_echo()  # the parent reports a child's failure to start
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
        for fd in (self._wake_r, self._wake_w, *(c.fd for c in self._children.values())):
            os.close(fd)
        self._sel = selectors.DefaultSelector()  # the parent's epoll fd is simply left
        _die_with_parent(parent)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _read(self, child: _Child) -> None:
        while not child.eof:
            try:
                data = os.read(child.fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                child.eof = True
                self._sel.unregister(child.fd)
                return
            child.buf += data
            *lines, child.buf = child.buf.split(b"\n")
            for line in lines:
                self._message(child, line.decode("utf-8", "replace"))

    def processes(self) -> list[tuple[str, int, bool, float, float]]:
        """(name, pid, ready, started as wall-clock time, seconds silent) of each
        running child. Seconds silent is how long a ready child has said nothing past
        twice its ``alive`` interval (0 when it is on time, or with no watchdog):
        a stuck worker stays in the list for up to ``server.worker_watchdog``
        seconds before it is killed, and ``smtpgate status`` says so meanwhile."""
        now = self.clock()
        offset = time.time() - now
        every = self._alive_every()

        def silent(c: _Child) -> float:
            if every is None or not c.ready or c.eof:
                return 0.0
            quiet = now - c.heard_at
            return round(quiet, 1) if quiet > 2 * every else 0.0

        return [(c.spec.name, c.pid, c.ready, c.started + offset, silent(c))
                for c in sorted(self._children.values(), key=lambda c: c.spec.name)]

    def down(self) -> list[tuple[str, float, float, str]]:
        """(name, ended, restart due, both wall-clock times, how it ended) of each
        child that is gone and waits out its back-off: a slot `processes` no longer
        lists, which ``smtpgate status`` must name rather than leave out (a worker
        crash-looping is missing for up to ``backoff_max`` seconds at a time)."""
        offset = time.time() - self.clock()
        out = []
        for name, when in sorted(self._restart_at.items()):
            ended, how = self._ended.get(name, (when, "ended"))
            out.append((name, ended + offset, when + offset, how))
        return out

    def _message(self, child: _Child, line: str) -> None:
        child.heard_at = self.clock()
        if line == "alive":
            return
        if line == "ready":
            child.ready = True
            child.ready_at = self.clock()
            self._tick_at = 0.0  # the status file shows it now
            if not self._running:
                if all(c.ready for c in self._children.values()) and len(self._children) == len(
                    self.specs
                ):
                    self._started()
            else:
                log.info("%s restarted (pid %d)", child.spec.name, child.pid)
            if child.generation < self._generation and self._last_forward is not None:
                _kill(child.pid, self._last_forward)  # a reload it could not see yet
        elif line.startswith("reloaded "):
            if child.pid in self._reload_waiting:
                self._reload_waiting.discard(child.pid)
                if line != "reloaded ok":
                    self._reload_failed += 1
                    self._reload_why = self._reload_why or line[len("reloaded failed "):]
                self._reload_progress()
        elif line.startswith("serving "):
            what, _, url = line[8:].partition(" ")
            self.on_serving(what, "" if url in ("", "-") else url)
        elif line.startswith("fatal "):
            child.fatal = line[6:]

    def _started(self) -> None:
        self._running = True
        workers = [c for c in self._children.values() if c.spec.kind == "worker"]
        others = [c for c in self._children.values() if c.spec.kind != "worker"]
        extra = "".join(f"; {c.spec.name} process: {c.pid}" for c in others)
        log.info("started %d worker processes: %s%s", len(workers),
                 ", ".join(str(c.pid) for c in workers), extra)
        systemd.ready(f"serving with {len(workers)} worker processes")
        logs.end_startup_echo()

    def _reap(self) -> None:
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            child = self._children.pop(pid)
            self._read(child)  # its last words were written before it exited
            if not child.eof:
                self._sel.unregister(child.fd)
            os.close(child.fd)
            child.spec.on_exit()
            self.on_reaped(pid)
            self._exited(child, status)

    def _exited(self, child: _Child, status: int) -> None:
        how = describe_status(status)
        why = f": {child.fatal}" if child.fatal else ""
        name = f"{child.spec.name} (pid {child.pid})"
        if child.pid in self._reload_waiting:
            self._reload_waiting.discard(child.pid)
            self._reload_progress()
        if self._stopping:
            clean = status == 0 or os.waitstatus_to_exitcode(status) in (
                -signal.SIGTERM, -signal.SIGINT)
            if clean:
                log.debug("%s stopped", name)
            elif self._code in (EXIT_STARTUP, EXIT_CONFIG) and not self._running:
                log.debug("%s %s%s", name, how, why)  # the cause was logged once already
            else:
                log.warning("%s %s%s", name, how, why)
            return
        if not self._running:
            log.error("cannot start: %s %s%s", name, how, why)
            config = os.waitstatus_to_exitcode(status) == EXIT_CONFIG
            self._begin_stop(EXIT_CONFIG if config else EXIT_STARTUP)
            return
        log.error("%s %s%s", name, how, why)
        now = self.clock()
        self._ended[child.spec.name] = (now, f"{how}{why}")
        self._tick_at = 0.0  # the status file says it is gone now, not at the next tick
        if child.ready and now - child.ready_at > self.give_up_window:
            self._consecutive.pop(child.spec.name, None)  # it had been fine: no back-off
        self._failed(child.spec, now)

    def _failed(self, spec: ChildSpec, now: float) -> None:
        self._failures.append(now)
        while self._failures and self._failures[0] < now - self.give_up_window:
            self._failures.popleft()
        if len(self._failures) >= self.give_up_failures:
            log.error("giving up: %d process failures within %.0f s; stopping",
                      len(self._failures), self.give_up_window)
            self._begin_stop(EXIT_GAVE_UP)
            return
        n = self._consecutive.get(spec.name, 0)
        self._consecutive[spec.name] = n + 1
        delay = min(self.backoff_max, self.backoff_initial * (2**n))
        log.info("restarting %s in %.1f s", spec.name, delay)
        self._restart_at[spec.name] = now + delay

    # --- signals --------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._old_handlers = {sig: signal.signal(sig, _noop) for sig in _HANDLED}

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _signals(self) -> None:
        try:
            data = os.read(self._wake_r, 512)
        except BlockingIOError:
            return
        for sig in dict.fromkeys(data):  # each kind once, in order of arrival
            if sig == signal.SIGCHLD:
                self._reap()
            elif sig in (signal.SIGTERM, signal.SIGINT):
                if not self._stopping:
                    log.info("%s: stopping", signal.Signals(sig).name)
                self._begin_stop(self._code, sig)
            elif sig in (signal.SIGHUP, signal.SIGUSR1) and not self._stopping:
                self._reload(sig)
        self._reap()  # a SIGCHLD merged with another signal's byte is not lost

    def _begin_stop(self, code: int, sig: int = signal.SIGTERM) -> None:
        if not self._stopping:
            systemd.stopping()
            self._code = code
            self._stopping = True
            self._restart_at.clear()
            self._stop_deadline = self.clock() + self.stop_timeout
        for child in self._children.values():
            _kill(child.pid, sig)

    def _reload(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            systemd.reloading()
        forward = self.on_reload(sig)
        if forward is None:
            if sig == signal.SIGHUP:
                systemd.ready("serving (reload did nothing)")
            return
        self._generation += 1
        self._last_forward = forward
        self._reload_failed = 0
        self._reload_why = ""
        self._reload_waiting = {c.pid for c in self._children.values() if c.ready}
        for pid in self._reload_waiting:
            _kill(pid, forward)
        self._reload_progress()

    def _reload_progress(self) -> None:
        if self._reload_waiting or self._last_forward is None:
            return
        what = "reload" if self._last_forward == signal.SIGHUP else "log reopen"
        systemd.ready(f"serving; {what} done")  # ends a SIGHUP's RELOADING=1
        if self._reload_failed:
            log.warning("%s done; %d processes reported an error (see above)",
                        what, self._reload_failed)
        else:
            log.info("%s complete in every process", what)
        if self._last_forward == signal.SIGHUP:
            self.on_reload_done(self._reload_failed, self._reload_why)


def describe_status(status: int) -> str:
    """``exited with status 1`` or ``killed by signal 9 (SIGKILL)``."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "unknown"
    return f"killed by signal {-code} ({name})"


def _child_main(body: Body, status: StatusWriter) -> None:  # pragma: no cover - child
    """Run ``body`` and leave with ``os._exit``: never return into the parent's
    stack, never run its atexit handlers."""
    code = 1
    try:
        code = body(status)
    except BaseException as e:  # everything ends here, with one line
        if status.was_ready and not isinstance(e, (KeyboardInterrupt, SystemExit)):
            log.exception("unexpected error")
        elif isinstance(e, StartupError):
            code = EXIT_CONFIG
        status.fatal(one_line(e))
    finally:
        logging.shutdown()
        os._exit(code)


def one_line(e: BaseException) -> str:
    text = str(e).strip().replace("\n", " ")
    return text or type(e).__name__


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _noop(signum: int, frame: object) -> None:
    """Python-level handler so that the C handler writes the signal to the wake-up fd."""


def _die_with_parent(parent: int) -> None:  # pragma: no cover - child
    """A child must not outlive a parent killed with SIGKILL: it would keep the
    listening sockets and the restarted server could not bind them (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)
