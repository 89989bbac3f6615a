"""``smtpgate audit`` against Exim 4.96 (Debian's heavy build, GnuTLS), the second
MTA next to Postfix in test_audit_peers.py, whose logins go to smtpgate's
Dovecot-protocol door so that the credentials probes succeed:

* as the front-door tests configure it (AUTH only after TLS) but with GnuTLS's
  default protocol range: TLS 1.0 and 1.1 are accepted -> ``tls-legacy-versions``
  and nothing else;
* with the fix the finding names (``tls_require_ciphers``): no finding, grade A;
* without ``auth_advertise_hosts``: AUTH offered and accepted in clear.

Each finding's fix text names Exim's own setting, and the settings used here are
those the text names, so the advice is checked against a real Exim.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpgate.tools.findings import CATALOGUE
from tests.peers import exim as exim_peer

from .conftest import Server, free_port, make_server
from .test_audit_peers import audit, ids
from .test_frontdoor_exim import require_exim

pytestmark = [pytest.mark.interop, pytest.mark.slow]

USER, PASSWORD = "alice@example.org", "Lantern-Quartz-Harbor-58"
AUTH_AFTER_TLS = "auth_advertise_hosts = ${if eq{$tls_in_cipher}{}{}{*}}"
TLS12_ONLY = "tls_require_ciphers = NORMAL:-VERS-TLS1.0:-VERS-TLS1.1"

#: Variant -> (config edit, the findings it must show and no other).
VARIANTS: dict[str, tuple[tuple[str, str], set[str]]] = {
    "as-installed": (("", ""), {"tls-legacy-versions"}),
    "fixed": (("tls_advertise_hosts = *\n", f"tls_advertise_hosts = *\n{TLS12_ONLY}\n"), set()),
    "auth-in-clear": ((AUTH_AFTER_TLS, "auth_advertise_hosts = *"),
                      {"tls-legacy-versions", "auth-offered-in-clear",
                       "auth-accepted-in-clear"}),
}


@pytest.fixture(scope="module")
def report() -> Iterator[dict[str, tuple[int, dict[str, Any]]]]:
    """One smtpgate (the auth door) and one Exim per variant; each audited alone."""
    require_exim()
    root = Path(tempfile.mkdtemp(prefix="sgauditx-"))
    tcp = free_port()
    srv: Server | None = None
    exims: list[exim_peer.Exim] = []
    try:
        srv = make_server(root / "srv", f'\n[[auth_listeners]]\nprotocol = "dovecot"\n'
                                        f'name = "exim"\naddress = "127.0.0.1:{tcp}"\n')
        srv.add_user(USER, PASSWORD)
        srv.start()
        out: dict[str, tuple[int, dict[str, Any]]] = {}
        for name, ((old, new), _expected) in VARIANTS.items():
            e = exim_peer.make_exim(f"127.0.0.1 {tcp}")
            exims.append(e)
            text = e.config.read_text()
            if old:
                assert old in text, f"the peer config has no {old!r}"
                e.config.write_text(text.replace(old, new))
            e.start()
            rc, rep = audit("--ca", str(e.ca), "--tls-name", "localhost", "--user", USER,
                            "--password-stdin", f"smtp://127.0.0.1:{e.port}", stdin=PASSWORD)
            out[name] = rc, rep["targets"][0]
        yield out
    finally:
        for e in exims:
            e.cleanup()
        if srv is not None and srv.proc is not None:
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exim_findings_are_exactly_the_configured_ones(
        report: dict[str, tuple[int, dict[str, Any]]], variant: str) -> None:
    rc, target = report[variant]
    expected = VARIANTS[variant][1]
    assert ids(target) == expected, target["findings"]
    assert rc == (1 if expected else 0)
    assert target["grade"] == ("A" if not expected else target["grade"])
    assert "Exim" in target["banner"]


def test_exim_credentials_are_checked_through_the_door(
        report: dict[str, tuple[int, dict[str, Any]]]) -> None:
    _rc, target = report["fixed"]
    results = {c["mechanism"]: c["result"] for c in target["credentials"]}
    assert results == {"PLAIN": "success", "LOGIN": "success", "SCRAM-SHA-256": "success"}, (
        target["credentials"])


def test_the_fix_texts_name_the_exim_settings_used_here() -> None:
    assert TLS12_ONLY.split(" = ")[1] in CATALOGUE["tls-legacy-versions"].fix
    for kind in ("auth-offered-in-clear", "auth-accepted-in-clear"):
        assert AUTH_AFTER_TLS in CATALOGUE[kind].fix
