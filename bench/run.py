#!/usr/bin/env python3
"""Side-by-side throughput benchmark: smtpgate against reference submission servers.

Why this exists: a messages/s figure for smtpgate on its own says little, because it
depends on the machine, its load, the certificate, the client and the Python build. What
we can defend is a *ratio* to a known peer measured in the same run, on the same machine,
with the same certificate and the same load generator. This script produces that ratio:

* it sets up a throw-away smtpgate (``smtpgate init --no-demo`` in a temp dir, optional
  ``[server] workers = N``, one account added with ``smtpgate user add --password-stdin``)
  and starts ``smtpgate serve``;
* it starts the reference peer ``ref_aiosmtpd.py`` (aiosmtpd, STARTTLS + AUTH required,
  Argon2id behind a credential cache, each message fsynced to a spool) with smtpgate's own
  certificate and key;
* optionally it includes an already running Postfix+Dovecot submission service
  (``--postfix HOST:PORT ...``); this script never installs or starts Postfix;
* it runs the shared load generator (``loadgen.py``) for three workloads against every
  target, interleaved (A smtpgate, A aiosmtpd, [A postfix], B smtpgate, ...), ``--repeat``
  times, and reports the median figure, the ratios and p50/p99 message latency;
* it writes every raw loadgen JSON line plus the machine context (nproc, load average,
  Python, workers) to ``bench/results/<timestamp>.json`` and stops every process it
  started, also on Ctrl-C or an error.

All traffic stays on 127.0.0.1; every loadgen run is bounded by its counts and by
``--max-seconds 120``.

Usage::

    .venv/bin/python bench/run.py            # full run
    .venv/bin/python bench/run.py --quick    # smoke run with small counts
    .venv/bin/python bench/run.py --repeat 3 --workers 1 --uvloop
    .venv/bin/python bench/run.py --postfix 127.0.0.1:10587 --postfix-user alice@test.local \\
        --postfix-password Alice-Pass-123 --postfix-ca /path/to/postfix/cert.pem
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))
from bench import bounds

DEFAULT_LOADGEN = Path("/work/shared/bench/loadgen.py")
DEFAULT_REF_SERVER = Path("/work/shared/bench/ref_aiosmtpd.py")
LOOPBACK = "127.0.0.1"
# loadgen writes "From: loadgen@test.local": using that account keeps smtpgate's
# default sender-ownership policy satisfied without loosening it.
BENCH_USER = "loadgen@test.local"
LOADGEN_MAX_SECONDS = 120
LOADGEN_SESSION_TIMEOUT = 60
#: Owner's logins per side in E: with 100 the p99 was the single worst login, which one
#: scheduler stall on this shared machine decided (bench/README.md, E).
E_LOGINS = 500
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0  # smtpgate's default shutdown_grace is 10 s

Metric = Literal["messages_per_s", "sessions_per_s"]


class HarnessError(Exception):
    """A set-up step failed; the message says which and why."""


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    sessions: int
    concurrency: int
    messages: int
    metric: Metric

    @property
    def unit(self) -> str:
        return "msg/s" if self.metric == "messages_per_s" else "sess/s"


FULL_WORKLOADS = (
    Workload("A", "1 session x 500 msgs", 1, 1, 500, "messages_per_s"),
    Workload("B", "10 sessions x 100 msgs, c=10", 10, 10, 100, "messages_per_s"),
    Workload("C", "300 sessions x 1 msg, c=20", 300, 20, 1, "sessions_per_s"),
)
QUICK_WORKLOADS = (
    Workload("A", "1 session x 100 msgs", 1, 1, 100, "messages_per_s"),
    Workload("B", "3 sessions x 20 msgs, c=3", 3, 3, 20, "messages_per_s"),
    Workload("C", "60 sessions x 1 msg, c=20", 60, 20, 1, "sessions_per_s"),
)
WARMUP = Workload("warmup", "warm-up (not reported)", 8, 4, 2, "messages_per_s")


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    user: str
    password: str
    cafile: Path
    #: The server's first processes: their process trees' CPU is measured per run.
    pids: tuple[int, ...] = ()
    #: smtpgate's delivery process (its CPU is also shown on its own).
    delivery_pid: int | None = None


@dataclass
class RunRecord:
    workload: str
    target: str
    rep: int
    loadavg_before: tuple[float, float, float]
    command: list[str]
    returncode: int | None
    result: dict[str, Any] | None
    problem: str | None = None
    stderr_tail: str = ""
    #: CPU seconds the target's processes used during the run ('server'; for
    #: smtpgate also 'delivery'), for the "what bounds it" report (bench/bounds.py).
    cpu: dict[str, float] | None = None

    def figure(self, metric: Metric) -> float | None:
        if self.result is None:
            return None
        value = self.result.get(metric)
        return float(value) if isinstance(value, (int, float)) else None

    def latency(self, which: str) -> float | None:
        if self.result is None:
            return None
        msg = self.result.get("message_ms")
        if not isinstance(msg, dict):
            return None
        value = msg.get(which)
        return float(value) if isinstance(value, (int, float)) else None

    def errors(self) -> dict[str, int]:
        if self.result is None:
            return {"harness": 1}
        errs = self.result.get("errors")
        return dict(errs) if isinstance(errs, dict) else {}


# --------------------------------------------------------------------------- processes


@dataclass
class Processes:
    """Every long-running child, each in its own session (process group = its pid), so
    stopping it also reaches processes it forked (smtpgate's workers) and a Ctrl-C in the
    terminal reaches only this script, which then stops them in order."""

    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, label: str, argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children.append((label, proc))
        return proc

    def stop(self, label: str) -> list[str]:
        """Stop the children started as ``label`` (as `stop_all` does)."""
        mine = [c for c in self.children if c[0] == label]
        self.children = [c for c in self.children if c[0] != label]
        return self._stop(mine)

    def stop_all(self) -> list[str]:
        notes = self._stop(self.children)
        self.children = []
        return notes

    @staticmethod
    def _stop(children: list[tuple[str, subprocess.Popen[bytes]]]) -> list[str]:
        notes: list[str] = []
        for label, proc in reversed(children):
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    notes.append(f"{label} (pid {proc.pid}) ignored SIGTERM for {STOP_TIMEOUT} s")
                except ProcessLookupError:
                    pass
            # Whatever is left in its group (forked workers): SIGKILL the group we created.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                notes.append(f"{label} (pid {proc.pid}) did not exit")
        return notes


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def loadavg() -> tuple[float, float, float]:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return (-1.0, -1.0, -1.0)
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]")
    try:
        addr = socket.gethostbyname(host)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot resolve {host!r}: {e}") from None
    if not ipaddress.ip_address(addr).is_loopback:
        raise argparse.ArgumentTypeError(f"{value}: only loopback targets are allowed")
    return host, int(port)


def run_checked(argv: Sequence[str], what: str, stdin: bytes | None = None,
                timeout: float = 120.0) -> str:
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{what}: timed out after {timeout} s") from None
    except OSError as e:
        raise HarnessError(f"{what}: cannot run {argv[0]}: {e}") from None
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise HarnessError(f"{what} failed (exit {proc.returncode}):\n{out.strip()}")
    return out


def set_workers(config_path: Path, workers: int) -> None:
    """Set ``[server] workers`` in the TOML written by ``smtpgate init``, then verify it."""
    text = config_path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    server = data.get("server")
    lines = text.splitlines()
    if isinstance(server, dict) and "workers" in server:
        in_server = False
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith("["):
                in_server = stripped == "[server]"
            elif in_server and stripped.split("=")[0].strip() == "workers":
                lines[i] = f"workers = {workers}"
        text = "\n".join(lines) + "\n"
    elif isinstance(server, dict):
        idx = next(i for i, line in enumerate(lines) if line.strip() == "[server]")
        lines.insert(idx + 1, f"workers = {workers}")
        text = "\n".join(lines) + "\n"
    else:
        text = text.rstrip("\n") + f"\n\n[server]\nworkers = {workers}\n"
    got = tomllib.loads(text).get("server", {}).get("workers")
    if got != workers:
        raise HarnessError(f"could not set [server] workers = {workers} in {config_path}")
    config_path.write_text(text, encoding="utf-8")


def _read_reply(f: Any) -> tuple[int, str]:
    lines: list[str] = []
    while True:
        raw = f.readline()
        if not raw:
            raise HarnessError("connection closed while reading a reply")
        line = raw.decode(errors="replace").rstrip("\r\n")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            break
    try:
        code = int(lines[-1][:3])
    except ValueError:
        raise HarnessError(f"malformed reply {lines!r}") from None
    return code, "\n".join(lines)


def wait_for_banner(host: str, port: int, proc: subprocess.Popen[bytes] | None,
                    log: Path | None, what: str, timeout: float = STARTUP_TIMEOUT) -> str:
    """Poll until ``host:port`` answers with a 220 banner (or the process dies)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            detail = tail(log, 40) if log else ""
            raise HarnessError(f"{what} exited with status {proc.returncode} before serving:\n"
                               f"{detail}")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(5)
                with s.makefile("rb") as f:
                    code, text = _read_reply(f)
            if code == 220:
                return text
            last = f"banner {text!r}"
        except (OSError, HarnessError) as e:
            last = str(e)
        time.sleep(0.2)
    raise HarnessError(f"{what} did not answer on {host}:{port} within {timeout} s ({last})")


def probe_tls(target: Target) -> dict[str, Any]:
    """EHLO, STARTTLS (verifying the certificate like loadgen: SNI 'localhost', --cafile)
    and EHLO again; returns the banner, TLS version and certificate facts."""
    ctx = ssl.create_default_context(cafile=str(target.cafile))
    with socket.create_connection((target.host, target.port), timeout=10) as raw:
        raw.settimeout(10)
        f = raw.makefile("rb")
        code, banner = _read_reply(f)
        if code != 220:
            raise HarnessError(f"{target.name}: banner {banner!r}")
        raw.sendall(b"EHLO bench.test\r\n")
        code, ehlo = _read_reply(f)
        if code != 250 or "STARTTLS" not in ehlo.upper():
            raise HarnessError(f"{target.name}: EHLO does not offer STARTTLS: {ehlo!r}")
        raw.sendall(b"STARTTLS\r\n")
        code, text = _read_reply(f)
        if code != 220:
            raise HarnessError(f"{target.name}: STARTTLS -> {text!r}")
        f.close()
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tf = tls.makefile("rb")
            tls.sendall(b"EHLO bench.test\r\n")
            code, ehlo2 = _read_reply(tf)
            auth = [ln for ln in ehlo2.splitlines() if ln[4:].upper().startswith("AUTH")]
            der = tls.getpeercert(binary_form=True) or b""
            info: dict[str, Any] = {
                "banner": banner,
                "tls_version": tls.version(),
                "cipher": (tls.cipher() or ("?",))[0],
                "auth_line": auth[0][4:] if auth else None,
                "cert_sha256": hashlib.sha256(der).hexdigest(),
                "cert_key": describe_key(der),
            }
            tls.sendall(b"QUIT\r\n")
            tf.close()
    if not info["auth_line"] or "PLAIN" not in str(info["auth_line"]).upper():
        raise HarnessError(f"{target.name}: AUTH PLAIN not offered after STARTTLS: {ehlo2!r}")
    return info


def describe_key(der: bytes) -> str:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
    except ImportError:
        return "unknown (cryptography not importable)"
    key = x509.load_der_x509_certificate(der).public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    return type(key).__name__


def git_state() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    state = rev.stdout.strip() or "unknown"
    return state + ("+dirty" if dirty.stdout.strip() else "")


def count_files(directory: Path, suffix: str = "") -> int:
    try:
        return sum(1 for p in directory.rglob("*") if p.is_file() and p.name.endswith(suffix))
    except OSError:
        return -1


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Settings:
    python: Path
    smtpgate: Path
    loadgen: Path
    ref_server: Path
    workers: int
    workers_source: str
    repeat: int
    uvloop: bool
    tls12: bool
    quick: bool
    keep_tmp: bool
    results_dir: Path
    postfix: tuple[str, int] | None
    postfix_user: str
    postfix_password: str
    postfix_ca: Path | None
    own_postfix: bool = True
    idle: int = 2000
    extras: bool = True
    skip_abc: bool = False
    ceiling: bool = True


def tool_settings(workers: int, source: str) -> Settings:
    """The settings of a tool that borrows this harness's set-up and loadgen runs
    (`bench/ablation.py`, `bench/instructions.py`): the default tools, ``workers``,
    no Postfix, no extras."""
    return Settings(
        python=default_tool("python"), smtpgate=default_tool("smtpgate"),
        loadgen=DEFAULT_LOADGEN, ref_server=DEFAULT_REF_SERVER, workers=workers,
        workers_source=source, repeat=1, uvloop=False, tls12=False, quick=False,
        keep_tmp=False, results_dir=BENCH_DIR / "results", postfix=None, postfix_user="",
        postfix_password="", postfix_ca=None, own_postfix=False, idle=0, extras=False,
    )


def loadgen_argv(s: Settings, target: Target, w: Workload, max_seconds: int) -> list[str]:
    argv = [
        str(s.python), str(s.loadgen),
        "--host", target.host, "--port", str(target.port), "--mode", "starttls",
        "--sessions", str(w.sessions), "--concurrency", str(w.concurrency),
        "--messages", str(w.messages),
        # One argument: a password that begins with "-" (secrets.token_urlsafe
        # gives one in 32 times) is not taken for an option.
        "--user", target.user, f"--password={target.password}",
        "--cafile", str(target.cafile),
        "--session-timeout", str(LOADGEN_SESSION_TIMEOUT),
        "--max-seconds", str(max_seconds), "--json",
    ]
    if s.uvloop:
        argv.append("--uvloop")
    if s.tls12:
        argv.append("--tls12")
    return argv


def redact(argv: list[str], secret: str) -> list[str]:
    return ["--password=***" if a == f"--password={secret}" else "***" if a == secret else a
            for a in argv]


def run_loadgen(s: Settings, target: Target, w: Workload, rep: int,
                max_seconds: int = LOADGEN_MAX_SECONDS) -> RunRecord:
    argv = loadgen_argv(s, target, w, max_seconds)
    rec = RunRecord(w.key, target.name, rep, loadavg(), redact(argv, target.password), None, None)
    cpu_before = bounds.tree_cpu(*target.pids) if target.pids else None
    ticks_before = bounds.tree_ticks(*target.pids) if target.pids else None
    # Own session: a Ctrl-C reaches only this script, which kills the run in `finally`.
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max_seconds + LOADGEN_SESSION_TIMEOUT + 30)
    except subprocess.TimeoutExpired:
        rec.problem = "loadgen did not finish in time; killed"
        out, err = b"", b""
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    rec.returncode = proc.returncode
    if cpu_before is not None:
        used = bounds.cpu_between(cpu_before, bounds.tree_cpu(*target.pids))
        rec.cpu = {"server": round(sum(used.values()), 6)}
        if ticks_before is not None:
            share = bounds.kernel_share(ticks_before, bounds.tree_ticks(*target.pids))
            if share is not None:
                rec.cpu["kernel_share"] = share
        if target.delivery_pid in used:
            rec.cpu["delivery"] = used[target.delivery_pid]
    rec.stderr_tail = "\n".join(err.decode(errors="replace").splitlines()[-10:])
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
    if lines:
        try:
            parsed = json.loads(lines[-1])
            if isinstance(parsed, dict):
                rec.result = parsed
        except json.JSONDecodeError:
            pass
    if rec.result is None and rec.problem is None:
        rec.problem = f"loadgen exit {proc.returncode}, no JSON: {rec.stderr_tail[-300:]!r}"
    elif rec.result is not None:
        expected = w.sessions * w.messages
        got = rec.result.get("messages_ok")
        if got != expected:
            rec.problem = f"{got}/{expected} messages ok"
    return rec


