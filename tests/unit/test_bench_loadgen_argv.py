"""The loadgen command line `bench/run.py` builds: a password that begins with "-"
(``secrets.token_urlsafe`` gives one in 32 times) must reach loadgen as the
password, not end the run with "expected one argument", and stays out of the
results."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.run import Target, Workload, loadgen_argv, redact, tool_settings


def test_a_password_that_begins_with_a_dash_is_one_argument_and_redacted() -> None:
    s = tool_settings(1, "test")
    secret = "-Qx3_a-dash-first"
    target = Target("smtpgate", "127.0.0.1", 2587, "u@example.org", secret, Path("c.pem"))
    argv = loadgen_argv(s, target, Workload("C", "C", 10, 2, 1, "sessions_per_s"), 30)
    # loadgen's own declaration of the option (../shared/bench/loadgen.py).
    ap = argparse.ArgumentParser()
    ap.add_argument("--password", default="Alice-Pass-123")
    got, _ = ap.parse_known_args(argv[2:])
    assert got.password == secret
    shown = redact(argv, secret)
    assert not any(secret in a for a in shown)
    assert "--password=***" in shown
