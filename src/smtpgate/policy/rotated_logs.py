"""The rotated copies of the auth log that ``smtpgate report`` reads by default.

Why: logrotate moves ``auth.log`` to ``auth.log.1`` (then ``auth.log.2.gz`` ...,
or ``auth.log-20261201`` with ``dateext``) every week, so a report over the
configured file alone counted only the days since the last rotation, while its
first line said "since" the whole period: ``--since 7d`` the morning after a
rotation reported one morning as a quiet week. A rotated file is read when it
may hold records of the period: its last write (``st_mtime``, the time of its
last record give or take the rotation) is at or after the period's start.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

#: ``NAME.N`` / ``NAME.N.gz`` (logrotate's numbering) and ``NAME-YYYYMMDD[HH]``
#: with or without ``.gz`` (its ``dateext``), nothing else: ``auth.log.bak`` or an
#: editor's ``auth.log~`` are no rotations.
_ROTATED = r"(?:\.\d{1,4}|-\d{8}(?:\d{2})?)(?:\.gz)?"


def rotated_siblings(log: Path, since: datetime | None) -> list[Path]:
    """The rotated copies of ``log`` in its directory that may hold records at or
    after ``since`` (all of them for None), oldest first."""
    pattern = re.compile(re.escape(log.name) + _ROTATED)
    found: list[tuple[float, Path]] = []
    try:
        entries = list(log.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue
        if not entry.is_file():
            continue
        if since is not None and st.st_mtime < since.timestamp():
            continue
        found.append((st.st_mtime, entry))
    return [p for _, p in sorted(found)]
