"""Switch parts of smtpgate off in every process of one bench server, for
`bench/ablation.py`: ``SMTPGATE_ABLATE`` names them, comma-separated. Loaded by the
interpreter at start-up because `bench/ablation.py` puts this directory on the
server's ``PYTHONPATH``; nothing in smtpgate reads the variable, so no product
code path depends on it. A part switched off does nothing and answers as if it
had passed (no count, no log line, no refusal): what is measured is what that
part costs a session, not a server anyone should run.
"""

from __future__ import annotations

import logging
import os

_PARTS = {p for p in os.environ.get("SMTPGATE_ABLATE", "").split(",") if p}


def _nothing(*args: object, **kwargs: object) -> None:
    return None


if "metrics" in _PARTS:
    from smtpgate import metrics

    for _name in ("connection_opened", "connection_refused", "session_ended", "auth_attempt",
                  "sender_policy_violation", "rate_limited", "message_accepted",
                  "backend_call", "delivered", "spool_failed", "guard_block_started"):
        setattr(metrics, _name, _nothing)

if "authlog" in _PARTS:
    from smtpgate.auth import authlog

    authlog.AuthLog.write = _nothing  # type: ignore[method-assign,assignment]

if "serverlog" in _PARTS:
    # The per-session and per-message INFO lines (queued, delivered...): the
    # server sets its level when it starts, so the level it is given is raised.
    from smtpgate.server import logs

    _setup = logs.setup_logging

    def _warnings_only(level: int = logging.INFO) -> None:
        _setup(max(level, logging.WARNING))

    logs.setup_logging = _warnings_only

if "from_policy" in _PARTS:
    from smtpgate.policy import submission

    submission.Sending.message = _nothing  # type: ignore[method-assign,assignment]
