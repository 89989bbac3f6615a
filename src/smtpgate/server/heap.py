"""What start-up leaves on the heap is kept out of the cyclic garbage collector.

Why: a server process holds ~90,000 objects after start-up (modules, the
config, TLS and database objects) that live as long as it does. Python's
collector still walks all of them in each full collection: ~50 ms here, on the
event loop, every few hundred sessions. Profiled under load (issue 13,
bench/README.md) the collector was 10-15 % of a worker's event-loop time in
workload C. `freeze_startup_heap` collects once, then moves what survived into
the collector's permanent generation (``gc.freeze``): those objects are still
freed by reference counting as before, and cycles made afterwards (sessions,
messages) are still collected; only the start-up objects are no longer
re-examined. The cost: a reference cycle among objects from start-up that
becomes garbage later (a reload replaces the runtime) is not reclaimed, which
is bounded by the number of reloads.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect start-up garbage, then freeze what is left; returns how many
    objects are frozen. Call once the process is ready to serve."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
