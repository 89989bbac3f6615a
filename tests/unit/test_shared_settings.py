"""The settings nodes of a cluster must share (server/shared_settings.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from smtpgate.config import parse_config
from smtpgate.server.shared_settings import describe, differences, shared_settings

from .config_support import MINIMAL, config_dir


def settings(extra: str = "") -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        return shared_settings(parse_config(MINIMAL + extra, config_dir(Path(tmp))))


def test_the_guard_the_policy_and_the_hourly_limits_are_shared() -> None:
    found = settings()
    assert found["guard.lockout_threshold"] == 10
    assert found["policy.sender_ownership"] == "enforce"
    assert found["limits.messages_per_hour"] == 200
    # A node's own: where its state lives, how many connections it takes.
    assert "guard.database" not in found
    assert not any(k.startswith("limits.") and "hour" not in k for k in found), found


def test_nodes_that_agree_differ_in_nothing() -> None:
    assert differences({"a": settings(), "b": settings()}) == {}


def test_each_differing_key_is_named_with_every_nodes_value() -> None:
    differ = differences({
        "a": settings(),
        "b": settings("[guard]\nlockout_threshold = 20\nallowlist = ['10.0.0.0/8']\n"),
        "c": settings("[policy]\nsender_ownership = 'off'\n"),
    })
    assert set(differ) == {"guard.lockout_threshold", "guard.allowlist",
                           "policy.sender_ownership"}
    assert describe("guard.lockout_threshold", differ["guard.lockout_threshold"]) == (
        "guard.lockout_threshold: a 10, b 20, c 10")
    assert describe("guard.allowlist", differ["guard.allowlist"]) == (
        "guard.allowlist: a [], b ['10.0.0.0/8'], c []")
    assert describe("policy.sender_ownership", differ["policy.sender_ownership"]) == (
        "policy.sender_ownership: a 'enforce', b 'enforce', c 'off'")


def test_a_node_without_the_settings_an_older_version_is_left_out() -> None:
    assert differences({"a": settings(), "old": {}}) == {}
