"""Relay AUTH choices (``relay_auth_mechanism``, the token file), TLS before any AUTH,
routes, and LMTP replies per recipient: the pieces the integration tests run end
to end against smtpgate, Postfix+Dovecot and Dovecot LMTP."""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from smtpgate.config import DeliveryConfig
from smtpgate.queue.delivery import (
    Delivered,
    DeliveryResult,
    PermFailure,
    QueuedMessage,
    TempFailure,
)
from smtpgate.queue.factory import _relay_auth, make_deliverer
from smtpgate.queue.relay import RelayDeliverer
from smtpgate.queue.routing import RoutingDeliverer, domain_of
from smtpgate.sasl.base import ChannelBinding

from .test_queue_relay import Pki, _config, aiosmtpd_peer, message, pki

__all__ = ["pki"]  # the module-scoped certificate fixture, shared with the relay tests


def test_oauth_token_file_is_read_for_every_connection(tmp_path: Path) -> None:
    """An external refresher rewrites the file: the next connection sends the new token."""
    token = tmp_path / "token"
    token.write_text("first-token\n")
    cfg = _config(tmp_path, mode="relay", relay_host="h", relay_user="me@example.org",
                  relay_auth_mechanism="xoauth2", relay_token_file=Path("token"))
    factory = _relay_auth(cfg)
    assert factory is not None
    first = factory(ChannelBinding()).start()
    token.write_text("second-token\n")
    second = factory(ChannelBinding()).start()
    assert first is not None and b"Bearer first-token" in first
    assert second is not None and b"Bearer second-token" in second
    token.unlink()
    with pytest.raises(OSError, match="relay_token_file"):  # the message is deferred
        factory(ChannelBinding())


def test_token_mechanisms_need_a_token_file() -> None:
    with pytest.raises(ValidationError, match="relay_token_file"):
        DeliveryConfig(mode="relay", relay_host="h", relay_user="me",
                       relay_auth_mechanism="OAUTHBEARER")


def test_scram_plus_gets_the_binding_plain_scram_does_not(tmp_path: Path) -> None:
    """Plain SCRAM with binding data would send RFC 5802's "y" flag, which a relay
    offering -PLUS takes for a downgrade attack and refuses."""
    (tmp_path / "pw").write_text("pencil\n")
    binding = ChannelBinding({"tls-server-end-point": b"\x01" * 32})
    for name, gs2 in (("SCRAM-SHA-256", b"n,,"), ("SCRAM-SHA-256-PLUS",
                                                   b"p=tls-server-end-point,,")):
        cfg = _config(tmp_path, mode="relay", relay_host="h", relay_user="user",
                      relay_password_file=Path("pw"), relay_auth_mechanism=name)
        factory = _relay_auth(cfg)
        assert factory is not None
        first = factory(binding).start()
        assert first is not None and first.startswith(gs2)


async def test_scram_is_not_sent_in_clear_either(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "pw").write_text("relay-secret\n")
    cfg = _config(tmp_path, mode="relay", relay_host="127.0.0.1", relay_user="relay",
                  relay_password_file=Path("pw"), relay_auth_mechanism="SCRAM-SHA-256",
                  relay_tls="opportunistic")
    async with aiosmtpd_peer(auth=True, auth_require_tls=False) as peer:
        deliverer = make_deliverer(cfg.model_copy(update={"delivery": cfg.delivery.model_copy(
            update={"relay_port": peer.port})}))
        results = await deliverer.deliver(message(), ("bob@example.net",))
    assert "without TLS" in str(results["bob@example.net"])
    assert peer.handler.received == []
    # Found against a scripted relay offering AUTH but no STARTTLS: the deferral was
    # only an INFO record, while every other relay AUTH problem is a WARNING
    # (docs/delivery.md, "Relay AUTH"): an operator must fix this one too.
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "smtpgate.queue.relay" and r.levelname == "WARNING"]
    assert any(message().queue_id in w and "without TLS" in w for w in warnings)


