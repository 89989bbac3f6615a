"""The front-door benchmark's harness gives right answers (bench/README.md, "Front
door"): a tiny run through the same Postfix with Dovecot and with smtpgate as the SASL
backend, where every login of both layers succeeds and the ratios are reported.
No timings are checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import require_mta

BENCH = Path(__file__).resolve().parents[2] / "bench" / "frontdoor_bench.py"


def test_frontdoor_bench_smoke_run(tmp_path: Path) -> None:
    require_mta()
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--sessions", "4", "--requests", "6", "--rounds", "1",
         "--concurrency", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    for layer, n in (("postfix", 4), ("socket", 6)):
        for target in ("dovecot", "smtpgate"):
            got = data["layers"][layer][target]
            assert (got["ok"], got["failed"]) == (n, 0), (layer, target, got)
        assert data["ratios"][layer] > 0
    assert "through Postfix: smtpgate / Dovecot = " in proc.stdout
