"""`guard.allowlist` and `guard.enabled = false` exempt mail logins, never the web
admin's: against the real `smtpgate serve`, guesses at an admin's password from an
allowlisted address, or on a server with the guard off, end in 429 at the guard's
address limit while the same address's SMTP logins stay exempt."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import PASSWORD, USER, free_port, make_server, wait_http
from tests.integration.test_web_admin import (
    ADMIN_PASSWORD,
    Site,
    _add_admin,
    _code,
    _login,
    _smtp_login,
)

GUESSER = "127.0.0.91"


@pytest.mark.parametrize("exemption", ['allowlist = ["127.0.0.0/8"]', "enabled = false"])
def test_admin_logins_are_guarded_whatever_exempts_mail_logins(
        tmp_path: Path, exemption: str) -> None:
    port = free_port()
    srv = make_server(tmp_path / "srv", f"""
[admin]
listen = "127.0.0.1:{port}"

[guard]
{exemption}
penalty_base = 0.01
penalty_max = 0.05
address_failure_limit = 3
""")
    srv.add_user(USER, PASSWORD)
    admin = _add_admin(srv, "root")
    site = Site(srv, port, admin, admin, admin)
    srv.start()
    try:
        wait_http(srv, port)
        for _ in range(3):
            assert _login(site, "root", "a guess", "000000", source=GUESSER)[0] == 401
        # The address is blocked for admin logins: the right password and code too.
        assert _login(site, "root", ADMIN_PASSWORD, _code(admin), source=GUESSER)[0] == 429
        # Its mail logins stay exempt, as the config says: wrong passwords past the
        # limit are each answered 535, and the right one logs in.
        for _ in range(4):
            assert _smtp_login(srv, USER, "a guess", source=GUESSER) == 535
        assert _smtp_login(srv, USER, PASSWORD, source=GUESSER) == 235
        # Another address is not blocked.
        assert _login(site, "root", ADMIN_PASSWORD, _code(admin))[0] == 303
    finally:
        if srv.proc is not None:
            srv.stop()
