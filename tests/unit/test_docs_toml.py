"""Every ```toml example in docs/*.md works when pasted into a config `smtpgate init`
wrote, the way the docs say to.

The convention the docs follow (README.md states it, under "Running it for real"):

- keys under a comment ``# In the [TABLE] table:`` are set in that table, which
  init's config already has (an existing key's line is changed, a new one added);
  a second ``[TABLE]`` header would be a TOML error, which is how the example in
  docs/oauth.md used to break;
- ``[[listeners]]`` tables replace the two listeners init wrote;
- any other table header is a table init did not write, pasted at the end.

Each example is merged into both layouts init writes (the development one of
`make run`, and the production one with --state-dir/--log-dir), then parsed and
validated as `serve` would.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.cli.main import cli
from smtpgate.config import ConfigError, parse_config

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^```toml\n(.*?)^```", re.MULTILINE | re.DOTALL)
IN_TABLE = re.compile(r"^#\s*in the \[([\w.]*)\] table", re.IGNORECASE)
HEADER = re.compile(r"^\s*\[\[?\s*([\w.]+)\s*\]\]?")
KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def examples() -> list[tuple[str, str]]:
    out = []
    for md in sorted(DOCS.glob("*.md")):
        text = md.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append((f"{md.name}:{line}", m.group(1)))
    return out


def _table_span(lines: list[str], table: str) -> tuple[int, int] | None:
    """Line range of ``[table]``'s keys (the root table is ``""``)."""
    start = 0
    if table:
        for i, ln in enumerate(lines):
            m = HEADER.match(ln)
            if m and ln.lstrip().startswith("[") and not ln.lstrip().startswith("[[") and m.group(1) == table:
                start = i + 1
                break
        else:
            return None
    end = next((j for j in range(start, len(lines)) if HEADER.match(lines[j])), len(lines))
    while end > start and not lines[end - 1].strip():
        end -= 1
    return start, end


def _items(lines: list[str]) -> list[tuple[str, str]]:
    """(key, text) of each ``key = value``, a value may span lines (an array)."""
    out: list[tuple[str, str]] = []
    pending: list[str] = []
    for ln in lines:
        if not pending and not KEY.match(ln):
            continue  # a comment or blank line between keys
        pending.append(ln)
        try:
            tomllib.loads("\n".join(pending))
        except tomllib.TOMLDecodeError:
            continue  # the value goes on
        m = KEY.match(pending[0])
        assert m is not None
        out.append((m.group(1), "\n".join(pending)))
        pending = []
    assert not pending, f"unfinished value: {pending}"
    return out


def _set_keys(config: str, table: str, keys: list[str]) -> str:
    lines = config.splitlines()
    span = _table_span(lines, table)
    items = _items(keys)
    if span is None:
        body = "\n".join(text for _, text in items)
        return config.rstrip("\n") + f"\n\n[{table}]\n{body}\n"
    start, end = span
    for name, text in items:
        existing = next(
            (i for i in range(start, end) if (k := KEY.match(lines[i])) and k.group(1) == name),
            None,
        )
        if existing is not None:  # init's values are one line each
            lines[existing] = text
        else:
            lines.insert(end, text)
            end += 1
    return "\n".join(lines) + "\n"


def _drop_listeners(config: str) -> str:
    out, skipping = [], False
    for ln in config.splitlines():
        if HEADER.match(ln):
            skipping = ln.strip() == "[[listeners]]"
        if not skipping:
            out.append(ln)
    return "\n".join(out) + "\n"


def merge(config: str, example: str) -> str:
    """Apply one docs example to a config the way the docs say (module docstring)."""
    table: str | None = None
    keys: list[str] = []
    pasted: list[str] = []

    def flush() -> None:
        nonlocal config, keys
        if table is not None and keys:
            config = _set_keys(config, table, keys)
        keys = []

    for ln in example.splitlines():
        m = IN_TABLE.match(ln)
        if m:
            flush()
            table = m.group(1)
            continue
        if HEADER.match(ln):
            flush()
            table = None
        if table is not None:
            keys.append(ln)
            continue
        if not pasted and not ln.strip():
            continue
        if not pasted and not ln.lstrip().startswith(("[", "#")):
            # Top-level keys: set in the root table.
            keys.append(ln)
            table = ""
            continue
        pasted.append(ln)
    flush()
    if any(ln.strip() == "[[listeners]]" for ln in pasted):
        config = _drop_listeners(config)
    if pasted:
        config = config.rstrip("\n") + "\n\n" + "\n".join(pasted) + "\n"
    return config


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    runs = {
        "development": ["--dir", str(root / "dev")],
        "production": ["--dir", str(root / "etc"), "--state-dir", str(root / "lib"),
                       "--log-dir", str(root / "log"), "--no-demo"],
    }
    out = {}
    for name, args in runs.items():
        result = CliRunner().invoke(cli, ["init", *args])
        assert result.exit_code == 0, result.output
        out[name] = Path(args[1]) / "smtpgate.toml"
    return out


def test_there_are_examples_to_check() -> None:
    names = {name.split(":")[0] for name, _ in examples()}
    assert {"oauth.md", "accounts.md", "delivery.md"} <= names


@pytest.mark.parametrize("layout", ["development", "production"])
@pytest.mark.parametrize(("where", "example"), examples(), ids=[n for n, _ in examples()])
def test_docs_example_merges_into_an_init_config(
    where: str, example: str, layout: str, layouts: dict[str, Path]
) -> None:
    path = layouts[layout]
    merged = merge(path.read_text(encoding="utf-8"), example)
    try:
        tomllib.loads(merged)
    except tomllib.TOMLDecodeError as e:
        pytest.fail(f"{where}: pasted as the docs say, the config is not TOML ({e}):\n{merged}")
    try:
        parse_config(merged, path.parent)
    except ConfigError as e:
        # Files the example names on the author's machine (a CA bundle, a JWKS file)
        # need not exist here; everything else must validate.
        real = [(k, m) for k, m in e.problems if not ("not found" in m or "does not exist" in m)]
        assert not real, f"{where}: {real}"


def test_pasting_a_second_table_is_caught() -> None:
    """The check itself: the old docs/oauth.md example (an [auth] header) fails."""
    config = '[accounts]\ndatabase = "a.sqlite"\n\n[auth]\nlog_file = "auth.log"\n'
    old = '[auth]\nmechanisms = ["PLAIN"]\n'
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(merge(config, old))
    new = '# In the [auth] table:\nmechanisms = ["PLAIN"]\nlog_file = "other.log"\n'
    merged = tomllib.loads(merge(config, new))
    assert merged["auth"] == {"log_file": "other.log", "mechanisms": ["PLAIN"]}
