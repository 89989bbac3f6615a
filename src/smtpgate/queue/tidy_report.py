"""The one log line a spool's start-up tidy writes (see `Spool`, ``tidy``).

The tidy deletes files: temp files of writers that died, files in ``tmp/`` that
smtpgate did not write, state files whose message is gone. An administrator who
finds a file missing must be able to read in the log that the server removed it,
and why: one line per start-up with the count of each kind and a few names, at
WARNING when something that was not smtpgate's own went (someone or something
else writes into the spool), else at INFO.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from smtpgate.plural import count
from smtpgate.visible import visible

#: Names shown per kind; the count says how many there were.
EXAMPLES = 3


def examples(names: Sequence[str]) -> str:
    """Up to `EXAMPLES` of ``names``, sorted and escaped (a name is anyone's text)."""
    shown = sorted(names)[:EXAMPLES]
    more = ", ..." if len(names) > EXAMPLES else ""
    return "(" + ", ".join(visible(n) for n in shown) + more + ")"


def log_tidy(log: logging.Logger, *, dead: Sequence[str], foreign: Sequence[str],
             orphans: Sequence[str]) -> None:
    """Log what the tidy removed, if anything: one line."""
    parts = []
    if dead:
        parts.append(f"{count(len(dead), 'temp file')} left by dead writers "
                     f"{examples(dead)}")
    if foreign:
        parts.append(f"{count(len(foreign), 'file')} in tmp/ not written by smtpgate "
                     f"{examples(foreign)}")
    if orphans:
        parts.append(f"{count(len(orphans), 'state file')} whose message is gone "
                     f"{examples(orphans)}")
    if not parts:
        return
    level = logging.WARNING if foreign else logging.INFO
    advice = "; tmp/ is the spool's own: keep nothing there" if foreign else ""
    log.log(level, "spool: start-up removed %s%s", ", ".join(parts), advice)
