"""systemd's notification protocol (``Type=notify``, sd_notify(3)), by hand.

The protocol is one datagram of ``KEY=value`` lines to the unix socket named by
``$NOTIFY_SOCKET``; the libraries that wrap it (python-systemd, sdnotify) add a
dependency, or a C extension, for a dozen lines. Without ``$NOTIFY_SOCKET``
(not under systemd, or ``Type=simple``) every call does nothing.

Only the main process notifies (the unit's default ``NotifyAccess=main``): the
single serving process, or the supervisor once every worker reported ready.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("smtpgate")


def _address() -> str | None:
    where = os.environ.get("NOTIFY_SOCKET", "")
    if not where:
        return None
    # "@name" is a socket in the abstract namespace.
    return "\0" + where[1:] if where.startswith("@") else where


def notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"``, ``"STATUS=..."``) in one datagram; False
    when there is nobody to tell or the send failed (logged once per call)."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode(), address)
    except OSError as e:
        log.warning("systemd notification %s failed: %s", states[0], e)
        return False
    return True


def ready(status: str) -> None:
    notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


def reloading() -> None:
    # systemd 253+ wants the CLOCK_MONOTONIC time of the reload request with it.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")


def stopping() -> None:
    notify("STOPPING=1", "STATUS=stopping")


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WatchdogSec=``, as sd_watchdog_enabled(3)
    advises; None when the watchdog is off or meant for another process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def watchdog() -> None:
    notify("WATCHDOG=1")


def forget_in_child() -> None:
    """A forked worker must neither notify nor be mistaken for the main process."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)
