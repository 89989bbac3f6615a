"""Binding each worker process to one CPU (``[server] worker_cpu_affinity``).

Why: a worker's event loop hands work to its own threads (spool writes, database
reads) and back, several times a message. When the kernel is free to place them,
those hand-offs often cross CPUs, and each wake-up on another CPU costs an
inter-processor interrupt, which in a virtual machine is a trip through the
hypervisor; the workers also drift onto the same CPU while another idles. Bound
to one CPU each, as nginx's ``worker_cpu_affinity auto`` does, the hand-offs stay
on one core and each worker keeps one. Measured on the 2-CPU VM of
bench/README.md ("2026-12-01, 14:00-15:05 UTC"): 11-33 % more messages per
second with ten parallel sessions and 0-21 % more new sessions per second, at
about the same CPU per message. The cost: a bound worker cannot move away from a CPU that
other work on the host keeps busy; ``off`` lets the kernel place it.

Only workers are bound; the parent and the delivery process are left to the
kernel. The CPUs are those the process may run on (a container's cpuset, a
``taskset`` around ``smtpgate serve``), taken in order, round-robin when there
are more workers than CPUs. Threads started by the worker afterwards inherit
its CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection

log = logging.getLogger("smtpgate")


def cpu_for(slot: int, allowed: Collection[int]) -> int | None:
    """The CPU worker ``slot`` (0-based) is bound to; None with fewer than two CPUs
    to choose from (binding would change nothing)."""
    cpus = sorted(allowed)
    if len(cpus) < 2:
        return None
    return cpus[slot % len(cpus)]


def bind_worker(slot: int, mode: str) -> int | None:
    """Bind the calling process (its one thread, right after the fork) to its CPU;
    returns the CPU, or None when not bound (``off``, one CPU, or the kernel
    refused: logged, and the worker runs unbound)."""
    if mode == "off" or not hasattr(os, "sched_setaffinity"):
        return None
    cpu = cpu_for(slot, os.sched_getaffinity(0))
    if cpu is None:
        return None
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as e:
        log.warning("worker %d: cannot bind to CPU %d (%s); running unbound "
                    "(server.worker_cpu_affinity)", slot + 1, cpu, e.strerror or e)
        return None
    return cpu
