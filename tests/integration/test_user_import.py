"""Migration end to end: a real Dovecot passwd-file (every hash made by the real
``doveadm pw``) and a sasldb2 made by the real ``saslpasswd2``, imported with the
CLI into a default install, then real logins through ``smtpgate serve``: PLAIN
with smtplib against the old hash (a wrong password refused first), and, once
that login has upgraded the account, SCRAM-SHA-256 with scramp."""

from __future__ import annotations

import base64
import json
import smtplib
import subprocess
import time
from collections.abc import Iterator

import pytest
from scramp import ScramClient

from .conftest import Server, make_server, require_tool
from .test_protection import connect

#: Every scheme the importer reads, as doveadm names it (ARGON2ID is imported as
#: our own hash; PLAIN/CLEAR are hashed at import).
SCHEMES = [
    "ARGON2ID", "ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "SSHA512",
    "SSHA256", "SSHA", "SHA", "MD5-CRYPT", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256",
    "PLAIN", "CLEAR", "SHA.hex", "PLAIN.b64",
]


def user_of(scheme: str) -> str:
    return f"{scheme.lower().replace('.', '-')}@example.org"


def password_of(scheme: str) -> str:
    # ASCII: smtplib sends PLAIN as ASCII (non-ASCII passwords: tests/unit/test_legacy_hashes.py).
    return f"old-{scheme.lower()}-Passw0rd"


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    doveadm = require_tool("doveadm")
    saslpasswd2 = require_tool("saslpasswd2")
    require_tool("db_dump")
    root = tmp_path_factory.mktemp("import")
    # Each scheme's wrong password (two refusals: smtplib tries PLAIN, then LOGIN)
    # made its next login wait the guard's penalty, 0.5 s doubling; the penalty is
    # not what these tests check, so it is cut short.
    srv = make_server(root / "srv", "\n[guard]\npenalty_base = 0.01\npenalty_max = 0.05\n")
    lines = ["# /etc/dovecot/users, as a Postfix+Dovecot set-up writes it"]
    for scheme in SCHEMES:
        field = subprocess.run(
            [doveadm, "pw", "-s", scheme, "-p", password_of(scheme)],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        user = user_of(scheme)
        lines.append(f"{user}:{field}:5000:5000::/var/vmail/example.org/{user}::"
                     f"userdb_quota_rule=*:storage=1G userdb_mail=maildir:~/Maildir")
    lines.append("broken@example.org:{SHA512-CRYPT}$6$cut-short:5000:5000::/var/vmail::")
    passwd = root / "users"
    passwd.write_text("\n".join(lines) + "\n")
    sasldb = root / "sasldb2"
    subprocess.run([saslpasswd2, "-p", "-f", str(sasldb), "-c", "-u", "example.org", "cyrus"],
                   input="cyrus-Passw0rd", text=True, check=True)

    dry = srv.cli("user", "import", "dovecot-passwd", str(passwd), "--dry-run", check=False)
    assert dry.returncode == 1 and "dry run: nothing changed" in dry.stdout
    assert srv.cli("user", "list", "--json").stdout == ""
    r = srv.cli("user", "import", "dovecot-passwd", str(passwd), check=False)
    # The corrupt line is reported by number and left out; the others are imported.
    assert r.returncode == 1
    assert f"{passwd}:{len(lines)}: broken@example.org:" in r.stderr
    assert f"{len(SCHEMES)} created" in r.stdout
    r = srv.cli("user", "import", "sasldb", str(sasldb))
    assert "created cyrus@example.org (sasldb, hashed now)" in r.stdout
    srv.start()
    yield srv
    srv.stop()


def legacy(server: Server) -> dict[str, bool]:
    rows = server.cli("user", "list", "--json").stdout.splitlines()
    return {a["name"]: a["legacy_hash"] for a in map(json.loads, rows)}


def smtplib_login(server: Server, source: str, user: str, password: str) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions, context=server.client_context(),
                          source_address=(source, 0), timeout=20) as s:
        s.login(user, password)  # smtplib picks PLAIN over STARTTLS'd / implicit TLS


def scram_login(server: Server, source: str, user: str, password: str) -> str:
    client = ScramClient(["SCRAM-SHA-256"], user, password)
    r = connect(server, source)
    try:
        first = base64.b64encode(client.get_client_first().encode()).decode()
        reply = r.cmd(f"AUTH SCRAM-SHA-256 {first}")
        assert reply.startswith("334 "), reply
        client.set_server_first(base64.b64decode(reply[4:]).decode())
        reply = r.cmd(base64.b64encode(client.get_client_final().encode()).decode())
        assert reply.startswith("334 "), reply
        client.set_server_final(base64.b64decode(reply[4:]).decode())
        return r.cmd("")
    finally:
        r.close()


def wait_upgraded(server: Server, user: str) -> None:
    deadline = time.monotonic() + 15
    while legacy(server)[user]:
        assert time.monotonic() < deadline, f"{user} still holds its legacy hash"
        time.sleep(0.1)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_imported_account_logs_in_with_its_old_password(imported: Server, scheme: str) -> None:
    user, password = user_of(scheme), password_of(scheme)
    source = f"127.0.0.{10 + SCHEMES.index(scheme)}"
    held_legacy = legacy(imported)[user]
    assert held_legacy == (scheme not in ("ARGON2ID", "PLAIN", "CLEAR", "PLAIN.b64"))
    # Negative: a wrong password against the old hash is refused.
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        smtplib_login(imported, source, user, password + "x")
    assert refused.value.smtp_code == 535
    smtplib_login(imported, source, user, password)
    wait_upgraded(imported, user)
    # The first login derived the SCRAM keys: SCRAM-SHA-256 works from now on.
    assert scram_login(imported, source, user, password).startswith("235 ")
    smtplib_login(imported, source, user, password)  # and PLAIN, against Argon2id now


def test_sasldb_account_logs_in(imported: Server) -> None:
    with pytest.raises(smtplib.SMTPAuthenticationError):
        smtplib_login(imported, "127.0.0.40", "cyrus@example.org", "wrong")
    smtplib_login(imported, "127.0.0.40", "cyrus@example.org", "cyrus-Passw0rd")
    assert scram_login(imported, "127.0.0.40", "cyrus@example.org",
                       "cyrus-Passw0rd").startswith("235 ")
