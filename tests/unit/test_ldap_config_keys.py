"""``[accounts.ldap]`` mistakes that used to pass ``config check`` and ``serve`` and
then failed every login: the error names the key at load time instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpgate.config import parse_config

from .config_support import MINIMAL, config_dir, problems

BASE = MINIMAL + """[accounts]
backend = "ldap"
"""

GOOD = {
    "url": '"ldap://127.0.0.1:389"',
    "starttls": "true",
    "base_dn": '"ou=people,dc=example,dc=org"',
}


def ldap(**keys: str) -> str:
    return BASE + "[accounts.ldap]\n" + "".join(
        f"{k} = {v}\n" for k, v in {**GOOD, **keys}.items())


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return config_dir(tmp_path)


@pytest.mark.parametrize(("key", "value"), [
    # An unbalanced filter: every login was 454 "LDAP directory ... unavailable:
    # LDAPInvalidFilterError" with the directory up and config check saying OK.
    ("user_filter", '"(&(objectClass=inetOrgPerson)(mail={login})"'),
    ("user_filter", '"mail={login}"'),
    ("enabled_filter", '"(!(pwdAccountLockedTime=*)"'),
    ("group_filter", '"(memberOf=cn=mail,ou=groups,dc=example,dc=org"'),
    ("group_filter", '"(a=1)(b=2)"'),
])
def test_a_filter_that_is_not_one_names_its_key(base: Path, key: str, value: str) -> None:
    found = problems(ldap(**{key: value}), base)
    assert f"accounts.ldap.{key}" in found
    assert "not an LDAP filter" in found[f"accounts.ldap.{key}"]


@pytest.mark.parametrize("url", [
    # Was "accounts.ldap: could not be checked: ValueError: Port could not be cast ..."
    '"ldap://127.0.0.1:abc"',
    '"ldap://127.0.0.1:99999"',
    '"ldap://127.0.0.1:0"',
    '"ldapx://127.0.0.1:389"',
    '"127.0.0.1:389"',
    # A search base in the URL was silently ignored (base_dn is what is searched).
    '"ldap://127.0.0.1:389/dc=example,dc=org"',
])
def test_a_bad_url_names_accounts_ldap_url(base: Path, url: str) -> None:
    assert "accounts.ldap.url" in problems(ldap(url=url), base)


@pytest.mark.parametrize("keys", [
    {},
    {"url": '"ldaps://[::1]:636"', "starttls": "false"},
    {"url": '"ldap://127.0.0.1/"'},
    {"enabled_filter": '"(!(userAccountControl:1.2.840.113556.1.4.803:=2))"',
     "group_filter": '"(memberOf:1.2.840.113556.1.4.1941:=CN=Mail Users,DC=example,DC=org)"'},
    {"flavour": '"active_directory"', "group": '"CN=Mail (EU),OU=Groups,DC=example,DC=org"'},
])
def test_good_settings_still_load(base: Path, keys: dict[str, str]) -> None:
    parse_config(ldap(**keys), base)


def test_a_directory_down_at_start_up_is_one_warning(
    base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """open_ldap_store logged its own "... unavailable: ... (logins get 454 4.7.0 until
    it answers)" after the directory's outage log had written the outage's first line
    (auth/outage_log.py): two WARNINGs for one refused connection."""
    import gc
    import logging
    import warnings

    from smtpgate.auth.ldap_store import open_ldap_store

    # Nothing listens on this port (this clone's helper range): refused at once.
    cfg = parse_config(ldap(url='"ldap://127.0.0.1:62502"', starttls="false",
                            connect_timeout="1", operation_timeout="1"), base)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        # The socket of the refused connection is closed, not left to the garbage
        # collector (ldap3 keeps it: one descriptor per attempt while LDAP is down).
        warnings.simplefilter("error", ResourceWarning)
        store = open_ldap_store(cfg)
        store.close()
        gc.collect()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert lines[0].startswith("LDAP directory ldap://127.0.0.1:62502 unavailable: ")
    assert lines[0].endswith(" (logins get 454 4.7.0 until it answers)")


@pytest.mark.parametrize("url", [
    '"ldap://ldap.example.org:389"',
    # URL schemes are case-insensitive (RFC 3986 §3.1) and the directory client
    # reads them so: an upper-case ldap:// was cleartext to the remote host, yet
    # passed as if it were not, without allow_cleartext.
    '"LDAP://ldap.example.org:389"',
    '"Ldap://ldap.example.org"',
])
def test_cleartext_to_a_remote_directory_is_refused_in_any_letter_case(
    base: Path, url: str
) -> None:
    found = problems(ldap(url=url, starttls="false"), base)
    assert "cleartext to a remote host" in found["accounts.ldap.url"]


def test_an_upper_case_ldaps_url_is_tls(base: Path) -> None:
    cfg = parse_config(ldap(url='"LDAPS://ldap.example.org"', starttls="false"), base)
    assert not cfg.accounts.ldap.cleartext


@pytest.mark.parametrize("url", [
    '"ldaps://admin:s3cret@ldap.example.org"',
    '"ldap://cn=admin,dc=example,dc=org:s3cret@127.0.0.1:389"',
])
def test_credentials_in_the_url_are_refused_without_repeating_them(base: Path, url: str) -> None:
    """A user and password before '@' were accepted and never used to bind, and the
    url is in every directory log line, config check and status."""
    found = problems(ldap(url=url), base)
    assert "bind_password_file" in found["accounts.ldap.url"]
    assert "s3cret" not in " ".join(found.values())
