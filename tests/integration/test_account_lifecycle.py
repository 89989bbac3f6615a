"""Account management as an attacker meets it: an account removed and added again
under its name is a new account, and nothing of the old one logs in to it."""

from __future__ import annotations

from pathlib import Path

from .conftest import Server, make_server
from .test_attacks import plain, tls_session

NAME = "carol@example.org"
OLD = "Old-Quartz-Lantern-77"
NEW = "New-Birch-Compass-93"


def auth_reply(srv: Server, password: str) -> str:
    r = tls_session(srv)
    try:
        return r.cmd(f"AUTH PLAIN {plain(NAME, password)}")
    finally:
        r.close()


def test_the_old_password_does_not_log_in_to_an_account_added_again(tmp_path: Path) -> None:
    """A leaver's address given to a newcomer (`user remove`, then `user add` with a
    new password): the leaver's password was still a credential-cache hit, 235, for
    up to accounts.cache_ttl (an hour), since both accounts had generation 0."""
    srv = make_server(tmp_path / "srv", "\n[server]\nworkers = 1\n")  # one cache
    srv.add_user(NAME, OLD)
    srv.start()
    try:
        for _ in range(2):  # the second login is a cache hit
            assert auth_reply(srv, OLD).startswith("235 ")
        srv.cli("user", "remove", NAME)
        assert auth_reply(srv, OLD).startswith("535 ")
        srv.add_user(NAME, NEW)
        assert auth_reply(srv, OLD).startswith("535 5.7.8 ")
        assert auth_reply(srv, NEW).startswith("235 ")
        assert auth_reply(srv, OLD).startswith("535 5.7.8 ")
    finally:
        srv.stop()


def test_domain_grant_and_revoke_on_the_command_line_name_what_is_wrong(tmp_path: Path) -> None:
    """`user domain grant` with an empty name or an address said "'x@' is not an
    address" or "'x@bob' before the last '@' ..." (a made-up address); `user domain
    revoke` by the A-label of a grant said "not granted" and left it in force."""
    srv = make_server(tmp_path / "srv")
    srv.add_user(NAME, OLD)
    for given, said in (("", "'' is no domain name"),
                        ("bob@evil.example", "'bob@evil.example' is an address, not a domain")):
        done = srv.cli("user", "domain", "grant", NAME, given, check=False)
        assert done.returncode == 2 and said in done.stderr, done.stderr
        assert "x@" not in done.stderr and "Traceback" not in done.stderr
    srv.cli("user", "domain", "grant", NAME, "bücher.example")
    done = srv.cli("user", "domain", "revoke", NAME, "xn--bcher-kva.example", check=False)
    assert done.returncode == 0, done.stderr
    assert "granted domains:  -" in srv.cli("user", "show", NAME).stdout
