"""Fuzz the config loader (config.parse_config) with arbitrary TOML text.

Input: the config file's bytes (UTF-8; an invalid sequence becomes U+FFFD, as a
text editor would show it). The base directory holds the TLS files `smtpgate init`
writes, so a config can pass the semantic checks. Invariants, beyond "no
exception": a bad config is a ConfigError whose problems are (key, message)
string pairs, never another exception; parsing is deterministic (the same text
gives the same config or the same problems).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

with C.instrument(__name__ == "__main__"):
    from smtpgate.config import ConfigError, parse_config

BASE = Path(tempfile.mkdtemp(prefix="smtpgate-fuzz-config-"))
(BASE / "tls").mkdir()
for name in ("cert.pem", "key.pem"):
    (BASE / "tls" / name).write_text("placeholder\n")


def parse(text: str) -> object:
    try:
        return parse_config(text, BASE)
    except ConfigError as e:
        problems = e.problems
        if not isinstance(problems, list) or not problems or not all(
            isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in problems
        ):
            C.fail("ConfigError problems are not (key, message) pairs", problems)
        return ("error", problems)


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    first = parse(text)
    again = parse(text)
    if first != again:
        C.fail("parsing the same text twice differs", (first, again))


if __name__ == "__main__":
    C.main(TestOneInput)
