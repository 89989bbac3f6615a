"""The account backends the server-level suites run against, one set-up each.

``tests/integration/test_protection.py`` runs once per entry of ``BACKENDS``
(its ``backend`` fixture is parametrised over them): the guard, rate limits,
sender ownership, app passwords and access rules must hold whatever keeps
the accounts.

A set-up turns a server made by ``conftest.make_server`` (the config ``smtpgate
init`` writes, SQLite) into one on its backend, before the server starts:

- ``configure(server)``: start or reuse what the backend needs (session-wide,
  once: a database server is started once per test process, see
  ``tests/postgres_server.py``), give this server its own empty store (a new
  database, a new subtree), and write its ``[accounts]`` keys into
  ``server.config``;
- ``add_user(server, name, password)``: make an account that logs in with
  ``password``. For a backend smtpgate manages it is ``smtpgate user add``; for
  a directory (LDAP, Active Directory) it is an entry added the directory's own
  way, since smtpgate never stores a directory password. Everything else the
  suite does (``user lock``, aliases, app passwords, rates) goes through the
  ``smtpgate user ...`` commands, as an administrator would.

To add a backend (LDAP, Active Directory): write a class with ``name``,
``configure`` and ``add_user``, skip (or, under CI, fail) in ``configure`` when
its server cannot run here, and add it to ``BACKENDS``. Keep ``configure``
cheap: it runs for every test of the suite.
"""

from __future__ import annotations

from typing import Protocol

from .ad_setup import ActiveDirectorySetup
from .conftest import Server
from .ldap_setup import LdapSetup


class BackendSetup(Protocol):
    name: str

    def configure(self, server: Server) -> None:
        """Point ``server``'s config at a fresh, empty store of this backend."""
        ...

    def add_user(self, server: Server, name: str, password: str) -> None:
        """An account ``name`` that logs in with ``password``."""
        ...

    def set_password(self, server: Server, name: str, password: str) -> None:
        """Change the password the backend's own way (``user passwd``; a directory's
        own tool for a directory)."""
        ...


def set_accounts(server: Server, backend: str, table: str) -> None:
    """Set ``[accounts].backend`` and append the backend's sub-table to the config."""
    text = server.config.read_text()
    assert "\n[accounts]\n" in text, "make_server's config has an [accounts] table"
    text = text.replace("\n[accounts]\n", f'\n[accounts]\nbackend = "{backend}"\n', 1)
    server.config.write_text(text + "\n" + table)


class SqliteSetup:
    """The default install: nothing to do."""

    name = "sqlite"

    def configure(self, server: Server) -> None:
        pass

    def add_user(self, server: Server, name: str, password: str) -> None:
        server.add_user(name, password)

    def set_password(self, server: Server, name: str, password: str) -> None:
        server.cli("user", "passwd", name, "--password-stdin", stdin=password + "\n")


class PostgresSetup:
    """A database of its own on the tests' PostgreSQL server, migrated with
    ``smtpgate db migrate`` as an administrator would."""

    name = "postgresql"

    def configure(self, server: Server) -> None:
        from tests.postgres_server import shared_cluster

        cluster = shared_cluster()
        dsn = cluster.create_database()
        cluster.write_password_file(server.root)
        set_accounts(server, "postgresql", (
            "[accounts.postgresql]\n"
            f'dsn = "{dsn}"\n'
            'password_file = "pg.password"\n'
        ))
        out = server.cli("db", "migrate", check=False)
        assert out.returncode == 0, f"smtpgate db migrate: {out.stderr}"

    def add_user(self, server: Server, name: str, password: str) -> None:
        server.add_user(name, password)

    def set_password(self, server: Server, name: str, password: str) -> None:
        server.cli("user", "passwd", name, "--password-stdin", stdin=password + "\n")


BACKENDS: dict[str, BackendSetup] = {
    "sqlite": SqliteSetup(),
    "postgresql": PostgresSetup(),
    "ldap": LdapSetup(),
    "active_directory": ActiveDirectorySetup(),
}
