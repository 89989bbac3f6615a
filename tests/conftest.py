"""The order the files' tests are handed out in: files with a test marked ``slow``
first, then the others by their number of tests, most first.

`make test` runs ``-n 2 --dist loadfile``: each file is one unit of work, and a worker
that runs out takes the next unit. xdist's own order (by number of tests) put the
files with a few long tests (a minute of kill -9 runs, a hanging OAuth issuer) last,
where one of them could run alone on one worker while the other had nothing left:
the run was as long as that file, longer than it had to be. Handed out first, such
a file runs while the other worker gets through many short ones. The Makefile passes
``--no-loadscope-reorder`` so that xdist keeps this order; every worker computes the
same one (xdist checks that they all collected the same list).

A test that takes more than a few seconds should carry ``@pytest.mark.slow`` (or its
module ``pytestmark``); that is all this reads.
"""

from __future__ import annotations

import pytest


def _file(item: pytest.Item) -> str:
    return item.nodeid.partition("::")[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    count: dict[str, int] = {}
    slow: set[str] = set()
    for item in items:
        count[_file(item)] = count.get(_file(item), 0) + 1
        if item.get_closest_marker("slow") is not None:
            slow.add(_file(item))
    # A stable sort: a file's tests stay together and in their order.
    items.sort(key=lambda item: (_file(item) not in slow, -count[_file(item)]))