class Recorder:
    def __init__(self, result: DeliveryResult) -> None:
        self.result = result
        self.calls: list[tuple[str, ...]] = []
        self.closed = 0

    async def deliver(self, message: QueuedMessage,
                      recipients: tuple[str, ...]) -> Mapping[str, DeliveryResult]:
        self.calls.append(recipients)
        await asyncio.sleep(0)
        return dict.fromkeys(recipients, self.result)

    async def close(self) -> None:
        self.closed += 1


async def test_routes_split_recipients_by_domain_and_merge_the_results() -> None:
    routed, default = Recorder(Delivered("routed")), Recorder(PermFailure("550 no"))
    d = RoutingDeliverer({"example.net": routed}, default)
    results = await d.deliver(message(), ("a@Example.NET", "b@other.test", "c@example.net"))
    assert routed.calls == [("a@Example.NET", "c@example.net")]
    assert default.calls == [("b@other.test",)]
    assert results == {"a@Example.NET": Delivered("routed"), "c@example.net": Delivered("routed"),
                       "b@other.test": PermFailure("550 no")}
    await d.close()
    assert (routed.closed, default.closed) == (1, 1)
    assert domain_of("x@Sub.Example.") == "sub.example"


@pytest.mark.parametrize("route", ["bücher.example", "xn--bcher-kva.example",
                                   "XN--BCHER-KVA.example.", "BÜCHER.example"])
async def test_a_route_takes_its_internationalized_domain_in_either_spelling(
    route: str
) -> None:
    """A route for bücher.example sent mail for bob@xn--bcher-kva.example (its
    A-label, what a client without SMTPUTF8 such as Thunderbird sends) to the
    default relay, and the other way round; RFC 5890 makes them one name, as
    docs/policy.md makes them one domain. NFD input is the same name as NFC."""
    routed, default = Recorder(Delivered("routed")), Recorder(Delivered("default"))
    d = RoutingDeliverer({route: routed}, default)
    nfd = "bob@" + unicodedata.normalize("NFD", "bücher.example")
    rcpts = ("a@xn--bcher-kva.example", "b@bücher.example", "c@Bücher.Example.", nfd,
             "d@xn--bcher-kva.example.net")
    await d.deliver(message(), rcpts)
    assert routed.calls == [rcpts[:4]]
    assert default.calls == [("d@xn--bcher-kva.example.net",)]


def test_two_routes_for_one_internationalized_domain_are_refused() -> None:
    with pytest.raises(ValidationError, match="same domain"):
        DeliveryConfig(mode="relay", relay_host="h", routes=[
            {"domain": "bücher.example", "next_hop": "h:1"},
            {"domain": "xn--bcher-kva.example", "next_hop": "h:2"}])


def test_routes_config_builds_one_relay_per_domain(tmp_path: Path) -> None:
    cfg = _config(tmp_path, mode="relay", relay_host="default.test", relay_tls="none",
                  routes=[{"domain": "Example.NET", "next_hop": "hop.test:2525"}])
    d = make_deliverer(cfg)
    assert isinstance(d, RoutingDeliverer)
    hop = d.route("bob@example.net")
    assert isinstance(hop, RelayDeliverer) and (hop.host, hop.port) == ("hop.test", 2525)
    other = d.route("bob@else.test")
    assert isinstance(other, RelayDeliverer) and other.host == "default.test"


@pytest.mark.parametrize("routes", [
    [{"domain": "a.test", "next_hop": "h:1"}, {"domain": "A.test", "next_hop": "h:2"}],
    [{"domain": "a.test", "next_hop": "no-port"}],
])
def test_bad_routes_are_refused(routes: list[dict[str, Any]]) -> None:
    with pytest.raises(ValidationError):
        DeliveryConfig(mode="relay", relay_host="h", routes=routes)


