"""The directory flavours: what ``flavour = "active_directory"`` fills in, what an
explicit key keeps, the group filter it builds, and the escaping of filter values."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from smtpgate.auth.ldap_directory import account_expired
from smtpgate.config import LdapConfig
from smtpgate.ldap_presets import (
    AD_PRESET,
    BIT_AND,
    IN_CHAIN,
    apply_preset,
    escape_filter_value,
    group_filter,
)

AD_URL = "ldaps://dc1.example.org"
GROUP = "CN=Mail Users,OU=Groups,DC=example,DC=org"


def test_active_directory_fills_every_preset_key() -> None:
    cfg = LdapConfig.model_validate({"url": AD_URL, "flavour": "active_directory"})
    assert cfg.user_filter == (
        "(&(objectCategory=person)(objectClass=user)"
        "(|(userPrincipalName={login})(sAMAccountName={login})))"
    )
    assert cfg.login_attributes == ["userPrincipalName", "sAMAccountName"]
    assert cfg.address_attributes == ["mail", "proxyAddresses"]
    assert cfg.address_prefixes == ["smtp:"]
    assert cfg.enabled_filter == f"(!(userAccountControl:{BIT_AND}:=2))"
    assert cfg.password_changed_attribute == "pwdLastSet"
    assert cfg.group_filter == ""


def test_explicit_keys_override_the_preset() -> None:
    cfg = LdapConfig.model_validate({
        "url": AD_URL, "flavour": "active_directory",
        "user_filter": "(&(objectClass=user)(mail={login}))",
        "login_attributes": ["mail"],
        "enabled_filter": "",
    })
    assert cfg.user_filter == "(&(objectClass=user)(mail={login}))"
    assert cfg.login_attributes == ["mail"]
    assert cfg.enabled_filter == ""  # an explicit empty value is kept too
    assert cfg.address_prefixes == ["smtp:"]  # the rest still comes from the preset


def test_openldap_flavour_changes_nothing() -> None:
    assert LdapConfig.model_validate({"url": AD_URL}) == LdapConfig.model_validate(
        {"url": AD_URL, "flavour": "openldap"}
    )
    cfg = LdapConfig.model_validate({"url": AD_URL})
    assert cfg.address_prefixes == [] and cfg.password_changed_attribute == "auto"


def test_the_preset_is_not_shared_between_configs() -> None:
    a = LdapConfig.model_validate({"url": AD_URL, "flavour": "active_directory"})
    a.address_attributes.append("otherMailbox")
    b = LdapConfig.model_validate({"url": AD_URL, "flavour": "active_directory"})
    assert b.address_attributes == ["mail", "proxyAddresses"]
    assert AD_PRESET["address_attributes"] == ["mail", "proxyAddresses"]


def test_group_becomes_an_in_chain_filter_for_active_directory() -> None:
    cfg = LdapConfig.model_validate({"url": AD_URL, "flavour": "active_directory", "group": GROUP})
    assert cfg.group_filter == f"(memberOf:{IN_CHAIN}:={GROUP})"


def test_group_is_matched_directly_for_openldap() -> None:
    cfg = LdapConfig.model_validate({"url": AD_URL, "group": "cn=mail,ou=groups,dc=example,dc=org"})
    assert cfg.group_filter == "(memberOf=cn=mail,ou=groups,dc=example,dc=org)"


def test_group_dn_special_characters_are_escaped_in_the_filter() -> None:
    dn = r"CN=Mail (EU)\, all*,OU=Groups,DC=example,DC=org"
    assert group_filter("active_directory", dn) == (
        rf"(memberOf:{IN_CHAIN}:=CN=Mail \28EU\29\5c, all\2a,OU=Groups,DC=example,DC=org)"
    )


@pytest.mark.parametrize("data, message", [
    ({"flavour": "samba"}, "is not one of openldap, active_directory"),
    ({"group": "not a dn"}, "accounts.ldap.group: 'not a dn' is not a DN"),
    ({"group": GROUP, "group_filter": "(memberOf=x)"}, "set group or group_filter, not both"),
])
def test_bad_flavour_settings_are_precise_errors(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        LdapConfig.model_validate({"url": AD_URL, **data})


def test_apply_preset_leaves_non_tables_to_the_validator() -> None:
    assert apply_preset("ldaps://x") == "ldaps://x"
    with pytest.raises(ValidationError):
        LdapConfig.model_validate("ldaps://x")


@pytest.mark.parametrize("login, escaped", [
    ("*", r"\2a"),
    ("alice)(sAMAccountName=*", r"alice\29\28sAMAccountName=\2a"),
    ("alice\0", r"alice\00"),
    ("a\\b", r"a\5cb"),
    ("élise@example.org", "élise@example.org"),
])
def test_filter_values_are_escaped(login: str, escaped: str) -> None:
    assert escape_filter_value(login) == escaped
    built = AD_PRESET["user_filter"]
    assert isinstance(built, str)
    flt = built.replace("{login}", escape_filter_value(login))
    # The filter's structure is the preset's whatever the login holds.
    assert flt.count("(") == flt.count(")") == built.count("(")


def test_a_server_without_ldap_accounts_does_not_load_ldap3(tmp_path: Path) -> None:
    """``init``'s config (SQLite accounts) must not pull ldap3 into every process
    (5.5 MB each, bench/README.md); a group DN does, to parse it."""
    smtpgate = Path(sys.executable).parent / "smtpgate"
    subprocess.run([str(smtpgate), "init", "--dir", str(tmp_path), "--no-demo"],
                   capture_output=True, check=True)
    probe = (
        "import sys, pathlib\n"
        "from smtpgate.config import LdapConfig, load_config\n"
        f"load_config(pathlib.Path({str(tmp_path / 'smtpgate.toml')!r}))\n"
        "LdapConfig.model_validate({'url': 'ldaps://x'})\n"
        "print('ldap3' in sys.modules)\n"
        "LdapConfig.model_validate({'url': 'ldaps://x', 'group': 'CN=g,DC=x'})\n"
        "print('ldap3' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "True"]


def test_active_directory_refuses_expired_locked_out_and_password_expired_accounts() -> None:
    cfg = LdapConfig.model_validate({"url": AD_URL, "flavour": "active_directory"})
    assert cfg.expires_attribute == "accountExpires"
    assert cfg.locked_flags_attribute == "msDS-User-Account-Control-Computed"
    assert cfg.locked_flags == 0x10 | 0x800000  # UF_LOCKOUT | UF_PASSWORD_EXPIRED
    plain = LdapConfig.model_validate({"url": AD_URL})
    assert (plain.expires_attribute, plain.locked_flags_attribute) == ("", "")


@pytest.mark.parametrize(("value", "expired"), [
    ("0", False),                       # never
    ("9223372036854775807", False),     # never
    ("1", True),                        # 1601
    ("133485408000000000", True),       # 2024-01-01
    ("159725088000000000", False),      # 2107
    ("2650467743999999999", False),     # past the year 9999: as never
    ("", None),
    ("soon", None),                     # unreadable: the caller refuses
])
def test_account_expires_is_read_as_a_filetime(value: str, expired: bool | None) -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert account_expired(value, now) is expired
