"""The wheel carries what an installed smtpgate needs besides code: the licence, the
project URLs, and the contrib files `smtpgate contrib` prints."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from smtpgate.cli.contrib_cmd import FILES

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_has_license_urls_and_contrib(tmp_path: Path) -> None:
    # Built from a copy, so the build leaves nothing in the working tree.
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        check=True, timeout=600, capture_output=True,
    )
    (wheel,) = out.glob("smtpgate-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (info,) = {n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA")}
        metadata = z.read(f"{info}/METADATA").decode()
        licence = z.read(f"{info}/licenses/LICENSE").decode()
        for path, _ in FILES.values():
            shipped = z.read(f"smtpgate/contrib/{path}")
            assert shipped == (REPO / "src/smtpgate/contrib" / path).read_bytes(), path
    assert licence.startswith("MIT License") and "the smtpgate authors" in licence
    assert "License-Expression: MIT" in metadata
    for label in ("Homepage", "Documentation", "Issues"):
        assert f"Project-URL: {label}, https://" in metadata
