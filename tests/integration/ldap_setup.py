"""The LDAP backend as a server-level test set-up (``backends.BACKENDS["ldap"]``).

Each server gets an ``ou`` of its own on the test process's slapd
(``tests/peers/slapd.py``, StartTLS with certificate verification), and its
users are directory entries with ``{SSHA}`` passwords: smtpgate never stores a
directory password, so ``smtpgate user add`` is not how they are made.
"""

from __future__ import annotations

from tests.peers.slapd import SERVICE_DN, Slapd, new_ou, person_ldif, shared_slapd

from .conftest import Server


def ldap_table(slapd: Slapd, base_dn: str, **extra: str) -> str:
    """An ``[accounts.ldap]`` table for ``slapd`` over StartTLS."""
    lines = [
        "[accounts.ldap]",
        f'url = "{slapd.url}"',
        "starttls = true",
        f'ca_file = "{slapd.ca}"',
        f'bind_dn = "{SERVICE_DN}"',
        f'bind_password_file = "{slapd.root / "service.pw"}"',
        f'base_dn = "{base_dn}"',
        'address_attributes = ["mail", "mailLocalAddress"]',
        "operation_timeout = 3",
        "connect_timeout = 2",
        *(f"{k} = {v}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"


class LdapSetup:
    """Directory users on the tests' slapd, with smtpgate's local overlay."""

    name = "ldap"

    def __init__(self, *, scram: bool | None = True) -> None:
        #: ``[accounts.ldap] scram``: true by default here, since the suites run on
        #: every backend (``backends.BACKENDS``) drive SCRAM too; None leaves the key
        #: out, as a default install does.
        self.scram = scram
        self._ous: dict[str, str] = {}
        self._dns: dict[tuple[str, str], str] = {}

    def configure(self, server: Server) -> None:
        from .backends import set_accounts

        slapd = shared_slapd()
        ou = new_ou(slapd)
        self._ous[str(server.root)] = ou
        extra = {} if self.scram is None else {"scram": str(self.scram).lower()}
        set_accounts(server, "ldap", ldap_table(slapd, ou, **extra))

    def add_user(self, server: Server, name: str, password: str, *addresses: str) -> str:
        """A directory entry for ``name`` owning ``addresses`` too; returns its DN."""
        ou = self._ous[str(server.root)]
        dn = f"uid={name.replace('@', '.')},{ou}"
        extra = [f"mailLocalAddress: {a}" for a in addresses]
        shared_slapd().add(person_ldif(dn, name, password, *extra))
        self._dns[str(server.root), name] = dn
        return dn

    def set_password(self, server: Server, name: str, password: str) -> None:
        """As a directory administrator does: ldappasswd."""
        shared_slapd().set_password(self._dns[str(server.root), name], password)