async def test_rfc2033_s4_2_lmtp_reply_per_recipient() -> None:
    """After the final dot an LMTP server answers once per accepted recipient."""
    replies = [b"220 lmtp.test LMTP\r\n", b"250-lmtp.test\r\n250 PIPELINING\r\n",
               b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n", b"550 5.1.1 no such user\r\n",
               b"250 2.1.5 ok\r\n", b"354 go\r\n",
               b"250 2.0.0 <a@x> saved\r\n452 4.2.2 <c@x> mailbox full\r\n", b"221 bye\r\n"]
    got: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(replies[0])
        step = 1
        while step < len(replies):
            line = await reader.readline()
            if not line:
                break
            got.append(line)
            # Commands get the next reply; message lines get none.
            if line.startswith((b"RCPT", b"MAIL", b"LHLO")) or line in (
                    b"DATA\r\n", b".\r\n", b"QUIT\r\n"):
                writer.write(replies[step])
                step += 1
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        d = RelayDeliverer("127.0.0.1", port, helo_name="smtpgate.test", tls_mode="none",
                           lmtp=True)
        results = await d.deliver(message(), ("a@x", "b@x", "c@x"))
    finally:
        server.close()
        await server.wait_closed()
    assert got[0] == b"LHLO smtpgate.test\r\n"
    assert isinstance(results["a@x"], Delivered)
    assert isinstance(results["b@x"], PermFailure) and "550 5.1.1" in results["b@x"].reply
    assert "452 4.2.2" in str(results["c@x"]) and not isinstance(results["c@x"], PermFailure)


async def test_pinned_certificate_is_required(tmp_path: Path, pki: Pki) -> None:
    """relay_tls_pins: a relay whose certificate is not pinned gets nothing; the
    refusal names the fingerprint seen, which pinned makes it deliver."""
    async with aiosmtpd_peer(tls=pki.server_context) as peer:
        def pinned(pins: list[str]) -> RelayDeliverer:
            cfg = _config(tmp_path, mode="relay", relay_host="127.0.0.1", relay_port=peer.port,
                          relay_tls="require", relay_verify_cert=False, relay_tls_pins=pins)
            d = make_deliverer(cfg)
            assert isinstance(d, RelayDeliverer)
            return d

        wrong = await pinned(["ab" * 32]).deliver(message(), ("bob@example.net",))
        refusal = str(wrong["bob@example.net"])
        assert "is not one of relay_tls_pins" in refusal and peer.handler.received == []
        # RFC 3463 X.7.5, as a certificate that does not verify (it was 4.7.0).
        failure = wrong["bob@example.net"]
        assert isinstance(failure, TempFailure)
        assert failure.reply.startswith(f"4.7.5 relay 127.0.0.1:{peer.port}: certificate ")
        seen = re.search(r"sha256 ([0-9a-f]{64})", refusal)
        assert seen is not None
        colons = ":".join(seen.group(1)[i:i + 2] for i in range(0, 64, 2)).upper()
        right = await pinned([colons]).deliver(message(), ("bob@example.net",))
        assert isinstance(right["bob@example.net"], Delivered)


async def test_a_pin_never_falls_back_to_clear(tmp_path: Path) -> None:
    async with aiosmtpd_peer() as peer:  # no STARTTLS offered
        cfg = _config(tmp_path, mode="relay", relay_host="127.0.0.1", relay_port=peer.port,
                      relay_tls="opportunistic", relay_tls_pins=["ab" * 32])
        results = await make_deliverer(cfg).deliver(message(), ("bob@example.net",))
    assert "not TLS" in str(results["bob@example.net"]) and peer.handler.received == []


async def scripted(replies: dict[bytes, bytes], greeting: bytes = b"220 hop.test\r\n",
                   ) -> tuple[asyncio.Server, list[bytes]]:
    """A next hop answering each command by its verb (``replies``); message lines
    get nothing. Returns the server and the lines it read."""
    got: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        in_data = False
        while line := await reader.readline():
            got.append(line)
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    writer.write(replies[b"."])
            else:
                verb = line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper()
                writer.write(replies.get(verb, b"250 2.0.0 ok\r\n"))
                in_data = verb == b"DATA"
                if verb == b"QUIT":
                    break
            await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), got


