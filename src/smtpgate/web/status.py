"""What the web admin shows of the running server: the status file the main process
rewrites every 2 s (``server/status_file.py``, beside the pid file): when the
running config was loaded and from which file, the processes and sessions.

Read as plain JSON here (the web admin sits below ``server/``, which passes the
path); a missing or unreadable file is shown as such, never an error page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read(path: Path | None) -> dict[str, Any]:
    """The status document, or {} if there is none (yet)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