def median_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 2) if vals else None


def summarise(workloads: Sequence[Workload], targets: Sequence[Target],
              records: list[RunRecord]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for w in workloads:
        row: dict[str, Any] = {"workload": w.key, "title": w.title, "metric": w.metric,
                               "unit": w.unit, "targets": {}}
        for t in targets:
            recs = [r for r in records if r.workload == w.key and r.target == t.name]
            errors: dict[str, int] = {}
            for r in recs:
                for k, v in r.errors().items():
                    errors[k] = errors.get(k, 0) + int(v)
            row["targets"][t.name] = {
                "figure": median_or_none([r.figure(w.metric) for r in recs]),
                "msg_p50_ms": median_or_none([r.latency("p50") for r in recs]),
                "msg_p99_ms": median_or_none([r.latency("p99") for r in recs]),
                "runs": [r.figure(w.metric) for r in recs],
                "errors": errors,
                "problems": [r.problem for r in recs if r.problem],
            }
        sg = row["targets"].get("smtpgate", {}).get("figure")
        for other in ("aiosmtpd", "postfix"):
            of = row["targets"].get(other, {}).get("figure")
            row[f"ratio_smtpgate_{other}"] = round(sg / of, 2) if sg and of else None
        # The ceiling (bench/probes/canned_smtp.py): the most any server could show
        # here, so the best ratio to each peer that this client and machine allow.
        top = row["targets"].get("ceiling", {}).get("figure")
        for name in ("smtpgate", "aiosmtpd", "postfix"):
            f = row["targets"].get(name, {}).get("figure")
            row[f"share_of_ceiling_{name}"] = round(f / top, 2) if f and top else None
        for other in ("aiosmtpd", "postfix"):
            of = row["targets"].get(other, {}).get("figure")
            row[f"ceiling_ratio_{other}"] = round(top / of, 2) if top and of else None
        rows.append(row)
    return rows


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _figure_cell(cell: dict[str, Any]) -> str:
    """The median figure; a trailing '!' marks a target with errors or missing messages."""
    flagged = bool(cell["errors"] or cell["problems"])
    return _fmt(cell["figure"]) + (" !" if flagged else "")


def render_table(rows: list[dict[str, Any]], target_names: Sequence[str]) -> str:
    has_pf = "postfix" in target_names
    has_top = "ceiling" in target_names
    head = ["workload", "unit", "smtpgate", "aiosmtpd"] + (["postfix"] if has_pf else [])
    head += ["sg/aio"] + (["sg/pf"] if has_pf else [])
    if has_top:
        head += ["ceiling", "ceil/aio"] + (["ceil/pf"] if has_pf else []) + ["sg/ceil"]
    head += [f"{n} p50/p99 ms" for n in target_names]
    body: list[list[str]] = []
    for row in rows:
        t = row["targets"]
        line = [f"{row['workload']}: {row['title']}", row["unit"]]
        line += [_figure_cell(t[n]) for n in ("smtpgate", "aiosmtpd")]
        if has_pf:
            line.append(_figure_cell(t["postfix"]))
        line.append(_fmt(row["ratio_smtpgate_aiosmtpd"], ".2f"))
        if has_pf:
            line.append(_fmt(row["ratio_smtpgate_postfix"], ".2f"))
        if has_top:
            line += [_figure_cell(t["ceiling"]), _fmt(row["ceiling_ratio_aiosmtpd"], ".2f")]
            if has_pf:
                line.append(_fmt(row["ceiling_ratio_postfix"], ".2f"))
            line.append(_fmt(row["share_of_ceiling_smtpgate"], ".2f"))
        line += [f"{_fmt(t[n]['msg_p50_ms'], '.2f')} / {_fmt(t[n]['msg_p99_ms'], '.2f')}"
                 for n in target_names]
        body.append(line)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def fmt_line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(wd) for c, wd in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (wd + 2) for wd in widths) + "|"
    return "\n".join([fmt_line(head), sep, *(fmt_line(b) for b in body)])


