"""``smtpgate admin add|list|remove|passwd|reset-totp``: the web admin's
administrators, from the CLI."""

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
    # Bad input, exit 2 as for a malformed account name (docs/cli.md); it was exit 1
    # with "hint: choose another name", which `admin remove` of a typo said too.
    assert bad.returncode == 2 and "Invalid value for 'NAME': an admin name" in bad.stderr
    typo = srv.cli("admin", "remove", "ro ot", check=False)
    assert typo.returncode == 2 and "choose another name" not in typo.stderr
    assert srv.cli("admin", "list").stdout.split("\t")[0] == "root"
    log = srv.cli("admin-log", "--json").stdout
    assert '"action": "web admin created"' in log and "secret" not in log.lower()
    assert srv.cli("admin", "remove", "root").stdout == "removed admin root\n"
    missing = srv.cli("admin", "remove", "root", check=False)
    assert missing.returncode == 3
    assert "no admins" in srv.cli("admin", "list").stdout
    assert srv.cli("guard", "list").returncode == 0  # the other admin commands still work


def _secret(out: str) -> str:
    uri = next(line for line in out.splitlines() if line.startswith("otpauth://totp/"))
    return urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]


def test_admin_passwd_and_reset_totp_replace_one_credential_each(tmp_path: Path) -> None:
    """Before: the only way to change an admin's password, or to replace a TOTP key
    after a lost phone, was ``admin remove`` and ``admin add``, which also replaced
    the other credential (a new phone enrolment for a password change)."""
    from smtpgate.admin import open_admin
    from smtpgate.auth.admin_store import AuditActor
    from smtpgate.config import load_config

    srv = make_server(tmp_path / "srv")
    first = _secret(srv.cli("admin", "add", "root", "--password-stdin",
                            stdin=STRONG + "\n").stdout)
    weak = srv.cli("admin", "passwd", "root", "--password-stdin", stdin="short\n", check=False)
    assert weak.returncode == 1 and "shorter than" in weak.stderr
    out = srv.cli("admin", "passwd", "root", "--password-stdin", stdin=STRONG + " new\n")
    assert out.stdout == "changed the password of admin root; its open sessions are ended\n"
    missing = srv.cli("admin", "passwd", "nobody", "--password-stdin", stdin=STRONG + "\n",
                      check=False)
    assert missing.returncode == 3 and "no admin nobody" in missing.stderr
    cfg = load_config(srv.config)
    with open_admin(cfg, AuditActor("test", "test")) as service:
        admin = service.get_web_admin("root")
        assert admin is not None and admin.totp_secret == first  # the phone stays enrolled
        assert service.verify_web_admin_password(admin, STRONG + " new")
        assert not service.verify_web_admin_password(admin, STRONG)
    second = _secret(srv.cli("admin", "reset-totp", "root").stdout)
    assert second != first and len(second) == 32
    with open_admin(cfg, AuditActor("test", "test")) as service:
        admin = service.get_web_admin("root")
        assert admin is not None and admin.totp_secret == second
        assert service.verify_web_admin_password(admin, STRONG + " new")  # the password stays
    assert srv.cli("admin", "reset-totp", "nobody", check=False).returncode == 3
    log = srv.cli("admin-log", "--json").stdout
    assert log.count('"action": "web admin credentials replaced"') == 2
    assert second not in log and first not in log
