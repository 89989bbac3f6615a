"""``smtpgate report`` on a known mix of real auth events gives exact figures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PASSWORD, USER, Server
from .test_protection import BOB, BOB_PASSWORD, CAROL, _new_app_password, login, make_guarded


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Server]:
    srv = make_guarded(tmp_path / "srv")
    yield srv
    if srv.proc is not None:
        srv.stop()


def test_report_figures_for_a_known_mix(guarded: Server) -> None:
    phone = _new_app_password(guarded.cli("app-password", "add", CAROL, "phone").stdout)
    for _ in range(2):
        assert login(guarded, "127.0.0.2", USER, PASSWORD).startswith("235")
    assert login(guarded, "127.0.0.2", BOB, BOB_PASSWORD, mech="LOGIN").startswith("235")
    assert login(guarded, "127.0.0.2", CAROL, phone).startswith("235")
    for i in range(4):  # brute force: alice locks for new addresses at the 4th
        assert login(guarded, "127.0.0.3", USER, f"guess{i}").startswith("535")
    assert login(guarded, "127.0.0.3", USER, PASSWORD).startswith("454")  # blocked
    assert login(guarded, "127.0.0.4", "nobody@example.org", "x").startswith("535")
    for name in (BOB, CAROL, "x@example.org"):  # spraying: the address is blocked
        assert login(guarded, "127.0.0.5", name, "Spring2025!").startswith("535")

    r = json.loads(guarded.cli("report", "--since", "1h", "--json").stdout)
    assert r["totals"] == {"attempts": 13, "success": 4, "failure": 8, "blocked": 1,
                           "tempfail": 0, "cancelled": 0, "refused": 0}
    assert r["accounts"] == {
        USER: {"success": 2, "failure": 4, "blocked": 1},
        BOB: {"success": 1, "failure": 1, "blocked": 0},
        CAROL: {"success": 1, "failure": 1, "blocked": 0},
        "nobody@example.org": {"success": 0, "failure": 1, "blocked": 0},
        "x@example.org": {"success": 0, "failure": 1, "blocked": 0},
    }
    assert r["mechanisms"] == {"LOGIN": 1, "PLAIN": 3}
    assert r["legacy_mechanism_users"] == {USER: ["PLAIN"], BOB: ["LOGIN"], CAROL: ["PLAIN"]}
    assert r["app_password_logins"] == {CAROL: {"phone": 1}}
    assert r["top_failing_addresses"] == [
        {"address": "127.0.0.3", "failures": 4, "accounts": 1},
        {"address": "127.0.0.5", "failures": 3, "accounts": 3},
        {"address": "127.0.0.4", "failures": 1, "accounts": 1},
    ]
    brute = [(e["address"], e["account"], e["failures"]) for e in r["episodes"]["brute_force"]]
    spray = [(e["address"], e["accounts"], e["failures"]) for e in r["episodes"]["spraying"]]
    assert brute == [("127.0.0.3", USER, 4)]
    assert spray == [("127.0.0.5", 3, 3)]
    assert sorted((b["kind"], b["key"]) for b in r["current_blocks"]) == [
        ("account-new", USER), ("address", "127.0.0.5")
    ]
    assert r["locked_accounts"] == []

    text = guarded.cli("report").stdout
    assert "13 attempts, 4 succeeded, 8 failed, 1 blocked" in text
    for word in ("brute-force episodes", "spraying episodes", "127.0.0.5", "phone"):
        assert word in text
