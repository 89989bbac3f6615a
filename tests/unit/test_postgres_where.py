"""How log lines and ``db migrate`` name the account database (``postgres_schema.where``):
every server of a failover DSN with its own port, never a password."""

from __future__ import annotations

import pytest

from smtpgate.auth.postgres_schema import where
from smtpgate.config import PostgresConfig


@pytest.mark.parametrize(("dsn", "named"), [
    ("postgresql://smtpgate@db1/mail", "PostgreSQL database mail on db1"),
    ("postgresql://smtpgate@db1:5433/mail", "PostgreSQL database mail on db1:5433"),
    # docs/scale-out.md's failover DSN: each host with its port, in libpq's order
    # (was "on db1,db2:5432,5433", which names neither server).
    ("postgresql://smtpgate@db1:5432,db2:5433/mail?target_session_attrs=read-write",
     "PostgreSQL database mail on db1:5432,db2:5433"),
    ("host=db1,db2 port=6432 dbname=mail user=smtpgate",
     "PostgreSQL database mail on db1:6432,db2:6432"),
    ("postgresql://smtpgate@db1,db2/mail", "PostgreSQL database mail on db1,db2"),
    ("postgresql://smtpgate@[::1]:5433/mail", "PostgreSQL database mail on [::1]:5433"),
    ("host=/run/postgresql dbname=mail user=smtpgate",
     "PostgreSQL database mail on /run/postgresql"),
    ("dbname=mail user=smtpgate", "PostgreSQL database mail on local socket"),
])
def test_where_names_each_server_with_its_port(dsn: str, named: str) -> None:
    assert where(PostgresConfig(dsn=dsn)) == named