def setup_smtpgate(s: Settings, tmp: Path, procs: Processes, password: str, *,
                   workers: int | None = None, name: str = "sg",
                   label: str = "smtpgate serve",
                   extra_config: str = "", launcher: Sequence[str] = (),
                   startup_timeout: float = STARTUP_TIMEOUT) -> tuple[Target, Path, Path]:
    """A default install in ``tmp/name`` with ``workers`` (default: ``--workers``),
    started as ``label``; ``extra_config``: TOML tables added to its config;
    ``launcher``: a command that runs ``smtpgate serve`` (a profiler)."""
    sg_dir = tmp / name
    sub_port, subs_port = free_port(), free_port()
    while subs_port == sub_port:
        subs_port = free_port()
    # The default install's metrics and web admin, on free ports (init's own may be taken).
    run_checked([str(s.smtpgate), "init", "--dir", str(sg_dir), "--no-demo",
                 "--metrics", f"{LOOPBACK}:{free_port()}", "--admin", f"{LOOPBACK}:{free_port()}",
                 "--submission", f"{LOOPBACK}:{sub_port}",
                 "--submissions", f"{LOOPBACK}:{subs_port}"], "smtpgate init")
    config = sg_dir / "smtpgate.toml"
    set_workers(config, s.workers if workers is None else workers)
    # The workloads send 500+ messages per hour from one account, and workload C
    # keeps 20 sessions open from one address while the previous ones close: lift
    # the hourly sending limits and the per-address connection cap (aiosmtpd has
    # neither; the cap holds for the whole server, and at exactly 20 a client that
    # reconnects before the server has seen its last FIN gets 421), nothing else.
    # Workload D holds `--idle` sessions from one address: both connection caps sit
    # above that (nothing else depends on them here).
    cap = max(100, s.idle + 200)
    with open(config, "a", encoding="utf-8") as f:
        f.write("\n[limits]\nmessages_per_hour = 0\nrecipients_per_hour = 0\n"
                f"max_connections_per_ip = {cap}\nmax_connections = {max(1000, cap)}\n"
                + extra_config)
    run_checked([str(s.smtpgate), "user", "add", BENCH_USER, "--password-stdin",
                 "--config", str(config)], "smtpgate user add", stdin=password.encode())
    log = tmp / ("smtpgate-serve.log" if name == "sg" else f"smtpgate-serve-{name}.log")
    proc = procs.start(label, [*launcher, str(s.smtpgate), "serve", "--config", str(config)],
                       log)
    wait_for_banner(LOOPBACK, sub_port, proc, log, label, startup_timeout)
    cert = sg_dir / "tls" / "cert.pem"
    return Target("smtpgate", LOOPBACK, sub_port, BENCH_USER, password, cert, (proc.pid,)), sg_dir, log


