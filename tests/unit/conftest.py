"""Unit tests run in one process per xdist worker, many files after one another: a
test that drives the CLI in-process (click's CliRunner) may set up smtpgate's
logging (`server.logs.setup_logging`: its own handler, no propagation), which would
hide later tests' records from pytest's ``caplog``. Each test starts with the
logger propagating (so ``caplog`` sees its records) and leaves it as it found it."""

from __future__ import annotations

import logging
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
