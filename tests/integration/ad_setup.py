"""Active Directory as a server-level test set-up (``backends.BACKENDS["active_directory"]``).

Each server gets an ``OU`` of its own on the test run's Samba DC
(``tests/peers/samba_ad.py``, LDAPS with certificate verification) and
``flavour = "active_directory"``; its users are AD user objects with the
password set the AD way (``unicodePwd`` over LDAPS, as an administrator).

The suites reuse one name (``alice@example.org``) on many servers, and a UPN
must be unique in the whole forest, so here users log in by ``mail`` (unique
within the server's OU; an explicit ``user_filter``/``login_attributes`` over
the preset, the way a site that logs in by mail address configures it) and get
a generated UPN and ``sAMAccountName``. Everything else is the preset:
``proxyAddresses``, the disabled bit, ``pwdLastSet``.
"""

from __future__ import annotations

import itertools

import ldap3
import pytest

from tests.peers import samba_ad
from tests.peers.samba_ad import SERVICE_DN, SERVICE_PASSWORD, SambaAD

from .conftest import IN_CI, Server

_sams = itertools.count(1)

MAIL_LOGIN = (
    'user_filter = "(&(objectCategory=person)(objectClass=user)(mail={login}))"\n'
    'login_attributes = ["mail"]\n'
)


def ad_table(ad: SambaAD, base_dn: str, password_file: str) -> str:
    """An ``[accounts.ldap]`` table for ``ad`` over LDAPS, logins by ``mail``."""
    return (
        "[accounts.ldap]\n"
        'flavour = "active_directory"\n'
        f'url = "{ad.ldaps_url}"\n'
        f'ca_file = "{ad.ca_file}"\n'
        f'bind_dn = "{SERVICE_DN}"\n'
        f'bind_password_file = "{password_file}"\n'
        f'base_dn = "{base_dn}"\n'
        + MAIL_LOGIN
        + "operation_timeout = 3\nconnect_timeout = 2\n"
        + "scram = true\n"  # the suites on every backend drive SCRAM too
    )


def _dc() -> SambaAD:
    why = samba_ad.available()
    if why is not None:
        if IN_CI:
            pytest.fail(f"Samba AD DC cannot run: {why} (make test installs samba-ad-dc)")
        pytest.skip(why)
    return samba_ad.shared_samba_ad()


class ActiveDirectorySetup:
    """AD users on the test run's Samba DC, with smtpgate's local overlay."""

    name = "active_directory"

    def __init__(self) -> None:
        self._ous: dict[str, str] = {}
        self._dns: dict[tuple[str, str], str] = {}

    def configure(self, server: Server) -> None:
        from .backends import set_accounts

        ad = _dc()
        ou = samba_ad.new_ou(ad)
        self._ous[str(server.root)] = ou
        pw = server.root / "ad-bind.pw"
        pw.write_text(SERVICE_PASSWORD + "\n")
        pw.chmod(0o600)
        set_accounts(server, "ldap", ad_table(ad, ou, str(pw)))

    def add_user(self, server: Server, name: str, password: str, *addresses: str) -> str:
        """A user object whose ``mail`` is ``name``, owning ``addresses`` through
        ``proxyAddresses``; returns its DN."""
        sam = f"u{next(_sams)}"
        dn = f"CN={sam},{self._ous[str(server.root)]}"
        attrs: dict[str, object] = {
            "sAMAccountName": sam,
            "userPrincipalName": f"{sam}@ad.example.test",
            "mail": name,
            "unicodePwd": f'"{password}"'.encode("utf-16-le"),
            "userAccountControl": 0x200,
        }
        if addresses:
            attrs["proxyAddresses"] = [f"smtp:{a}" for a in addresses]
        with _dc().admin() as conn:
            conn.add(dn, ["top", "person", "organizationalPerson", "user"], attrs)
        self._dns[str(server.root), name] = dn
        return dn

    def set_password(self, server: Server, name: str, password: str) -> None:
        """As a domain administrator resets it."""
        with _dc().admin() as conn:
            conn.modify(self._dns[str(server.root), name], {
                "unicodePwd": [(ldap3.MODIFY_REPLACE, [f'"{password}"'.encode("utf-16-le")])]
            })
