"""An issuer that hangs holds up bearer logins, and nothing else.

A token is verified on a thread, since the verifier may wait on the issuer's
introspection endpoint or key set for up to ``oauth.HTTP_TIMEOUT`` (10 s). That
thread was the event loop's default executor, which every process also uses to
write a message's octets to the spool: with its threads all waiting on an
introspection endpoint that accepted connections and never answered, every
user's DATA waited behind them (a PLAIN user's 200 KB message took 18 s while a
dozen OAUTHBEARER attempts, from a dozen addresses, waited on the issuer).
Anyone can make such attempts: an opaque token is sent to the introspection
endpoint whatever it holds.

Here the endpoint is a real listening socket that never accepts (the kernel
completes the TCP handshake, the TLS handshake then hears nothing), the server is
the real one with one worker, and the attempts come from distinct loopback
addresses, so the per-address attempt gate does not serialise them.
"""

from __future__ import annotations

import base64
import os
import secrets
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.sasl.oauth import encode_oauthbearer

from .conftest import PASSWORD, USER, Server, make_server

ISSUER = "https://hanging.idp.example.test/realms/mail"
#: More attempts than the default executor of the server's process has threads
#: (``ThreadPoolExecutor``: min(32, CPUs + 4)), so that all of them are taken.
ATTEMPTS = min(32, (os.cpu_count() or 1) + 4) + 2


class Silent:
    """An HTTPS endpoint that accepts every connection and never says a word (the
    TLS handshake waits for its answer); ``accepted`` counts the connections."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            self._held.append(conn)
            self.accepted += 1

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture(scope="module")
def silent() -> Iterator[Silent]:
    endpoint = Silent()
    yield endpoint
    endpoint.close()


@pytest.fixture
def hanging(tmp_path: Path, silent: Silent) -> Iterator[Server]:
    """A server of the test's own: its verifier has not yet met the silent endpoint
    (one that had would answer at once for ``RETRY_FAILED_FETCH``, which the next
    test would have to wait out first)."""
    root = tmp_path / "oauth-hang"
    root.mkdir()
    secret = root / "introspection.secret"
    secret.write_text("secret\n")
    srv = make_server(root / "srv", (
        "\n[[auth.oauth_issuers]]\n"
        f'issuer = "{ISSUER}"\n'
        'audience = ["smtp.example.test"]\n'
        f'introspection_url = "https://localhost:{silent.port}/introspect"\n'
        'introspection_client_id = "smtpgate"\n'
        f'introspection_client_secret_file = "{secret}"\n'
        'identity_claim = "email"\n'
        "\n[guard]\nenabled = false\n"
        "\n[server]\nworkers = 1\n"))
    srv.config.write_text(srv.config.read_text().replace(
        "\n[auth]\n", '\n[auth]\nmechanisms = ["OAUTHBEARER", "PLAIN"]\n'
        'oauth_openid_configuration = "off"\n', 1))
    srv.add_user(USER, PASSWORD)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None:
            srv.stop()
    assert "Traceback" not in srv.log_text()


def _bearer_attempt(srv: Server, n: int, replies: list[tuple[int, bytes]]) -> None:
    """One opaque token from 127.0.0.``n``: the issuer is asked about it."""
    with smtplib.SMTP("127.0.0.1", srv.submission, timeout=120,
                      source_address=(f"127.0.0.{n}", 0)) as smtp:
        smtp.starttls(context=srv.client_context())
        smtp.ehlo("client.example.test")
        message = encode_oauthbearer(USER, "opaque-" + secrets.token_hex(16))
        replies.append(smtp.docmd("AUTH", "OAUTHBEARER " + base64.b64encode(message).decode()))


def _send(srv: Server) -> float:
    """Seconds a PLAIN user's 200 KB message takes from MAIL to its 250."""
    with smtplib.SMTP("127.0.0.1", srv.submission, timeout=120) as smtp:
        smtp.starttls(context=srv.client_context())
        smtp.login(USER, PASSWORD)
        start = time.monotonic()
        smtp.sendmail(USER, [USER], (
            f"From: {USER}\r\nTo: {USER}\r\nSubject: while the issuer hangs\r\n\r\n"
            + "x" * 78 + "\r\n") * 2500)
        return time.monotonic() - start


def test_a_hanging_introspection_endpoint_holds_up_no_message(hanging: Server) -> None:
    assert _send(hanging) < 5  # warm: the spool is ready
    replies: list[tuple[int, bytes]] = []
    attempts = [threading.Thread(target=_bearer_attempt, args=(hanging, n, replies))
                for n in range(2, 2 + ATTEMPTS)]
    for t in attempts:
        t.start()
    time.sleep(2)  # every attempt is waiting on the issuer now
    took = _send(hanging)
    for t in attempts:
        t.join()
    assert took < 5, f"the message took {took:.1f} s while the issuer hung"
    # The bearer logins themselves are the issuer's fault: 454, not 535.
    assert len(replies) == ATTEMPTS
    assert all(code == 454 and text.startswith(b"4.7.0") for code, text in replies), replies


#: ``oauth.HTTP_TIMEOUT`` and ``oauth.RETRY_FAILED_FETCH``, the test's clock.
TIMEOUT = RETRY = 10.0


def _timed_attempts(srv: Server, first: int, count: int) -> list[float]:
    """``count`` bearer attempts at once from 127.0.0.``first`` on: the seconds
    each took to its 454."""
    took: list[float] = []

    def one(n: int) -> None:
        start = time.monotonic()
        replies: list[tuple[int, bytes]] = []
        _bearer_attempt(srv, n, replies)
        assert replies and replies[0][0] == 454, replies
        took.append(time.monotonic() - start)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(first, first + count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(took) == count
    return took


@pytest.mark.slow
def test_an_introspection_endpoint_that_did_not_answer_is_not_waited_for_again_at_once(
        hanging: Server, silent: Silent) -> None:
    """Like a key set fetch that failed (docs/oauth.md), an introspection endpoint
    that let its 10 s pass without an answer is asked again 10 s later at the
    earliest: meanwhile bearer logins get their 454 at once. Each waited its own
    10 s, and those beyond the token threads waited in turn behind them, so
    during an outage every OAuth user's login took 10 s, 20 s, 30 s..."""
    # The server is this test's own: nothing the test before asked of the endpoint
    # stands in its verifier, and that server's connections are all counted here.
    before = silent.accepted
    [first] = _timed_attempts(hanging, 40, 1)
    assert TIMEOUT - 1 < first < TIMEOUT + 5, first
    assert silent.accepted == before + 1
    took = _timed_attempts(hanging, 41, 12)
    assert max(took) < 3, took
    assert silent.accepted == before + 1  # nobody asked the endpoint meanwhile
    time.sleep(RETRY)
    [again] = _timed_attempts(hanging, 60, 1)
    assert again > TIMEOUT - 1, again  # asked again: the endpoint may be back
    assert silent.accepted == before + 2
