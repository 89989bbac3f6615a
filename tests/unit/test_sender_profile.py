"""``SenderProfile.owns_name``: a directory account whose name is a login only (AD's
UPN, not among its mail addresses) does not send as that name; the integration
test against Samba AD is in tests/integration/test_ldap_ad.py."""

from __future__ import annotations

from smtpgate.auth.sender_profile import SenderProfile


def test_the_name_is_owned_by_default() -> None:
    assert SenderProfile(name="alice@example.org").owns("Alice@Example.org")


def test_a_login_only_name_is_not_a_sender() -> None:
    p = SenderProfile(name="jdoe@example.org", aliases=frozenset({"john.doe@example.org"}),
                      owns_name=False)
    assert not p.owns("jdoe@example.org")
    assert p.owns("john.doe@example.org")


def test_a_login_only_name_is_a_sender_when_it_is_also_an_alias() -> None:
    p = SenderProfile(name="jdoe@example.org", aliases=frozenset({"jdoe@example.org"}),
                      owns_name=False)
    assert p.owns("jdoe@example.org")


def test_a_login_only_idn_name_is_not_owned_in_its_other_spelling() -> None:
    p = SenderProfile(name="jdoe@bücher.example", owns_name=False)
    assert not p.owns("jdoe@xn--bcher-kva.example")
    assert SenderProfile(name="jdoe@bücher.example").owns("jdoe@xn--bcher-kva.example")
