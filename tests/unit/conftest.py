"""Unit tests run in one process per xdist worker, many files after one another: a
test that drives the CLI in-process (click's CliRunner) may set up smtpgate's
logging (`server.logs.setup_logging`: its own handler, no propagation), which would
hide later tests' records from pytest's ``caplog``. Each test starts with the
logger propagating (so ``caplog`` sees its records) and leaves it as it found it.

``blackhole``: a real address a connect hangs on (the relay's and the token
verifier's per-address timeouts)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _smtpgate_logger_restored() -> Iterator[None]:
    logger = logging.getLogger("smtpgate")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.propagate = True
    for name, child in logging.root.manager.loggerDict.items():
        if name.startswith("smtpgate.") and isinstance(child, logging.Logger):
            child.disabled = False  # a fuzz target, say, silenced it when imported
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def blackhole() -> Iterator[tuple[str, int]]:
    """127.0.0.2:PORT, where a connect hangs as to a host that drops packets: a
    listening socket whose accept queue is full drops further SYNs (Linux), on
    loopback and without touching the machine's network settings."""
    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    filler = socket.create_connection(("127.0.0.2", port), timeout=2)
    try:
        yield "127.0.0.2", port
    finally:
        filler.close()
        listener.close()
