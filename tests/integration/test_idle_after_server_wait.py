"""The command timeout is the client's idle time, counted from the server's reply
(RFC 5321 §4.5.3.2: the server waits for the next command). Time the server itself
spends on a command (an AUTH penalty, a slow account look-up, a spool write) is not
the client's: before this was kept, a session whose AUTH the guard delayed longer
than command_timeout got its 535 and, within a second and before its next command,
421 4.4.2 Timeout waiting for command (seen in a soak with command_timeout = 3 and
the default penalty_max of 4 s)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from .conftest import USER, Server, serving_alice
from .test_attacks import plain, tls_session

#: The client's idle allowance, shorter than the penalty the second AUTH waits.
COMMAND_TIMEOUT = 4.0
PENALTY = 6.0
#: How long the client thinks before its next command: well inside
#: COMMAND_TIMEOUT from the reply, well past the second the server took to look
#: at its clock again after the penalty.
THINK = 2.0

CONFIG = f"""
[limits]
command_timeout = {COMMAND_TIMEOUT}

[guard]
penalty_base = {PENALTY}
penalty_max = {PENALTY}
"""


@pytest.fixture
def penalized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving_alice(tmp_path_factory.mktemp("idle") / "srv", CONFIG)


def test_a_penalty_longer_than_the_command_timeout_leaves_the_client_its_idle_time(
    penalized: Server,
) -> None:
    first = tls_session(penalized)
    assert first.cmd(f"AUTH PLAIN {plain(USER, 'wrong password')}").startswith("535 ")
    first.cmd("QUIT")
    first.close()

    second = tls_session(penalized)
    second.sock.settimeout(COMMAND_TIMEOUT + PENALTY + 10)
    # This AUTH waits out the penalty (longer than command_timeout) on the server.
    assert second.cmd(f"AUTH PLAIN {plain(USER, 'wrong password')}").startswith("535 ")
    time.sleep(THINK)
    assert second.cmd("NOOP").startswith("250 "), "idle time counted from the AUTH line"
    assert second.cmd("QUIT").startswith("221 ")
    second.close()
