"""Each mechanism's facts are defined once (smtpgate/mechanism_facts.py) and the
registry, the config and the tools agree with them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from smtpgate import mechanism_facts as facts
from smtpgate.config import AuthConfig, ConfigError, parse_config
from smtpgate.sasl.base import ChannelBinding
from smtpgate.sasl.registry import MECHANISMS, create_client_mechanism, server_mechanism_names
from smtpgate.sasl.scram import ScramServer
from smtpgate.tools import mechanisms as tool_mechanisms

FACTS_MODULE = Path(facts.__file__)


def test_the_facts_module_imports_nothing_of_the_project() -> None:
    tree = ast.parse(FACTS_MODULE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("smtpgate"), node.module
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("smtpgate") for a in node.names)


def test_registry_has_one_implementation_per_record_in_strength_order() -> None:
    assert [m.facts for m in MECHANISMS.values()] == list(facts.MECHANISMS)
    assert server_mechanism_names() == list(facts.KNOWN)
    assert tool_mechanisms.implemented() == list(facts.KNOWN)


@pytest.mark.parametrize("record", facts.MECHANISMS, ids=lambda f: f.name)
def test_implementation_agrees_with_its_record(record: facts.MechanismFacts) -> None:
    mech = MECHANISMS[record.name]
    assert mech.server.name == record.name
    assert mech.server.cleartext_credentials == record.cleartext
    if issubclass(mech.server, ScramServer):
        assert (mech.server.hash_name, mech.server.plus) == (record.hash, record.channel_binding)
    cb = ChannelBinding({"tls-exporter": b"x" * 32})
    client = create_client_mechanism(
        record.name, username="u", password="p", token="t", channel_binding=cb
    )
    assert client.name == record.name
    assert client.cleartext_credentials == record.cleartext


def test_derived_sets() -> None:
    assert facts.LEGACY == {"PLAIN", "LOGIN", "CRAM-MD5"}
    assert facts.OAUTH == {"OAUTHBEARER", "XOAUTH2"}
    assert facts.CLEARTEXT == {"PLAIN", "LOGIN"}
    assert facts.PLAINTEXT_EQUIVALENT == {"CRAM-MD5"}
    assert facts.in_strength_order(["login", "SCRAM-SHA-1", "nope"]) == ["SCRAM-SHA-1", "LOGIN"]
    assert facts.facts("scram-sha-256-plus") is facts.SCRAM_SHA_256_PLUS
    assert facts.facts("DIGEST-MD5") is None


def test_config_default_and_validation_come_from_the_facts(tmp_path: Path) -> None:
    assert AuthConfig().mechanisms == list(facts.DEFAULT_ENABLED)
    assert AuthConfig(mechanisms=[n.lower() for n in facts.KNOWN]).mechanisms == list(facts.KNOWN)
    listener = '[[listeners]]\nname = "s"\naddress = "127.0.0.1:2587"\ntls = "starttls"\n'
    with pytest.raises(ConfigError, match="unknown mechanism 'DIGEST-MD5'"):
        parse_config(f'[auth]\nmechanisms = ["DIGEST-MD5"]\n{listener}', tmp_path)
    with pytest.raises(ConfigError) as err:
        parse_config(listener + 'mechanisms = ["GSSAPI"]\n', tmp_path)
    assert ("listeners.0.mechanisms", "unknown mechanism 'GSSAPI'") in err.value.problems
