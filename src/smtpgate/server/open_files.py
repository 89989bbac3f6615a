"""The open-file limit, raised at start-up to what ``limits.max_connections`` needs.

Why: a service manager's default soft limit is often 1,024 (systemd's, whatever the
hard limit), below the default 1,000 connections plus the server's own files. Past
it ``accept`` fails with EMFILE and new clients wait or are reset while the log
fills. Go programs raise the soft limit at start-up for the same reason; here only
as far as needed, never above the hard limit (which only root may raise). Forked
workers inherit the limit.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("smtpgate")

#: Descriptors a process needs besides its connections: listeners, databases and
#: their journals, spool and Maildir files in flight, logs, pipes, the event loop's.
RESERVE = 256


def needed(max_connections: int) -> int:
    """Descriptors one process may need: every connection can land on one worker."""
    return max_connections + RESERVE


def raise_limit(max_connections: int, *, warn: bool = True) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``needed(max_connections)``; log a
    warning naming the key (unless ``warn`` is False) when the hard limit does not
    allow it. Returns the soft limit in force and the number needed."""
    want = needed(max_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        except (ValueError, OSError) as e:  # pragma: no cover - refused below the hard limit
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, ceiling, e)
        else:
            log.debug("open-file limit raised from %d to %d (limits.max_connections = %d)",
                      soft, ceiling, max_connections)
            soft = ceiling
    if warn and soft != resource.RLIM_INFINITY and soft < want:
        log.warning(
            "limits.max_connections = %d needs about %d open files per process; the limit "
            "is %d (hard %s): connections beyond about %d will be refused by the kernel. "
            "Raise LimitNOFILE= in the systemd unit (or ulimit -n), or lower "
            "limits.max_connections", max_connections, want, soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard, max(0, soft - RESERVE))
    return soft, want
