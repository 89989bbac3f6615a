"""The /metrics text as Prometheus' own checker reads it: ``promtool check metrics``
(Debian's prometheus package) on a real scrape of ``smtpgate serve`` after logins
with mechanisms a client made up, user names full of markup and escapes, a web
admin login, and listeners whose names hold a quote, a backslash and braces.

No defect was found here (review of 2026-12); this pins what was checked: the
label values a config may hold are escaped as the exposition format says, and
nothing a client sends becomes a label.
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from tests.integration.conftest import (
    PASSWORD,
    USER,
    Server,
    make_http_server,
    require_tool,
    wait_http,
)

#: A listener name (TOML literal string: the backslash is one) and how the
#: exposition format writes it in a label value.
ODD_LISTENER = r'sub "q" \ {x="y"} é'
ODD_LISTENER_LABEL = r'listener="sub \"q\" \\ {x=\"y\"} é"'
#: What clients send; none of it may appear in the metrics.
CLIENT_TEXT = ("<script>alert(1)</script>", 'ev"il\\name', "X-MADE-UP", "mallory")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int, int]]:
    require_tool("promtool")
    srv, admin, metrics = make_http_server(tmp_path_factory.mktemp("expo") / "srv")
    text = srv.config.read_text()
    assert 'name = "submissions"' in text
    srv.config.write_text(text.replace('name = "submissions"', f"name = '{ODD_LISTENER}'", 1))
    srv.add_user(USER, PASSWORD)
    srv.start()
    wait_http(srv, admin)
    yield srv, metrics, admin
    if srv.proc is not None:
        srv.stop()


def _smtp(port: int, commands: list[bytes]) -> None:
    """One session on the implicit-TLS listener (the oddly named one)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        f = s.makefile("rb")

        def reply() -> None:
            while f.readline()[3:4] == b"-":
                pass

        reply()
        for c in commands:
            s.sendall(c + b"\r\n")
            reply()


def _plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode())


def test_promtool_accepts_a_real_scrape_and_no_client_text_is_a_label(
        served: tuple[Server, int, int]) -> None:
    srv, metrics, admin = served
    for name in CLIENT_TEXT:
        _smtp(srv.submissions, [b"EHLO client.example", _plain(name, "guess"), b"QUIT"])
    _smtp(srv.submissions, [b"EHLO client.example", b"AUTH X-MADE-UP", b"*", b"QUIT"])
    _smtp(srv.submissions, [b"EHLO client.example", _plain(USER, PASSWORD), b"QUIT"])
    # A web admin login with a name that is markup, with its form's token (one
    # without it is refused before it is counted).
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/login", timeout=10) as r:
        page = r.read().decode()
        cookie = r.headers["Set-Cookie"].split(";")[0]
    token = page.split('name="login_token" value="', 1)[1].split('"', 1)[0]
    body = urllib.parse.urlencode({"login_token": token, "name": CLIENT_TEXT[0],
                                   "password": "x", "code": "000000"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/login", data=body,
                                 headers={"Cookie": cookie})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    refused.value.close()
    assert refused.value.code == 401

    deadline = time.monotonic() + 10
    while True:  # the counts of the worker that served the logins reach the scrape
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as r:
            text = r.read().decode()
        done = [line for line in text.splitlines()
                if line.startswith("smtpgate_auth_attempts_total")
                and 'result="success"' in line and 'front_door="smtp"' in line
                and not line.endswith(" 0.0")]
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert done, text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert ODD_LISTENER_LABEL in text
    for client_text in CLIENT_TEXT:
        assert client_text.lower() not in text.lower(), client_text
