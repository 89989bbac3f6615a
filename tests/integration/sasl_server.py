"""The server the SASL interop tests share: every mechanism on, a local OAuth issuer.

One server per test module (``sasl_server`` fixture in the test modules): start-up
costs a second or two, and the tests only read from it except for the accounts
they create. Listeners:

- ``submission`` (STARTTLS) and ``submissions`` (implicit TLS): every mechanism,
  including CRAM-MD5, OAUTHBEARER and XOAUTH2;
- ``xoauth2-starttls`` / ``xoauth2-implicit``: only XOAUTH2 (curl 7.88 prefers
  OAUTHBEARER whenever it is offered);
- ``noplus``: SCRAM without the -PLUS variants (the 'y' flag is legitimate there);
- ``clear``: ``auth_in_clear = true``, to try -PLUS before TLS.

The guard (brute-force protection) is switched off: the negative tests make many
failed logins from 127.0.0.1 on purpose, and what they check is each mechanism's
refusal, not the lockout policy (tested elsewhere).
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtpgate.mechanism_facts import KNOWN

from .conftest import LOGIN_IN_RECEIVED, Server, free_port, make_server
from .oauth_issuer import SCOPE, LocalIssuer

# Every mechanism smtpgate knows, strongest first (the config's own list).
ALL_MECHANISMS = list(KNOWN)

#: No spaces: gsasl behind socat gets its arguments through socat's EXEC parser.
#: Long and unguessable enough for the password policy of `user add`.
USER = "alice@example.org"
PASSWORD = "Lantern-Quartz-Harbor-58"
#: An account that never opts in to CRAM-MD5.
PLAIN_USER = "bob@example.org"
PLAIN_PASSWORD = "Copper-Meadow-Violin-73"
#: An account restricted to SCRAM-SHA-256 (and so its -PLUS variant).
SCRAM_ONLY_USER = "carol@example.org"
SCRAM_ONLY_PASSWORD = "Thistle-Orbit-Canvas-41"


@dataclass
class SaslServer:
    server: Server
    issuer: LocalIssuer
    ports: dict[str, int]

    @property
    def ca(self) -> Path:
        return self.server.ca

    @property
    def submission(self) -> int:
        return self.server.submission

    @property
    def submissions(self) -> int:
        return self.server.submissions

    def auth_records(self) -> list[dict[str, Any]]:
        path = self.server.root / "auth.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_for_message(self, marker: str, timeout: float = 30) -> bytes:
        """The delivered message whose text holds ``marker`` (polls the Maildir)."""
        deadline = time.monotonic() + timeout
        while True:
            for path in self.server.delivered():
                try:
                    data = path.read_bytes()
                except FileNotFoundError:  # moved from new/ to cur/ meanwhile
                    continue
                if marker.encode() in data:
                    return data
            if time.monotonic() > deadline:
                raise AssertionError(f"no delivered message contains {marker!r}")
            time.sleep(0.05)


def _wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def build_sasl_server(root: Path) -> SaslServer:
    ports = {
        name: free_port() for name in ("xoauth2-starttls", "xoauth2-implicit", "noplus", "clear")
    }
    issuer = LocalIssuer()
    listeners = (
        f'\n[[listeners]]\nname = "xoauth2-starttls"\naddress = "127.0.0.1:{ports["xoauth2-starttls"]}"\n'
        'tls = "starttls"\nmechanisms = ["XOAUTH2"]\n'
        f'\n[[listeners]]\nname = "xoauth2-implicit"\naddress = "127.0.0.1:{ports["xoauth2-implicit"]}"\n'
        'tls = "implicit"\nmechanisms = ["XOAUTH2"]\n'
        f'\n[[listeners]]\nname = "noplus"\naddress = "127.0.0.1:{ports["noplus"]}"\n'
        'tls = "starttls"\nmechanisms = ["SCRAM-SHA-256", "SCRAM-SHA-1"]\n'
        f'\n[[listeners]]\nname = "clear"\naddress = "127.0.0.1:{ports["clear"]}"\n'
        'tls = "starttls"\nauth_in_clear = true\n'
        'mechanisms = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "CRAM-MD5"]\n'
    )
    server = make_server(root, listeners + issuer.config("oauth/jwks.json") + LOGIN_IN_RECEIVED)
    cfg = server.config
    text = cfg.read_text()
    mechs = ", ".join(f'"{m}"' for m in ALL_MECHANISMS)
    assert "\n[auth]\n" in text
    text = text.replace(
        "\n[auth]\n", f'\n[auth]\nmechanisms = [{mechs}]\noauth_scope = "{SCOPE}"\n', 1
    )
    if "\n[guard]" not in text:
        text += "\n[guard]\nenabled = false\n"
    cfg.write_text(text)
    issuer.write_jwks(root / "oauth" / "jwks.json")
    server.add_user(USER, PASSWORD)
    server.add_user(PLAIN_USER, PLAIN_PASSWORD)
    server.add_user(SCRAM_ONLY_USER, SCRAM_ONLY_PASSWORD)
    server.cli("user", "cram-md5", USER, "--enable", "--password-stdin", stdin=PASSWORD + "\n")
    server.cli("user", "mechanisms", SCRAM_ONLY_USER, "--allow", "SCRAM-SHA-256")
    server.start()
    for port in ports.values():
        _wait_listening(port)
    return SaslServer(server, issuer, ports)
