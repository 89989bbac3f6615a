"""Our SCRAM client (sasl/scram.py) against an independent server: GNU SASL's.

``gsasl --server -m SCRAM-SHA-256`` without --imap/--smtp speaks the bare
protocol on stdin/stdout: it prints each server message as one base64 line and
reads each client message as one base64 line (an empty line is an empty message).
The server takes the password from ``-p``, so the test knows it; gsasl derives
the salted password itself, with its own PBKDF2 and its own SASLprep.

And ``gsasl --mkpasswd``, an independent derivation of SCRAM's StoredKey and
ServerKey, checks the keys ``smtpgate user add`` stores.
"""

from __future__ import annotations

import base64
import os
import selectors
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.auth.credentials import decode_scram
from smtpgate.auth.store import SqliteAccountStore
from smtpgate.config import load_config
from smtpgate.sasl.base import ClientAuthError
from smtpgate.sasl.scram import ScramClient, scram_credentials_from_password

from .conftest import make_server, require_tool

pytestmark = pytest.mark.interop

READ_TIMEOUT = 30.0
MECHS = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


class GsaslServer:
    """One ``gsasl --server`` process; lines in, lines out, bounded waits."""

    def __init__(self, mech: str, password: str, iterations: int = 4096) -> None:
        gsasl = require_tool("gsasl")
        self.proc = subprocess.Popen(
            [gsasl, "--server", "-m", mech, "-p", password, f"--iteration-count={iterations}",
             "--no-starttls"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self._buf = b""

        # gsasl names the mechanism it runs on the first line of stdout.
        assert self.readline() == mech.encode()

    def readline(self) -> bytes | None:
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            if not self._sel.select(READ_TIMEOUT):
                raise TimeoutError(f"gsasl said nothing for {READ_TIMEOUT}s")
            chunk = self.proc.stdout.read()
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.strip()

    def read(self) -> bytes | None:
        """The next server message (decoded), or None if the server exited."""
        line = self.readline()
        return None if line is None else base64.b64decode(line, validate=True)

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(base64.b64encode(data) + b"\n")
        self.proc.stdin.flush()

    def finish(self) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = self.proc.wait(timeout=READ_TIMEOUT)
        return rc, self.proc.stderr.read().decode("utf-8", "replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=READ_TIMEOUT)
        self._sel.close()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass


@pytest.fixture
def gsasl_server() -> Iterator[list[GsaslServer]]:
    started: list[GsaslServer] = []
    yield started
    for s in started:
        s.kill()


# A SASLprep case: U+00AA (feminine ordinal) maps to "a" under NFKC, U+2003 (em
# space) to a space; both sides must prepare the password the same way.
PASSWORDS = ["Lantern-Quartz-Harbor-58", "p\u00aass\u2003w\u00f6rd"]


@pytest.mark.parametrize("password", PASSWORDS, ids=["ascii", "saslprep"])
@pytest.mark.parametrize("mech", list(MECHS))
def test_our_scram_client_against_gsasl_server(
    gsasl_server: list[GsaslServer], mech: str, password: str
) -> None:
    server = GsaslServer(mech, password)
    gsasl_server.append(server)
    client = ScramClient(MECHS[mech], "alice@example.org", password)
    assert server.read() == b""  # client-first mechanism: an empty first challenge
    first = client.start()
    assert first is not None and first.startswith(b"n,,")  # no TLS here: 'n'
    server.write(first)
    server_first = server.read()
    assert server_first is not None and b",i=4096" in server_first
    server.write(client.step(server_first))
    server_final = server.read()
    assert server_final is not None and server_final.startswith(b"v=")
    assert client.step(server_final) == b""
    assert client.done  # gsasl's ServerSignature verified by our client
    server.write(b"")
    rc, err = server.finish()
    assert rc == 0, err
    assert "Server authentication finished (client trusted)" in err


@pytest.mark.parametrize("mech", list(MECHS))
def test_gsasl_server_refuses_our_client_with_wrong_password(
    gsasl_server: list[GsaslServer], mech: str
) -> None:
    server = GsaslServer(mech, "Lantern-Quartz-Harbor-58")
    gsasl_server.append(server)
    client = ScramClient(MECHS[mech], "alice@example.org", "Not-The-Password-1")
    assert server.read() == b""
    first = client.start()
    assert first is not None
    server.write(first)
    server_first = server.read()
    assert server_first is not None
    server.write(client.step(server_first))
    answer = server.read()
    rc, err = server.finish()
    assert rc != 0 and "client trusted" not in err
    if answer is not None:  # a server-final, if any, must not verify
        with pytest.raises(ClientAuthError):
            client.step(answer)
    assert not client.done


@pytest.mark.parametrize("mech", list(MECHS))
def test_our_client_rejects_forged_server_signature(
    gsasl_server: list[GsaslServer], mech: str
) -> None:
    """Two exchanges with two gsasl servers (same password, other nonces and salts):
    gsasl's ServerSignature for one exchange does not authenticate the other
    (RFC 5802 §5.1 v=): our client refuses it and accepts the right one."""
    password = "Lantern-Quartz-Harbor-58"
    a, b = GsaslServer(mech, password), GsaslServer(mech, password)
    gsasl_server.extend([a, b])
    ca = ScramClient(MECHS[mech], "alice@example.org", password)
    cb = ScramClient(MECHS[mech], "alice@example.org", password)
    finals = []
    for server, client in ((a, ca), (b, cb)):
        assert server.read() == b""
        first = client.start()
        assert first is not None
        server.write(first)
        server_first = server.read()
        assert server_first is not None
        server.write(client.step(server_first))
        finals.append(server.read())
    assert finals[0] and finals[1] and finals[0] != finals[1]
    with pytest.raises(ClientAuthError):
        ca.step(finals[1])  # b's signature for a's exchange
    assert cb.step(finals[1]) == b"" and cb.done


def mkpasswd(mech: str, password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    gsasl = require_tool("gsasl")
    out = subprocess.run(
        [gsasl, "--mkpasswd", "-m", mech, "-p", password,
         f"--salt={base64.b64encode(salt).decode()}", f"--iteration-count={iterations}"],
        capture_output=True, text=True, check=True, timeout=READ_TIMEOUT,
    ).stdout.strip()  # fmt: skip
    # {SCRAM-SHA-256}count,salt,stored-key,server-key
    assert out.startswith("{" + mech + "}"), out
    count, salt_b64, stored, server = out.split("}", 1)[1].split(",")[:4]
    assert int(count) == iterations and base64.b64decode(salt_b64) == salt
    return base64.b64decode(stored), base64.b64decode(server)


@pytest.mark.parametrize("mech", list(MECHS))
def test_stored_keys_match_gsasl_mkpasswd(mech: str) -> None:
    salt = b"0123456789abcdef"
    ours = scram_credentials_from_password("Lantern-Quartz-Harbor-58", MECHS[mech], 4096, salt)
    assert (ours.stored_key, ours.server_key) == mkpasswd(
        mech, "Lantern-Quartz-Harbor-58", salt, 4096
    )


def test_keys_stored_by_user_add_match_gsasl_mkpasswd(tmp_path: Path) -> None:
    """`smtpgate user add` stores, never the password, but keys that an independent
    implementation derives identically from it (with the stored salt and count)."""
    srv = make_server(tmp_path / "srv")
    password = "Lantern-Quartz-Harbor-58"
    srv.add_user("alice@example.org", password)
    cfg = load_config(srv.config)
    store = SqliteAccountStore(cfg.path(cfg.accounts.database), cfg.accounts)
    try:
        for mech, scheme in (("SCRAM-SHA-1", "scram-sha-1"), ("SCRAM-SHA-256", "scram-sha-256")):
            data = store.get_credential("alice@example.org", scheme)
            assert data is not None and password not in data
            creds = decode_scram(data)
            # The issue: a default of at least 10,000 iterations.
            assert creds.iterations == cfg.accounts.scram_iterations >= 10_000
            assert (creds.stored_key, creds.server_key) == mkpasswd(
                mech, password, creds.salt, creds.iterations
            )
    finally:
        store.close()
