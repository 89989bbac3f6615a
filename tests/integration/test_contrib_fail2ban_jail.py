"""The fail2ban jail and filter `smtpgate contrib` prints form a configuration fail2ban
accepts (fail2ban-client -t), with the installed fail2ban's own defaults."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from smtpgate.cli.contrib_cmd import contrib_text

from .conftest import require_tool

LOGPATH = "/var/log/smtpgate/auth.log"


def test_jail_and_filter_pass_fail2ban_config_test(tmp_path: Path) -> None:
    client = require_tool("fail2ban-client")
    if not Path("/etc/fail2ban/jail.conf").is_file():
        pytest.fail("fail2ban is installed without /etc/fail2ban/jail.conf")
    conf = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", conf)
    for other in (conf / "jail.d").iterdir():  # only our jail, not the distribution's
        other.unlink()
    log = tmp_path / "auth.log"
    log.touch()  # fail2ban refuses a jail whose log file does not exist
    (conf / "filter.d" / "smtpgate.conf").write_text(contrib_text("fail2ban-filter"))
    jail = contrib_text("fail2ban-jail")
    assert LOGPATH in jail
    (conf / "jail.d" / "smtpgate.local").write_text(jail.replace(LOGPATH, str(log)))
    checked = subprocess.run(
        [client, "-c", str(conf), "-t"], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    dump = subprocess.run(
        [client, "-c", str(conf), "-d"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "['add', 'smtpgate', 'auto']" in dump
    assert f"'{log}'" in dump