async def _relay_to_bob(msg: QueuedMessage, ehlo_tail: bytes) -> tuple[object, list[bytes]]:
    """Relay ``msg`` to bob@example.net through a scripted next hop whose EHLO reply
    ends with ``ehlo_tail``: bob's result and the lines the hop got."""
    server, got = await scripted({b"EHLO": b"250-hop.test\r\n" + ehlo_tail,
                                  b"DATA": b"354 go\r\n", b".": b"250 2.0.0 queued\r\n",
                                  b"QUIT": b"221 bye\r\n"})
    try:
        d = RelayDeliverer("127.0.0.1", server.sockets[0].getsockname()[1],
                           helo_name="smtpgate.test", tls_mode="none")
        results = await d.deliver(msg, ("bob@example.net",))
    finally:
        server.close()
        await server.wait_closed()
    return results["bob@example.net"], got


async def test_rfc3461_parameters_go_on_to_a_next_hop_that_speaks_dsn() -> None:
    from dataclasses import replace

    from smtpgate.queue.envelope import RcptDsn

    env = replace(message().envelope, dsn_ret="HDRS", dsn_envid="id 1",
                  dsn_rcpts=(RcptDsn("bob@example.net", ("SUCCESS", "FAILURE"),
                                     "rfc822;Bob+@example.net"),))
    msg = QueuedMessage("18f00000000-1-0-00000000", env, message().data)
    for dsn_ext, action in ((b"250-DSN\r\n", ""), (b"", "relayed")):
        result, got = await _relay_to_bob(msg, dsn_ext + b"250 8BITMIME\r\n")
        assert isinstance(result, Delivered) and result.dsn_action == action
        mail = next(line for line in got if line.startswith(b"MAIL"))
        rcpt = next(line for line in got if line.startswith(b"RCPT"))
        if dsn_ext:
            assert b" RET=HDRS ENVID=id+201" in mail
            assert rcpt == (b"RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE "
                            b"ORCPT=rfc822;Bob+2B@example.net\r\n")
        else:  # RFC 3461 §5.2: nothing a next hop without DSN would refuse
            assert b"RET=" not in mail and rcpt == b"RCPT TO:<bob@example.net>\r\n"


async def test_rfc6533_a_utf8_orcpt_goes_on_in_its_7bit_form() -> None:
    from dataclasses import replace

    from smtpgate.queue.envelope import RcptDsn

    env = replace(message().envelope,
                  dsn_rcpts=(RcptDsn("bob@example.net", None, "utf-8;用户+1@example.net"),))
    msg = QueuedMessage("18f00000000-1-0-00000000", env, message().data)
    result, got = await _relay_to_bob(msg, b"250 DSN\r\n")
    assert isinstance(result, Delivered)
    rcpt = next(line for line in got if line.startswith(b"RCPT"))
    assert rcpt == b"RCPT TO:<bob@example.net> ORCPT=utf-8;\\x{7528}\\x{6237}\\x{2B}1@example.net\r\n"


