"""``smtpgate admin add|list|remove``: the web admin's administrators, from the CLI."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pyotp

from tests.integration.conftest import make_server

STRONG = "a long admin passphrase 7"


def test_admin_add_prints_a_working_enrolment_uri_and_refuses_bad_input(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    out = srv.cli("admin", "add", "Root", "--password-stdin", stdin=STRONG + "\n").stdout
    assert out.startswith("added admin root\n")
    uri = next(line for line in out.splitlines() if line.startswith("otpauth://totp/"))
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP) and totp.name == "root"
    assert len(urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]) == 32
    assert "the web admin is off" in out  # no [admin] listen in the config init writes
    again = srv.cli("admin", "add", "root", "--password-stdin", stdin=STRONG + "\n", check=False)
    assert again.returncode == 1 and "admin root already exists" in again.stderr
    weak = srv.cli("admin", "add", "eve", "--password-stdin", stdin="short\n", check=False)
    assert weak.returncode == 1 and "shorter than" in weak.stderr
    bad = srv.cli("admin", "add", "<script>", "--password-stdin", stdin=STRONG + "\n",
                  check=False)
    assert bad.returncode == 1 and "admin name" in bad.stderr
    assert srv.cli("admin", "list").stdout.split("\t")[0] == "root"
    log = srv.cli("admin-log", "--json").stdout
    assert '"action": "web admin created"' in log and "secret" not in log.lower()
    assert srv.cli("admin", "remove", "root").stdout == "removed admin root\n"
    missing = srv.cli("admin", "remove", "root", check=False)
    assert missing.returncode == 3
    assert "no admins" in srv.cli("admin", "list").stdout
    assert srv.cli("guard", "list").returncode == 0  # the other admin commands still work
