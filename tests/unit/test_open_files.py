"""The open-file limit raised at start-up (server/open_files.py).

Each case runs in a child process whose limits are set first, so that lowering the
hard limit (which cannot be undone) never touches the test run.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any

import pytest

from smtpgate.server import open_files

CHILD = """
import json, logging, resource, sys
from smtpgate.server import open_files
soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append((record.levelname, record.getMessage()))
logging.getLogger("smtpgate").addHandler(Keep())
logging.getLogger("smtpgate").setLevel(logging.DEBUG)
result = open_files.raise_limit(int(sys.argv[3]), warn=sys.argv[4] == "warn")
print(json.dumps({"result": result, "now": resource.getrlimit(resource.RLIMIT_NOFILE),
                  "records": records}))
"""


def _run(soft: int, hard: int, max_connections: int, warn: bool = True) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(soft), str(hard),
                          str(max_connections), "warn" if warn else "quiet"],
                         capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def hard() -> int:
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if limit != resource.RLIM_INFINITY and limit < 4096:
        pytest.fail(f"these cases need a hard open-file limit of 4096 or more, not {limit}")
    return 4096


def test_a_low_soft_limit_is_raised_to_what_the_connections_need(hard: int) -> None:
    got = _run(1024, hard, 1000)
    assert got["now"] == [1000 + open_files.RESERVE, hard]
    assert got["result"] == [1256, 1256]
    assert not [r for r in got["records"] if r[0] == "WARNING"]


def test_a_soft_limit_already_high_enough_is_left_alone(hard: int) -> None:
    got = _run(3000, hard, 1000)
    assert got["now"] == [3000, hard]
    assert got["records"] == []


def test_a_hard_limit_too_low_is_used_up_and_the_warning_names_the_key() -> None:
    got = _run(512, 1024, 1000)
    assert got["now"] == [1024, 1024]
    warnings = [m for level, m in got["records"] if level == "WARNING"]
    assert len(warnings) == 1
    assert "limits.max_connections = 1000 needs about 1256 open files" in warnings[0]
    assert "the limit is 1024 (hard 1024)" in warnings[0]
    assert "LimitNOFILE=" in warnings[0] and "beyond about 768" in warnings[0]


def test_quiet_raises_as_far_as_it_can_without_a_warning() -> None:
    got = _run(512, 1024, 5000, warn=False)
    assert got["now"] == [1024, 1024]
    assert [level for level, _ in got["records"]] == ["DEBUG"]
    assert "raised from 512 to 1024" in got["records"][0][1]
