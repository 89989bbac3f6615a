"""``--auth auto`` and how the tools build client mechanisms."""

from __future__ import annotations

from smtpgate.sasl.base import ChannelBinding
from smtpgate.tools import mechanisms

CB = ChannelBinding({"tls-exporter": b"x" * 32})
ALL = ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS",
       "SCRAM-SHA-256-PLUS", "OAUTHBEARER", "XOAUTH2"]


def test_auto_picks_the_strongest_offered() -> None:
    assert mechanisms.choose(ALL, password=True, token=False, channel_binding=True) == (
        "SCRAM-SHA-256-PLUS")
    # Without TLS there is nothing to bind to: the best non-PLUS SCRAM.
    assert mechanisms.choose(ALL, password=True, token=False, channel_binding=False) == (
        "SCRAM-SHA-256")
    assert mechanisms.choose(["LOGIN", "PLAIN", "CRAM-MD5"], password=True, token=False,
                             channel_binding=True) == "PLAIN"
    assert mechanisms.choose(["login", "cram-md5"], password=True, token=False,
                             channel_binding=True) == "LOGIN"


def test_auto_needs_the_right_secret() -> None:
    assert mechanisms.choose(ALL, password=False, token=True, channel_binding=True) == (
        "OAUTHBEARER")
    assert mechanisms.choose(["XOAUTH2", "PLAIN"], password=False, token=True,
                             channel_binding=True) == "XOAUTH2"
    assert mechanisms.choose(["PLAIN"], password=False, token=True, channel_binding=True) is None
    assert mechanisms.choose(["DIGEST-MD5"], password=True, token=True,
                             channel_binding=True) is None


def _gs2_flag(offered: list[str], name: str = "SCRAM-SHA-256") -> str:
    mech = mechanisms.build(name, username="u", password="p", token="",
                            channel_binding=CB, offered=offered)
    first = mech.start()
    assert first is not None
    return first.decode().split(",", 1)[0]


def test_scram_flag_says_n_when_plus_was_offered_but_not_chosen() -> None:
    # RFC 5802 §6: "y" to a server that offered -PLUS is a downgrade it must refuse;
    # the tools choose non-PLUS on purpose there, so they say "n".
    assert _gs2_flag(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]) == "n"
    # A server without -PLUS gets the honest "y" (we could bind, it cannot).
    assert _gs2_flag(["SCRAM-SHA-256"]) == "y"
    assert _gs2_flag(["SCRAM-SHA-256-PLUS"], "SCRAM-SHA-256-PLUS") == "p=tls-exporter"


def test_plus_binds_to_the_default_type_of_the_version() -> None:
    tls12 = ChannelBinding({"tls-unique": b"u" * 12, "tls-server-end-point": b"e" * 32})
    tls13 = ChannelBinding({"tls-exporter": b"x" * 32, "tls-server-end-point": b"e" * 32})
    for cb, flag in ((tls12, "p=tls-unique"), (tls13, "p=tls-exporter")):
        mech = mechanisms.build("SCRAM-SHA-1-PLUS", username="u", password="p", token="",
                                channel_binding=cb)
        first = mech.start()
        assert first is not None and first.decode().startswith(flag + ",")


def test_extensions_keep_the_servers_mechanism_order() -> None:
    from smtpgate.client.extensions import Extensions

    ext = Extensions.from_ehlo_lines(["AUTH SCRAM-SHA-256 plain LOGIN", "AUTH=LOGIN XOAUTH2"])
    assert ext.auth_mechanism_list == ("SCRAM-SHA-256", "PLAIN", "LOGIN", "XOAUTH2")
    assert ext.auth_mechanisms == frozenset(ext.auth_mechanism_list)
    assert Extensions().auth_mechanism_list == ()
