"""The LDAP backend in the directory contract suite: ``SEED`` loaded into a real
slapd (``tests/peers/slapd.py``, over StartTLS) plus smtpgate's local overlay.

What the directory keeps goes into LDIF (the entry, its password, and one of
alice's addresses as ``mailLocalAddress``); what smtpgate adds (the other alias,
granted domains, access rules, rates, mechanism policy, bob's lock, app
passwords) goes through the admin service into the overlay, as `smtpgate user
...` does. CRAM-MD5 is never available for directory accounts, so dave's opt-in
is not made (``offers_cram_md5``). A password changed "elsewhere" is changed
with ``ldappasswd``.
"""

from __future__ import annotations

from pathlib import Path

from smtpgate.admin import AccountAdmin
from smtpgate.auth.admin_store import AccountStore
from smtpgate.auth.ldap_directory import LdapDirectory
from smtpgate.auth.ldap_store import LdapAccountStore
from smtpgate.auth.store import SqliteAccountStore
from smtpgate.config import LdapConfig
from tests.contract.directories import ACTOR, ALICE, CFG, SEED, SeedAccount, SqliteHarness
from tests.peers.slapd import SERVICE_DN, SERVICE_PW, new_ou, person_ldif, shared_slapd

#: Alice's address kept in the directory; her other alias is granted locally.
DIRECTORY_ADDRESS = "sales@example.org"


class LdapHarness(SqliteHarness):
    name = "ldap"
    offers_cram_md5 = False

    def __init__(self, tmp_path: Path) -> None:
        self._slapd = shared_slapd()
        ou = new_ou(self._slapd)
        self._dns: dict[str, str] = {}
        for i, a in enumerate(SEED):
            dn = f"uid=u{i},{ou}"
            self._dns[a.name] = dn
            extra = [f"mailLocalAddress: {DIRECTORY_ADDRESS}"] if a.name == ALICE else []
            self._slapd.add(person_ldif(dn, a.name, a.password, *extra))
        self._cfg = LdapConfig(
            url=self._slapd.url, starttls=True, ca_file=self._slapd.ca, bind_dn=SERVICE_DN,
            bind_password_file=self._slapd.root / "service.pw", base_dn=ou,
            address_attributes=["mail", "mailLocalAddress"], operation_timeout=5,
            # Two login names per entry (the address and the uid), so the suite sees
            # both resolve to one account (the guard counts under it).
            user_filter="(&(objectClass=inetOrgPerson)(|(mail={login})(uid={login})))",
            login_attributes=["mail", "uid"],
        )
        self._path = tmp_path / "accounts.sqlite"
        self._admin = AccountAdmin(self._new_store(), CFG, actor=ACTOR)
        self._opened = []
        for a in SEED:
            self._load(a)

    def _load(self, a: SeedAccount) -> None:
        admin = self._admin
        if a.mechanisms is not None:
            admin.set_allowed_mechanisms(a.name, a.mechanisms)
        local = [x for x in a.aliases if x != DIRECTORY_ADDRESS]
        super()._load_settings(a, aliases=local)

    def _new_store(self) -> AccountStore:
        directory = LdapDirectory(self._cfg, bind_password=SERVICE_PW, ca_file=self._slapd.ca)
        return LdapAccountStore(directory, SqliteAccountStore(self._path, CFG))

    def change_password(self, account: str, password: str) -> None:
        self._slapd.set_password(self._dns[account], password)

    def other_logins(self, account: str) -> list[str]:
        return [self._dns[account].split(",")[0].split("=", 1)[1]]  # the uid