async def _hop_that_hangs_up(after: bytes, say: bytes, *, pipelining: bool = False
                             ) -> tuple[asyncio.Server, int]:
    """A next hop that answers normally until it reads a line starting with
    ``after``, then writes ``say`` and closes at once, unread data and all."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hop.test\r\n")
        while line := await reader.readline():
            if line.startswith(after):
                writer.write(say)
                await writer.drain()
                writer.transport.abort()
                return
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper()
            if verb == b"EHLO":
                writer.write(b"250-hop.test\r\n" + (b"250-PIPELINING\r\n" if pipelining
                                                     else b"") + b"250 8BITMIME\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
            elif verb in (b"MAIL", b"RCPT", b"QUIT", b"RSET"):
                writer.write(b"250 2.0.0 ok\r\n")

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_5xx_in_the_middle_of_the_data_then_a_hang_up_bounces() -> None:
    """Before: a relay that refused a big message part-way (552 5.3.4) and hung up
    was 'session failed' (4.4.2), retried until queue.max_age (delivery audit)."""
    from dataclasses import replace

    big = replace(message(), data=b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 8000)
    server, port = await _hop_that_hangs_up(b"yyyy", b"552 5.3.4 Message too big\r\n")
    try:
        d = RelayDeliverer("127.0.0.1", port, helo_name="smtpgate.test", tls_mode="none")
        result = (await d.deliver(big, ("bob@example.net",)))["bob@example.net"]
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(result, PermFailure) and "552 5.3.4" in result.reply, result


async def test_pipelined_rcpt_refusals_read_before_a_hang_up_are_kept() -> None:
    """Before: with PIPELINING, a relay that refused the first recipient (550) and
    hung up before the other replies had every recipient retried (delivery audit)."""
    server, port = await _hop_that_hangs_up(
        b"RCPT", b"550 5.1.1 no such user\r\n", pipelining=True)
    try:
        d = RelayDeliverer("127.0.0.1", port, helo_name="smtpgate.test", tls_mode="none")
        results = await d.deliver(message(), ("gone@example.net", "bob@example.net"))
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(results["gone@example.net"], PermFailure), results
    assert "550 5.1.1" in results["gone@example.net"].reply
    assert not isinstance(results["bob@example.net"], (Delivered, PermFailure)), results


@pytest.mark.parametrize(("keys", "delivered"), [
    ({}, True),  # opportunistic alone: encrypted whatever the certificate
    ({"relay_verify_cert": True}, False),  # asked for: verified
    ({"relay_tls": "require"}, False),  # required TLS is verified TLS
])
async def test_opportunistic_tls_delivers_to_a_relay_whose_certificate_does_not_verify(
        tmp_path: Path, pki: Pki, keys: dict[str, Any], delivered: bool) -> None:
    """Found with a relay with a self-signed certificate and the default config: every
    message deferred (4.7.5 CERTIFICATE_VERIFY_FAILED) until queue.max_age, then
    bounced, while a relay without STARTTLS got mail in clear."""
    async with aiosmtpd_peer(tls=pki.server_context) as peer:
        cfg = _config(tmp_path, mode="relay", relay_host="127.0.0.1", relay_port=peer.port,
                      **keys)
        results = await make_deliverer(cfg).deliver(message(), ("bob@example.net",))
    result = results["bob@example.net"]
    if delivered:
        assert isinstance(result, Delivered) and len(peer.handler.received) == 1
    else:
        assert isinstance(result, TempFailure) and "CERTIFICATE_VERIFY_FAILED" in result.reply
        assert peer.handler.received == []


async def test_opportunistic_tls_with_relay_credentials_still_verifies(
        tmp_path: Path, pki: Pki) -> None:
    """The password goes only to the relay that proved who it is, opportunistic or not."""
    (tmp_path / "pw").write_text("relay-secret\n")
    async with aiosmtpd_peer(tls=pki.server_context, auth=True) as peer:
        cfg = _config(tmp_path, mode="relay", relay_host="127.0.0.1", relay_port=peer.port,
                      relay_user="relayuser", relay_password_file=Path("pw"))
        results = await make_deliverer(cfg).deliver(message(), ("bob@example.net",))
        assert "CERTIFICATE_VERIFY_FAILED" in str(results["bob@example.net"])
        cfg = _config(tmp_path, mode="relay", relay_host="127.0.0.1", relay_port=peer.port,
                      relay_user="relayuser", relay_password_file=Path("pw"),
                      relay_ca_file=pki.ca_file)
        results = await make_deliverer(cfg).deliver(message(), ("bob@example.net",))
    assert isinstance(results["bob@example.net"], Delivered)
