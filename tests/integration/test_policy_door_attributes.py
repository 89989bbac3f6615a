"""The Postfix policy front door against a real ``smtpgate serve``, fed by hand:
attribute values Postfix would never send must still get a clean answer.

No Postfix needed (``test_frontdoor_postfix_policy.py`` has the whole stack)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import Server, free_port, make_server, send_and_read_all

USER = "alice@example.org"


@dataclass
class Door:
    smtpgate: Server
    port: int


@pytest.fixture(scope="module")
def door() -> Iterator[Door]:
    root = Path(tempfile.mkdtemp(prefix="sgpold-"))
    port = free_port()
    srv = make_server(root / "srv", (
        f'\n[[auth_listeners]]\nprotocol = "postfix_policy"\naddress = "127.0.0.1:{port}"\n'))
    try:
        srv.add_user(USER, "Winter-Plum-Kettle-42")
        srv.start()
        yield Door(srv, port)
    finally:
        if srv.proc is not None:
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)


def request(client_port: str) -> bytes:
    return (f"request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username={USER}\n"
            f"sasl_method=PLAIN\nsender={USER}\nrecipient=x@example.net\n"
            f"client_address=127.0.0.9\nclient_port={client_port}\ninstance=t1\n\n").encode()


@pytest.mark.parametrize("client_port", ["²", "١٢٣", "99999999999999999999", "-1", ""])
def test_a_client_port_that_is_no_port_is_read_as_none(door: Door, client_port: str) -> None:
    """client_port=² (str.isdigit() says yes, int() says no) ended the request in a
    ValueError and a 'Internal error' deferral (action=451 ...) for a sender the
    account owns; a value that is no port number is now read as 0, like a
    missing one."""
    assert send_and_read_all(door.port, request(client_port)) == b"action=DUNNO\n\n"
    assert "policy: request failed" not in door.smtpgate.log_text()


def test_a_good_client_port_is_read(door: Door) -> None:
    assert send_and_read_all(door.port, request("40123")) == b"action=DUNNO\n\n"
