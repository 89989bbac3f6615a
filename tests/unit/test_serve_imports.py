"""What a serving process imports (bench/README.md, workload D).

`smtpgate serve` forks its workers from the process that parsed the command line,
so every module that process imported sits in each worker's memory. The web admin
(aiohttp, Jinja2, the audit), Redis, LDAP and the password-strength dictionaries are
imported only by the code that uses them; this keeps them out of the parent.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("aiohttp", "jinja2", "zxcvbn", "redis", "ldap3", "rich", "smtpgate.web.site",
         "smtpgate.tools.audit")


def _loaded_after(code: str) -> dict[str, bool]:
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps({{m: m in sys.modules for m in {list(HEAVY)!r}}}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    return dict(json.loads(out.splitlines()[-1]))


def test_the_serve_command_and_the_server_leave_the_heavy_modules_out() -> None:
    loaded = _loaded_after("from smtpgate.cli.main import load_command\n"
                           "load_command('serve')\nimport smtpgate.server.app")
    assert not any(loaded.values()), {m for m, yes in loaded.items() if yes}


def test_the_probe_sees_a_heavy_import() -> None:
    """The check above would pass vacuously if the probe could not see one."""
    loaded = _loaded_after("from smtpgate.cli.main import load_command\n"
                           "load_command('admin')\nimport smtpgate.web.site")
    assert loaded["aiohttp"] and loaded["jinja2"] and loaded["smtpgate.web.site"]


def test_every_command_still_loads() -> None:
    from smtpgate.cli.main import _COMMANDS, load_command

    assert {load_command(name).name for name in _COMMANDS} == set(_COMMANDS)
