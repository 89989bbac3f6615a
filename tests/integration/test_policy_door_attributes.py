"""The Postfix policy front door against a real ``smtpgate serve``, fed by hand:
attribute values Postfix would never send must still get a clean answer.

No Postfix needed (``test_frontdoor_postfix_policy.py`` has the whole stack)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import PolicyDoor, send_and_read_all, serving_policy_door

USER = "alice@example.org"


@pytest.fixture(scope="module")
def door() -> Iterator[PolicyDoor]:
    yield from serving_policy_door("sgpold-", "", (USER,))


def request(client_port: str) -> bytes:
    return (f"request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username={USER}\n"
            f"sasl_method=PLAIN\nsender={USER}\nrecipient=x@example.net\n"
            f"client_address=127.0.0.9\nclient_port={client_port}\ninstance=t1\n\n").encode()


@pytest.mark.parametrize("client_port", ["²", "١٢٣", "99999999999999999999", "-1", ""])
def test_a_client_port_that_is_no_port_is_read_as_none(door: PolicyDoor, client_port: str) -> None:
    """client_port=² (str.isdigit() says yes, int() says no) ended the request in a
    ValueError and a 'Internal error' deferral (action=451 ...) for a sender the
    account owns; a value that is no port number is now read as 0, like a
    missing one."""
    assert send_and_read_all(door.port, request(client_port)) == b"action=DUNNO\n\n"
    assert "policy: request failed" not in door.smtpgate.log_text()


def test_a_good_client_port_is_read(door: PolicyDoor) -> None:
    assert send_and_read_all(door.port, request("40123")) == b"action=DUNNO\n\n"
