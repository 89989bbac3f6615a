"""Durations on the command line: ``90s``, ``30m``, ``24h``, ``7d``, ``2w``."""

from __future__ import annotations

import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_SPEC = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


#: The longest duration accepted: 100 years. A choice, not a rule: every duration
#: here is added to or taken from the present (an expiry, a grace period, --since),
#: and Python's dates end at year 9999 (a longer one was an OverflowError traceback).
MAX_DURATION = 36500 * 86400.0


def parse_duration(text: str) -> float:
    """Seconds in ``text``; a bare number is seconds.

    Raises:
        ValueError: not a number followed by one of s, m, h, d, w; or longer than
            `MAX_DURATION`.
    """
    m = _SPEC.fullmatch(text.strip().lower())
    if m is None:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 24h, 7d or 2w")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not seconds <= MAX_DURATION:
        raise ValueError(f"{text!r} is longer than 100 years (36500d)")
    return seconds


def format_duration(seconds: float) -> str:
    """Short human form: ``45s``, ``12m``, ``5h``, ``3d``."""
    s = abs(seconds)
    if s < 120:
        text = f"{s:.0f}s"
    elif s < 7200:
        text = f"{s / 60:.0f}m"
    elif s < 3 * 86400:
        text = f"{s / 3600:.0f}h"
    else:
        text = f"{s / 86400:.0f}d"
    return "-" + text if seconds < 0 else text
