"""An unknown name's SCRAM salt is as stable as a real account's: across worker
processes, restarts and certificate renewals (docs/security.md, auth/decoy.py).

The attack: probe a name twice, some weeks apart. Real accounts keep their salt;
if unknown names' fake salts changed when the certificate was renewed (as they did
when the secret was derived from the TLS key), the prober learns which names exist.
"""

from __future__ import annotations

import base64
import smtplib
import stat
import time
from pathlib import Path

import pytest

from smtpgate.tls.certs import write_self_signed

from .backends import BACKENDS
from .conftest import PASSWORD, USER, Server, make_server

UNKNOWN = "nobody@example.org"
#: Each probe reads a salt and cancels, which the guard counts against the address
#: (test_scram_probes.py); these tests are about salts, so the guard looks away.
UNGUARDED = '\n[guard]\nallowlist = ["127.0.0.0/8"]\n'


def scram_salt(server: Server, name: str) -> tuple[str, str]:
    """(salt, iterations) the server announces to ``name`` in SCRAM-SHA-256; the
    exchange is then cancelled."""
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions, timeout=20,
                          context=server.client_context()) as s:
        s.ehlo()
        first = base64.b64encode(f"n,,n={name},r=probe0nonce".encode()).decode()
        code, answer = s.docmd("AUTH", f"SCRAM-SHA-256 {first}")
        assert code == 334, answer
        attrs = dict(p.split("=", 1) for p in base64.b64decode(answer).decode().split(","))
        s.docmd("*")  # RFC 4954 §4: cancel
        return attrs["s"], attrs["i"]


def probes(server: Server, name: str, count: int = 4) -> set[tuple[str, str]]:
    """What ``count`` connections see (the kernel spreads them over the workers)."""
    return {scram_salt(server, name) for _ in range(count)}


def test_unknown_names_salt_survives_restart_and_certificate_renewal(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv", UNGUARDED)
    srv.add_user(USER, PASSWORD)
    secret = srv.root / "decoy.key"
    assert secret.is_file()  # init made it
    secret.unlink()  # as on an install from before the file existed
    srv.start()
    try:
        unknown = probes(srv, UNKNOWN)
        known = probes(srv, USER)
    finally:
        assert srv.stop() == 0
    assert len(unknown) == 1 and len(known) == 1  # every worker says the same
    assert unknown != known
    # serve created the file once, readable by its owner only.
    assert len(secret.read_bytes()) == 32
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    created = secret.read_bytes()

    # The certificate is renewed (a new key, as an ACME client makes), then a restart.
    old_key = (srv.root / "tls" / "key.pem").read_bytes()
    write_self_signed(srv.ca, srv.root / "tls" / "key.pem", "localhost")
    assert (srv.root / "tls" / "key.pem").read_bytes() != old_key
    srv.start()
    try:
        assert probes(srv, UNKNOWN) == unknown
        assert probes(srv, USER) == known
    finally:
        assert srv.stop() == 0
    assert secret.read_bytes() == created


def scram_login(server: Server, name: str, password: str) -> str:
    """A whole SCRAM-SHA-256 login (scramp as the client); the final reply."""
    from scramp import ScramClient

    client = ScramClient(["SCRAM-SHA-256"], name, password)
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions, timeout=20,
                          context=server.client_context()) as s:
        s.ehlo()
        first = base64.b64encode(client.get_client_first().encode()).decode()
        code, answer = s.docmd("AUTH", f"SCRAM-SHA-256 {first}")
        if code != 334:
            return f"{code} {answer.decode()}"
        client.set_server_first(base64.b64decode(answer).decode())
        code, answer = s.docmd(base64.b64encode(client.get_client_final().encode()).decode())
        if code == 334:  # v=: the server's signature, then the empty response
            code, answer = s.docmd("")
        return f"{code} {answer.decode()}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "ldap"])
def test_a_spelling_of_the_domain_tells_nothing(tmp_path: Path, backend: str) -> None:
    """Issue 16: ``alice@EXAMPLE.ORG`` got alice's salt if she existed (the look-up
    lower-cases the domain) and a salt of its own if not (the decoy was keyed on the
    name as typed). Now a real and an unknown name answer every spelling alike, on
    every account backend (the look-up key is the auth service's, not the store's)."""
    setup = BACKENDS[backend]
    srv = make_server(tmp_path / "srv", UNGUARDED)
    setup.configure(srv)
    setup.add_user(srv, USER, PASSWORD)
    srv.start()
    try:
        # A directory account has SCRAM keys from its first PLAIN login on (made in
        # the background): wait until SCRAM logs in, so alice's salt is a real one.
        with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, timeout=20,
                              context=srv.client_context()) as s:
            s.login(USER, PASSWORD)
        deadline = time.monotonic() + 20
        while not scram_login(srv, USER, PASSWORD).startswith("235"):
            assert time.monotonic() < deadline, "SCRAM never worked for the real account"
            time.sleep(0.2)
        seen = {
            local: [scram_salt(srv, f"{local}@{domain}")
                    for domain in ("example.org", "EXAMPLE.ORG", "Example.Org")]
            for local in ("alice", "nobody")
        }
    finally:
        assert srv.stop() == 0
    for local, answers in seen.items():
        assert len(set(answers)) == 1, (local, answers)  # one salt, one count
    assert seen["alice"][0][1] == seen["nobody"][0][1]  # the same iteration count


def test_a_decoy_secret_that_cannot_be_read_stops_the_start_naming_the_key(
    tmp_path: Path,
) -> None:
    srv = make_server(tmp_path / "srv")
    (srv.root / "decoy.key").write_bytes(b"short")
    done = srv.cli("serve", check=False)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert "cannot start: auth.decoy_secret_file: " in errors[0]
    assert "holds 5 bytes" in errors[0] and "Traceback" not in done.stderr