def setup_reference(s: Settings, tmp: Path, procs: Processes, sg_dir: Path,
                    password: str) -> tuple[Target, Path, Path]:
    port = free_port()
    cert, key = sg_dir / "tls" / "cert.pem", sg_dir / "tls" / "key.pem"
    spool = tmp / "ref-spool"
    log = tmp / "ref-aiosmtpd.log"
    proc = procs.start("ref_aiosmtpd.py", [str(s.python), str(s.ref_server), str(port),
                                           str(cert), str(key), BENCH_USER, password,
                                           str(spool)], log)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while "ready" not in tail(log, 5):
        if proc.poll() is not None:
            raise HarnessError(f"ref_aiosmtpd.py exited with status {proc.returncode}:\n"
                               f"{tail(log, 40)}")
        if time.monotonic() > deadline:
            raise HarnessError(f"ref_aiosmtpd.py printed no 'ready' within {STARTUP_TIMEOUT} s")
        time.sleep(0.1)
    wait_for_banner(LOOPBACK, port, proc, log, "ref_aiosmtpd.py")
    return Target("aiosmtpd", LOOPBACK, port, BENCH_USER, password, cert, (proc.pid,)), spool, log


def setup_ceiling(s: Settings, tmp: Path, procs: Processes, sg_dir: Path,
                  password: str) -> Target:
    """The canned server (bench/probes/canned_smtp.py) with the same certificate and
    as many processes as smtpgate has workers: what no server can beat here."""
    port = free_port()
    cert, key = sg_dir / "tls" / "cert.pem", sg_dir / "tls" / "key.pem"
    log = tmp / "ceiling.log"
    proc = procs.start("canned_smtp.py", [str(s.python), str(BENCH_DIR / "probes" /
                                                              "canned_smtp.py"),
                                          str(port), str(cert), str(key),
                                          "--procs", str(max(1, s.workers))], log)
    wait_for_banner(LOOPBACK, port, proc, log, "canned_smtp.py")
    return Target("ceiling", LOOPBACK, port, BENCH_USER, password, cert, (proc.pid,))


#: Postfix's own default (postconf -d default_process_limit); the test fixture uses 50.
POSTFIX_DEFAULT_PROCESS_LIMIT = 100


def raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: workload D holds thousands of sockets
    in this process and in the servers (children inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_own_postfix(sg_dir: Path) -> Any:
    """The test suite's private Postfix+Dovecot (tests/peers/postfix_dovecot.py) on its
    own free ports, one submission service (the suite's "good" one: STARTTLS required,
    AUTH through Dovecot), serving smtpgate's certificate and key, with Postfix's
    default process limit. Needs root and the Debian packages (``make debs``)."""
    if os.geteuid() != 0:
        raise RuntimeError("needs root (Postfix and Dovecot drop to their own users)")
    for tool in ("postfix", "dovecot", "doveadm", "script"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not installed (make debs)")
    if str(REPO_DIR) not in sys.path:
        sys.path.insert(0, str(REPO_DIR))
    from tests.peers.postfix_dovecot import GOOD, make_postfix_dovecot

    pd = make_postfix_dovecot({"bench": GOOD})
    try:
        pf = pd.postfix_dir
        shutil.copyfile(sg_dir / "tls" / "cert.pem", pf / "cert.pem")
        shutil.copyfile(sg_dir / "tls" / "key.pem", pf / "key.pem")
        (pf / "key.pem").chmod(0o600)
        main_cf = pf / "etc" / "main.cf"
        text = main_cf.read_text()
        text = text.replace("default_process_limit = 50",
                            f"default_process_limit = {POSTFIX_DEFAULT_PROCESS_LIMIT}")
        main_cf.write_text(text)
        pd.start()
    except BaseException:
        pd.cleanup()
        raise
    return pd


def postfix_pids(own_pf: Any) -> tuple[int, ...]:
    """Our own Postfix's and Dovecot's master processes (their trees do the work)."""
    if own_pf is None:
        return ()
    pids = []
    for pid_file in (own_pf.postfix_dir / "spool" / "pid" / "master.pid",
                     own_pf.root / "dovecot" / "run" / "master.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int(pid_file.read_text().split()[0]))
    return tuple(pids)


def _pid_of(procs: Processes, label: str) -> int | None:
    return next((p.pid for name, p in procs.children if name == label), None)


def _extra_line(rows: list[list[str]], *cells: Any) -> None:
    rows.append(["-" if c is None else str(c) for c in cells])


def run_extras(s: Settings, sg_dir: Path, procs: Processes, targets: Sequence[Target],
               own_pf: Any, tmp: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Workloads C-TLS, D, E and F (bench/workloads.py); returns figures and a table."""
    if str(REPO_DIR) not in sys.path:
        sys.path.insert(0, str(REPO_DIR))
    from bench import workloads as wl

    by_name = {t.name: t for t in targets}
    sg = by_name["smtpgate"]
    out: dict[str, Any] = {}
    table: list[list[str]] = [["workload", "smtpgate", "aiosmtpd", "postfix / dovecot / ref",
                               "ratio", "target", "met"]]

    # C-TLS: the bare handshake rate, same certificate, as many processes as workers.
    c = next((r for r in rows if r["workload"] == "C"),
             {"targets": {"smtpgate": {"figure": None}}})
    c_work = next(w for w in (QUICK_WORKLOADS if s.quick else FULL_WORKLOADS) if w.key == "C")
    port = free_port()
    log = tmp / "tls-ref.log"
    tls_proc = procs.start("tls_ref.py", [str(s.python), str(BENCH_DIR / "tls_ref.py"),
                                          str(port), str(sg_dir / "tls" / "cert.pem"),
                                          str(sg_dir / "tls" / "key.pem"),
                                          "--procs", str(s.workers)], log)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                break
        except OSError:
            if tls_proc.poll() is not None or time.monotonic() > deadline:
                raise HarnessError(f"tls_ref.py did not start:\n{tail(log)}") from None
            time.sleep(0.1)
    runs = []
    for _ in range(s.repeat):
        runs.append(wl.run_async(lambda: wl.bare_tls(port, sg.cafile, c_work.sessions,
                                                     c_work.concurrency)))
    bare = wl.median_of([r["handshakes_per_s"] for r in runs])
    out["c_tls"] = {"runs": runs, "median_handshakes_per_s": bare,
                    "loadavg_after": loadavg()}
    sg_c = c["targets"]["smtpgate"]["figure"]
    pf_c = c["targets"].get("postfix", {}).get("figure")
    frac = round(sg_c / bare, 2) if sg_c and bare else None
    use_bare = bool(bare and pf_c and bare < 1.2 * pf_c)
    _extra_line(table, "C: sess/s vs bare TLS handshakes/s", sg_c,
                c["targets"].get("aiosmtpd", {}).get("figure"), f"bare TLS {bare}",
                f"sg/bare {frac}", ">= 0.9 of bare if bare < 1.2 x postfix",
                (frac is not None and frac >= 0.9) if use_bare else
                f"n/a (bare >= 1.2 x postfix {pf_c})")
    print(f"  C-TLS bare handshakes/s {bare} (runs {[r['handshakes_per_s'] for r in runs]})",
          flush=True)

    # D: idle authenticated sessions.
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    n = min(s.idle, max(10, soft - 1000))
    out["d"] = {"requested": s.idle, "held_target": n, "nofile_soft": soft}
    for t in [t for t in targets if t.name != "ceiling"]:
        pgid = {"smtpgate": _pid_of(procs, "smtpgate serve"),
                "aiosmtpd": _pid_of(procs, "ref_aiosmtpd.py")}.get(t.name)
        before = loadavg()
        res = wl.run_async(lambda t=t, pgid=pgid: wl.idle_sessions(  # type: ignore[misc]
            t.port, t.cafile, t.user, t.password, n, pgid,
            setup_deadline=30.0 if t.name == "postfix" else 120.0))
        res["loadavg_before"], res["loadavg_after"] = before, loadavg()
        out["d"][t.name] = res
        print(f"  D {t.name:9s} held {res['authenticated']}/{n}, RSS "
              f"{res.get('rss_held_mb', '-')} MB, new client 220 p99 "
              f"{res['new_client_220']['p99_ms']} ms, timeouts "
              f"{res['new_client_220_timeouts']}  load {before[0]}", flush=True)
    # D again with one process (`workers = 1`: no parent, no delivery process of its
    # own), the layout docs/operations.md gives for many idle sessions on little memory.
    one_label = "smtpgate serve (workers = 1)"
    one, _, _ = setup_smtpgate(s, tmp, procs, sg.password, workers=1, name="sg-one",
                               label=one_label)
    before = loadavg()
    one_res = wl.run_async(lambda: wl.idle_sessions(
        one.port, one.cafile, one.user, one.password, n, _pid_of(procs, one_label),
        setup_deadline=120.0))
    one_res["loadavg_before"], one_res["loadavg_after"] = before, loadavg()
    procs.stop(one_label)
    out["d"]["smtpgate_workers_1"] = one_res
    print(f"  D smtpgate (workers = 1) held {one_res['authenticated']}/{n}, RSS "
          f"{one_res.get('rss_held_mb', '-')} MB, new client 220 p99 "
          f"{one_res['new_client_220']['p99_ms']} ms, timeouts "
          f"{one_res['new_client_220_timeouts']}  load {before[0]}", flush=True)
    d = out["d"]
    sgd = d["smtpgate"]
    rss_ok = sgd.get("rss_held_mb") is not None and sgd["rss_held_mb"] <= 300
    p99 = sgd["new_client_220"]["p99_ms"]
    aio = d.get("aiosmtpd", {})
    # The target is at 10,000 sessions: fewer held says nothing about it.
    _extra_line(table, f"D: {n} idle sessions: RSS MB (all processes)",
                sgd.get("rss_held_mb"), aio.get("rss_held_mb"),
                "-", f"held {sgd['authenticated']}/{n}", "<= 300 MB (at 10,000)",
                (rss_ok and sgd["authenticated"] == n) if n >= 10_000
                else f"n/a (run with --idle 10000; {rss_ok and sgd['authenticated'] == n} here)")
    one_ok = one_res.get("rss_held_mb") is not None and one_res["rss_held_mb"] <= 300
    one_p99 = one_res["new_client_220"]["p99_ms"]
    _extra_line(table, f"D: {n} idle sessions, workers = 1: RSS MB (its one process)",
                one_res.get("rss_held_mb"), "-", "-",
                f"held {one_res['authenticated']}/{n}; 220 p99 {one_p99} ms",
                "<= 300 MB (at 10,000)",
                (one_ok and one_res["authenticated"] == n and one_p99 is not None
                 and one_p99 <= 100 and one_res["new_client_220_timeouts"] == 0)
                if n >= 10_000
                else f"n/a (run with --idle 10000; {one_ok and one_res['authenticated'] == n}"
                     " here)")
    _extra_line(table, f"D: {n} idle sessions: PSS MB (shared pages split)",
                sgd.get("pss_held_mb"), aio.get("pss_held_mb"), "-",
                f"{sgd.get('pss_per_1000_sessions_mb')} MB / 1000 sessions", "-", "-")
    pfd = d.get("postfix")
    _extra_line(table, f"D: {n} idle sessions: new client 220 p99 ms", p99,
                d.get("aiosmtpd", {}).get("new_client_220", {}).get("p99_ms"),
                (f"held {pfd['authenticated']}/{n}; 220 p99 {pfd['new_client_220']['p99_ms']}"
                 f", {pfd['new_client_220_timeouts']} of {pfd['new_client_220_tried']} timed out")
                if pfd else None, "-", "<= 100 ms", p99 is not None and p99 <= 100
                and sgd["new_client_220_timeouts"] == 0)

    # E: logins under a wrong-password flood (smtpgate only: the target is self-relative).
    # Each repetition floods from an address in another /24, so that the guard meets a
    # new attacker every time (the account itself remembers the earlier floods, as it
    # would in life); the median of the repetitions' ratios is the figure.
    e_runs: list[dict[str, Any]] = []
    for rep in range(s.repeat):
        before = loadavg()
        source = f"127.0.{rep + 1}.9"
        e = wl.run_async(lambda source=source: wl.login_under_flood(  # type: ignore[misc]
            sg.port, sg.cafile, sg.user, sg.password, 15 if s.quick else E_LOGINS,
            source=source))
        e["loadavg_before"], e["loadavg_after"] = before, loadavg()
        e_runs.append(e)
        print(f"  E rep {rep + 1}/{s.repeat} flooded/unloaded login p99 "
              f"{e['flooded_login']['p99_ms']} / {e['unloaded_login']['p99_ms']} ms (ratio "
              f"{e['p99_ratio_flooded_unloaded']}), failures {e['flooded_failures']}, flood "
              f"from {source} {e['flood']}  load {before[0]}", flush=True)
    ratios = [e["p99_ratio_flooded_unloaded"] for e in e_runs]
    ratio = wl.median_of(list(ratios))
    out["e"] = {"runs": e_runs, "median_p99_ratio": ratio}
    answered = sum(v for e in e_runs for k, v in e["flood"].items() if k.startswith("auth_"))
    _extra_line(table, "E: login p99 ms flooded / unloaded (median ratio)",
                "; ".join(f"{e['flooded_login']['p99_ms']} / {e['unloaded_login']['p99_ms']}"
                          for e in e_runs), "-",
                f"ratios {ratios}; wrong passwords answered: {answered}",
                ratio, "<= 2.0",
                ratio is not None and ratio <= 2.0
                and not any(e["flooded_failures"] for e in e_runs))

    # F: SCRAM-SHA-256 verifications per CPU-second.
    count = 2000 if s.quick else 10000
    sg_runs, dc_runs = [], []
    sock = master = None
    if own_pf is not None:
        sock = own_pf.root / "dovecot" / "auth-postfix"
        pid_text = (own_pf.root / "dovecot" / "run" / "master.pid").read_text().split()
        master = int(pid_text[0]) if pid_text else None
    from tests.peers.postfix_dovecot import SCRAM_PASSWORD, SCRAM_USER
    for _ in range(s.repeat):
        sg_runs.append(wl.scram_inprocess(count))
        if sock is not None and master is not None:
            dc_runs.append(wl.run_async(lambda: wl.scram_dovecot(
                sock, master, SCRAM_USER, SCRAM_PASSWORD, None, count)))
    sg_f = wl.median_of([r["per_cpu_second"] for r in sg_runs])
    dc_f = wl.median_of([r["per_cpu_second"] for r in dc_runs]) if dc_runs else None
    out["f"] = {"smtpgate": sg_runs, "dovecot": dc_runs, "smtpgate_median": sg_f,
                "dovecot_median": dc_f, "loadavg_after": loadavg()}
    _extra_line(table, "F: SCRAM-SHA-256 verifications / CPU-s", sg_f, "-",
                f"dovecot {dc_f}" + (f" (wall {wl.median_of([r['wall_per_second'] for r in dc_runs])}/s)"
                                     if dc_runs else ""),
                round(sg_f / dc_f, 2) if sg_f and dc_f else None, ">= 5000",
                sg_f is not None and sg_f >= 5000)
    print(f"  F smtpgate {sg_f}/CPU-s, dovecot {dc_f}/CPU-s", flush=True)

    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["| " + " | ".join(cell.ljust(wd) for cell, wd in zip(r, widths, strict=True))
             + " |" for r in table]
    lines.insert(1, "|" + "|".join("-" * (wd + 2) for wd in widths) + "|")
    out["table"] = "\n".join(lines)
    return out


def log_problems(log: Path, limit: int = 10) -> list[str]:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    bad = [ln for ln in text.splitlines()
           if any(k in ln for k in (" ERROR ", " CRITICAL ", "Traceback", "Error:"))]
    return bad[:limit] + ([f"... and {len(bad) - limit} more"] if len(bad) > limit else [])


def venv_python_version(python: Path) -> str:
    try:
        out = subprocess.run([str(python), "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, timeout=20, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _write_report(s: Settings, started: dt.datetime, meta: dict[str, Any],
                  outcome: dict[str, Any], warmups: list[RunRecord], records: list[RunRecord],
                  sg_log: Path | None, ref_log: Path | None, sg_dir: Path | None,
                  ref_spool: Path | None) -> Path:
    """Add what the servers left behind (log problems, file counts) and write the JSON."""
    if sg_log is not None:
        meta["smtpgate_log_problems"] = log_problems(sg_log)
        meta["smtpgate_log_tail"] = tail(sg_log, 30)
    if ref_log is not None:
        meta["aiosmtpd_log_problems"] = log_problems(ref_log)
    if sg_dir is not None:
        meta["smtpgate_files_delivered_maildir"] = count_files(sg_dir / "mail")
        meta["smtpgate_files_left_in_spool"] = count_files(sg_dir / "spool")
    if ref_spool is not None:
        meta["aiosmtpd_files_spooled"] = count_files(ref_spool, ".eml")
    meta["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report = {"meta": meta, "outcome": outcome,
              "warmups": [r.__dict__ for r in warmups],
              "runs": [r.__dict__ for r in records]}
    s.results_dir.mkdir(parents=True, exist_ok=True)
    out = s.results_dir / (started.strftime("%Y%m%dT%H%M%SZ")
                           + ("-quick" if s.quick else "") + ".json")
    out.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    return out


def benchmark(s: Settings) -> int:
    workloads = QUICK_WORKLOADS if s.quick else FULL_WORKLOADS
    started = dt.datetime.now(dt.UTC)
    meta: dict[str, Any] = {
        "started_utc": started.isoformat(timespec="seconds"),
        "host": platform.node(),
        "nproc": cpu_count(),
        "platform": platform.platform(),
        "python_harness": platform.python_version(),
        "python_servers_and_loadgen": venv_python_version(s.python),
        "workers": s.workers,
        "workers_source": s.workers_source,
        "repeat": s.repeat,
        "uvloop_loadgen": s.uvloop,
        "tls12_loadgen": s.tls12,
        "quick": s.quick,
        "smtpgate_git": git_state(),
        "loadavg_start": loadavg(),
        "loadgen_max_seconds": LOADGEN_MAX_SECONDS,
        "workloads": [w.__dict__ for w in workloads],
    }
    print(f"smtpgate bench: nproc {meta['nproc']}, load average {meta['loadavg_start']}, "
          f"Python {meta['python_servers_and_loadgen']}, smtpgate workers {s.workers} "
          f"({s.workers_source}), repeat {s.repeat}, {'quick' if s.quick else 'full'} counts, "
          f"loadgen uvloop {'on' if s.uvloop else 'off'}"
          + (", TLS capped at 1.2" if s.tls12 else ""), flush=True)

    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="smtpgate-bench-"))
    records: list[RunRecord] = []
    warmups: list[RunRecord] = []
    outcome: dict[str, Any] = {"status": "incomplete"}
    rc = 1
    sg_log: Path | None = None
    ref_log: Path | None = None
    sg_dir: Path | None = None
    ref_spool: Path | None = None
    cleanups: list[Any] = []
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    raise_nofile_limit()
    try:
        password = "Pw-" + secrets.token_urlsafe(15)
        sg, sg_dir, sg_log = setup_smtpgate(s, tmp, procs, password)
        ref, ref_spool, ref_log = setup_reference(s, tmp, procs, sg_dir, password)
        targets = [sg, ref]
        if s.ceiling:
            targets.append(setup_ceiling(s, tmp, procs, sg_dir, password))
        probes: dict[str, Any] = {}
        own_pf: Any = None
        if s.postfix is None and s.own_postfix:
            try:
                own_pf = start_own_postfix(sg_dir)
                cleanups.append(own_pf.cleanup)
                from tests.peers.postfix_dovecot import SCRAM_PASSWORD, SCRAM_USER
                s.postfix = (LOOPBACK, own_pf.ports["bench"])
                s.postfix_user, s.postfix_password = SCRAM_USER, SCRAM_PASSWORD
                s.postfix_ca = sg_dir / "tls" / "cert.pem"
                meta["postfix_own"] = {"root": str(own_pf.root), "ports": own_pf.ports,
                                       "default_process_limit": POSTFIX_DEFAULT_PROCESS_LIMIT}
            except (OSError, RuntimeError, subprocess.SubprocessError, ImportError) as e:
                meta["postfix"] = f"could not start its own Postfix+Dovecot: {e}"
                print(f"Postfix+Dovecot: {meta['postfix'][:300]}")
        if s.postfix is not None:
            assert s.postfix_ca is not None
            pf = Target("postfix", s.postfix[0], s.postfix[1], s.postfix_user,
                        s.postfix_password, s.postfix_ca, postfix_pids(own_pf))
            try:
                probes["postfix"] = probe_tls(pf)
                targets.append(pf)
                print(f"Postfix+Dovecot: {pf.host}:{pf.port}: {probes['postfix']['banner']}")
            except (OSError, ssl.SSLError, HarnessError) as e:
                meta["postfix"] = f"unreachable at {pf.host}:{pf.port}: {e}; skipped"
                print(f"Postfix+Dovecot: {meta['postfix']}")
        else:
            meta.setdefault("postfix", "not running, skipped")
            print("Postfix+Dovecot: not running, skipped "
                  "(needs root, postfix, dovecot, doveadm and script for its own; or pass "
                  "--postfix HOST:PORT --postfix-user U --postfix-password P "
                  "--postfix-ca FILE)")
        for t in targets:
            if t.name != "postfix":
                probes[t.name] = probe_tls(t)
        meta["probes"] = probes
        same = probes["smtpgate"]["cert_sha256"] == probes["aiosmtpd"]["cert_sha256"]
        meta["same_certificate_smtpgate_aiosmtpd"] = same
        if not same:
            raise HarnessError("smtpgate and aiosmtpd presented different certificates")
        for name, p in probes.items():
            print(f"  {name:9s} {p['tls_version']} {p['cipher']} cert {p['cert_key']} "
                  f"sha256 {p['cert_sha256'][:16]}...  {p['auth_line']}")

        # Warm-up: first logins pay Argon2id (per worker process) and imports; not measured.
        for t in targets:
            wr = run_loadgen(s, t, WARMUP, 0, max_seconds=30)
            warmups.append(wr)
            if wr.problem:
                print(f"  warm-up {t.name}: {wr.problem} {json.dumps(wr.errors())}", flush=True)

        # The delivery process is logged once the workers are up (by now, surely).
        if sg.delivery_pid is None:
            sg = dataclasses.replace(sg, delivery_pid=bounds.delivery_pid(sg_log))
            targets[0] = sg
        for w in workloads if not s.skip_abc else ():
            for rep in range(s.repeat):
                order = targets if rep % 2 == 0 else list(reversed(targets))
                for t in order:
                    r = run_loadgen(s, t, w, rep)
                    records.append(r)
                    fig = r.figure(w.metric)
                    errs = r.errors()
                    print(f"  {w.key} rep {rep + 1}/{s.repeat} {t.name:9s} "
                          f"{_fmt(fig)} {w.unit}  msg p50/p99 "
                          f"{_fmt(r.latency('p50'), '.2f')}/{_fmt(r.latency('p99'), '.2f')} ms"
                          f"  load {r.loadavg_before[0]}"
                          + (f"  PROBLEM: {r.problem}" if r.problem else "")
                          + (f"  errors: {json.dumps(errs)}" if errs else ""), flush=True)

        rows = summarise(workloads, targets, records)
        names = [t.name for t in targets]
        table = render_table(rows, names)
        extra: dict[str, Any] = {}
        if s.extras:
            extra = run_extras(s, sg_dir, procs, targets, own_pf, tmp, rows)
        # The floors, on a machine the loadgen runs have left quiet.
        floors = bounds.measure_floors(s.python, BENCH_DIR / "probes" / "floors.py", sg_dir)
        units = {w.key: w.sessions * (w.messages if w.metric == "messages_per_s" else 1)
                 for w in workloads}
        bound = bounds.report(rows, records, units, floors, cpu_count(), extra.get("d"))
        meta["loadavg_end"] = loadavg()
        print()
        print(table)
        if extra:
            print()
            print(extra["table"])
        if bound["lines"]:
            print("\nWhat bounds each unmet target (measured in this run; bench/bounds.py):")
            for line in bound["lines"]:
                print(f"* {line}")
        print(f"\nratios > 1: smtpgate faster; '!' = errors or missing messages in a run.\n"
              f"Medians of {s.repeat} run(s); latency = one message, MAIL sent -> 250 after "
              f"the final dot.\nLoad average at start {meta['loadavg_start']}, "
              f"at end {meta['loadavg_end']}.")
        outcome = {"status": "ok", "summary": rows, "table": table, "extra": extra,
                   "bounds": bound}
        bad = [r for r in records if r.problem or r.errors()]
        if bad:
            outcome["status"] = "ok_with_errors"
            print(f"\nWARNING: {len(bad)} run(s) had errors or missing messages (see JSON).")
        rc = 0
    except HarnessError as e:
        outcome = {"status": "failed", "error": str(e)}
        print(f"\nbench: FAILED: {e}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        outcome = {"status": "interrupted"}
        print("\nbench: interrupted; stopping servers", file=sys.stderr)
        rc = 130
    except BaseException as e:  # a bug or a broken pipe: record it, clean up, re-raise
        outcome = {"status": "crashed", "error": repr(e)}
        raise
    finally:
        try:
            # A second Ctrl-C or SIGTERM must not cut the clean-up short.
            old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                meta["stop_notes"] = procs.stop_all()
                for c in cleanups:
                    try:
                        c()
                    except Exception as e:  # noqa: BLE001 - record, keep cleaning up
                        meta["stop_notes"].append(f"clean-up: {e!r}")
            finally:
                signal.signal(signal.SIGINT, old_int)
                signal.signal(signal.SIGTERM, previous)
            out = _write_report(s, started, meta, outcome, warmups, records, sg_log, ref_log,
                                sg_dir, ref_spool)
            for n in meta["stop_notes"]:
                print(f"bench: {n}", file=sys.stderr)
            if meta.get("smtpgate_log_problems"):
                print("smtpgate log shows problems:\n  "
                      + "\n  ".join(meta["smtpgate_log_problems"]), file=sys.stderr)
            print(f"raw results: {out}")
        finally:
            if s.keep_tmp:
                print(f"kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    return rc


def default_tool(name: str) -> Path:
    venv = REPO_DIR / ".venv" / "bin" / name
    if venv.exists():
        return venv
    found = shutil.which(name)
    return Path(found) if found else venv


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small counts for a smoke run (100 msgs; 3x20; 60 sessions)")
    ap.add_argument("--workers", type=int, default=None,
                    help="smtpgate [server] workers (default: 2 if >= 2 cores, else 1)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per workload and target; "
                    "the median is reported (default 1)")
    ap.add_argument("--uvloop", action="store_true", help="pass --uvloop to loadgen")
    ap.add_argument("--tls12", action="store_true",
                    help="pass --tls12 to loadgen (cap TLS at 1.2; see bench/README.md on "
                    "Postfix's TLS 1.3 delayed-ACK stall)")
    ap.add_argument("--postfix", type=parse_hostport, default=None, metavar="HOST:PORT",
                    help="an already running Postfix+Dovecot submission (STARTTLS) service")
    ap.add_argument("--postfix-user", default="", metavar="U")
    ap.add_argument("--postfix-password", default="", metavar="P")
    ap.add_argument("--postfix-ca", type=Path, default=None, metavar="FILE",
                    help="CA file that verifies Postfix's certificate (SNI 'localhost')")
    ap.add_argument("--python", type=Path, default=default_tool("python"),
                    help="interpreter for loadgen and ref_aiosmtpd (default: the repo venv)")
    ap.add_argument("--smtpgate", type=Path, default=default_tool("smtpgate"))
    ap.add_argument("--loadgen", type=Path, default=DEFAULT_LOADGEN)
    ap.add_argument("--ref-server", type=Path, default=DEFAULT_REF_SERVER)
    ap.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, spools)")
    ap.add_argument("--no-postfix", action="store_true",
                    help="do not start the harness's own Postfix+Dovecot reference")
    ap.add_argument("--idle", type=int, default=None,
                    help="workload D: idle authenticated sessions to hold (default 2000, "
                    "200 with --quick; capped by the file descriptor limit)")
    ap.add_argument("--skip-abc", action="store_true",
                    help="only the warm-up and C-TLS, D, E, F (e.g. with --idle 10000)")
    ap.add_argument("--no-extras", action="store_true",
                    help="only workloads A-C (skip C-TLS, D, E and F)")
    ap.add_argument("--no-ceiling", action="store_true",
                    help="leave out the canned server that shows the machine's ceiling for A-C")
    a = ap.parse_args(argv)
    if a.workers is None:
        workers, source = (2 if cpu_count() >= 2 else 1), f"default for {cpu_count()} core(s)"
    else:
        workers, source = a.workers, "--workers"
    if not 1 <= workers <= 64:
        ap.error("--workers must be 1..64")
    if not 1 <= a.repeat <= 25:
        ap.error("--repeat must be 1..25")
    if a.postfix is not None:
        if not (a.postfix_user and a.postfix_password and a.postfix_ca):
            ap.error("--postfix needs --postfix-user, --postfix-password and --postfix-ca")
        if not a.postfix_ca.is_file():
            ap.error(f"--postfix-ca {a.postfix_ca}: no such file")
    for label, p in (("--python", a.python), ("--smtpgate", a.smtpgate),
                     ("--loadgen", a.loadgen), ("--ref-server", a.ref_server)):
        if not p.exists():
            ap.error(f"{label} {p}: not found")
    return Settings(
        python=a.python, smtpgate=a.smtpgate, loadgen=a.loadgen, ref_server=a.ref_server,
        workers=workers, workers_source=source, repeat=a.repeat, uvloop=a.uvloop, tls12=a.tls12,
        quick=a.quick, keep_tmp=a.keep_tmp, results_dir=a.results_dir, postfix=a.postfix,
        postfix_user=a.postfix_user, postfix_password=a.postfix_password,
        postfix_ca=a.postfix_ca, own_postfix=not a.no_postfix,
        idle=a.idle if a.idle is not None else (200 if a.quick else 2000),
        extras=not a.no_extras, skip_abc=a.skip_abc, ceiling=not a.no_ceiling,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
