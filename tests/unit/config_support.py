"""Shared by the tests that parse config text: the smallest config ``parse_config``
takes, a directory holding the TLS files whose existence it checks, and the
problems a refused config names, by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpgate.config import ConfigError, parse_config

MINIMAL = """
hostname = "mx.example.org"
[[listeners]]
name = "submission"
address = "127.0.0.1:2587"
tls = "starttls"
[tls]
cert = "c.pem"
key = "k.pem"
"""


def config_dir(directory: Path) -> Path:
    """``directory`` with the (dummy) certificate and key `MINIMAL` names."""
    (directory / "c.pem").write_text("x")
    (directory / "k.pem").write_text("x")
    return directory


def problems(text: str, base: Path) -> dict[str, str]:
    """The problems of a config that must be refused: key -> message."""
    with pytest.raises(ConfigError) as e:
        parse_config(text, base)
    return dict(e.value.problems)
