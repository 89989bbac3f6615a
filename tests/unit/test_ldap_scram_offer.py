"""SCRAM with a bind-checked directory (docs/directories.md, "SCRAM"): its users have
no SCRAM keys before a PLAIN/LOGIN login, so SCRAM is offered nowhere unless
``[accounts.ldap] scram = true``, and a listener naming it is warned about."""

from __future__ import annotations

from pathlib import Path

from smtpgate import mechanism_facts
from smtpgate.config import Config, parse_config
from smtpgate.preflight import _scram_withheld
from smtpgate.server.app import offered_mechanisms

LDAP = """
[accounts]
backend = "ldap"
[accounts.ldap]
url = "ldap://127.0.0.1:34101"
base_dn = "ou=people,dc=example,dc=org"
"""


SUBMISSION = '[[listeners]]\nname = "sub"\naddress = "127.0.0.1:34102"\ntls = "starttls"\n'


def _cfg(tmp_path: Path, extra: str = "", listeners: str = SUBMISSION) -> Config:
    return parse_config(listeners + LDAP + extra, tmp_path, tls_files=False)


def test_a_directory_offers_no_scram_by_default(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert cfg.accounts.withheld_mechanisms == mechanism_facts.SCRAM
    for lst in cfg.listeners:
        assert offered_mechanisms(cfg, lst) == ("PLAIN", "LOGIN")


def test_scram_true_offers_it_again(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "scram = true\n")
    assert cfg.accounts.withheld_mechanisms == frozenset()
    assert "SCRAM-SHA-256" in offered_mechanisms(cfg, cfg.listeners[0])


def test_local_accounts_are_untouched(tmp_path: Path) -> None:
    cfg = parse_config(SUBMISSION, tmp_path, tls_files=False)
    assert cfg.accounts.withheld_mechanisms == frozenset()
    assert "SCRAM-SHA-256-PLUS" in offered_mechanisms(cfg, cfg.listeners[0])


def test_a_listener_naming_scram_is_warned_about(tmp_path: Path) -> None:
    listeners = SUBMISSION + 'mechanisms = ["SCRAM-SHA-256", "PLAIN"]\n'
    cfg = _cfg(tmp_path, listeners=listeners)
    (problem,) = _scram_withheld(cfg, 0, cfg.listeners[0])
    assert problem.key == "listeners.0.mechanisms"
    assert "accounts.ldap.scram = true" in problem.message
    assert offered_mechanisms(cfg, cfg.listeners[0]) == ("PLAIN",)
    assert _scram_withheld(_cfg(tmp_path, "scram = true\n", listeners), 0,
                           cfg.listeners[0]) == []
