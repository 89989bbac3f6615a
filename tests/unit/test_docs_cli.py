"""Every `smtpgate ...` command line in README.md and docs/*.md names a command that
exists, with options that command has: a renamed option or command fails here, not
for the administrator who copies the line.

Checked: lines of fenced code blocks that run smtpgate (after an optional `$ ` or
`# ` prompt, `sudo -u USER` and a path to the program; a trailing `\\` continues
the line), and inline code spans that start with `smtpgate ` or a path to it
(`.venv/bin/smtpgate `, as README.md's first steps write it). Shell syntax after
the command (a pipe, a redirection, a comment) ends it; `A|B` alternatives and
`[...]` brackets of a synopsis are read as their first word.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from smtpgate.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Placeholders the pages use for "any command".
PLACEHOLDERS = {"COMMAND"}


def command_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    lines = text.splitlines()
    fenced = False
    for n, line in enumerate(lines, 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            cmd = re.sub(r"^(\$|#)\s+", "", line.strip())
            cmd = re.sub(r"^sudo( -u \S+)? ", "", cmd)
            cmd = re.sub(r"^\S*/smtpgate\b", "smtpgate", cmd)
            if cmd.startswith("smtpgate "):
                j = n
                while cmd.endswith("\\") and j < len(lines):
                    cmd = cmd[:-1] + " " + lines[j].strip()
                    j += 1
                out.append((n, cmd))
        else:
            # `smtpgate ...`, or with the path to the program (`.venv/bin/smtpgate ...`).
            out.extend((n, m.group(1))
                       for m in re.finditer(r"`(?:[\w.~/-]*/)?(smtpgate [^`]+)`", line))
    return out


def words_of(command: str) -> list[str]:
    rest = re.split(r"\s[|;&<>]|\s#|\$\(|\s2>", command[len("smtpgate "):])[0]
    try:
        words = shlex.split(rest)
    except ValueError:
        words = rest.split()
    words = [w.split("|")[0].strip("[]") for w in words if w not in ("...", "…")]
    return [w for w in words if w]


def problem(words: list[str]) -> str | None:
    """What is wrong with ``smtpgate WORDS``, or None."""
    ctx = click.Context(cli)
    command: click.Command = cli
    path = ["smtpgate"]
    i = 0
    while i < len(words) and isinstance(command, click.Group) and not words[i].startswith("-"):
        if words[i] in PLACEHOLDERS:
            return None
        sub = command.get_command(ctx, words[i])
        if sub is None:
            return f"no command `{' '.join(path)} {words[i]}`"
        command = sub
        path.append(words[i])
        i += 1
    known = {"--help", "-h"}
    for param in command.params:
        known.update(param.opts)
        known.update(param.secondary_opts)
    unknown = [w.split("=")[0] for w in words[i:]
               if (w.startswith("--") and w != "--") or re.fullmatch(r"-[A-Za-z]", w)]
    unknown = [w for w in unknown if w not in known]
    if unknown:
        return f"`{' '.join(path)}` has no option {', '.join(unknown)}"
    return None


def all_command_lines() -> list[tuple[str, str]]:
    return [(f"{page.name}:{n}", cmd) for page in PAGES
            for n, cmd in command_lines(page.read_text(encoding="utf-8"))]


def test_there_are_command_lines_to_check() -> None:
    where = {w.split(":")[0] for w, _ in all_command_lines()}
    assert {"README.md", "cli.md", "accounts.md", "delivery.md", "tester.md"} <= where


@pytest.mark.parametrize(("where", "command"), all_command_lines(),
                         ids=[w for w, _ in all_command_lines()])
def test_docs_command_line_exists(where: str, command: str) -> None:
    assert problem(words_of(command)) is None, f"{where}: {command}"


def test_the_check_catches_a_renamed_option_or_command() -> None:
    assert problem(words_of("smtpgate user add alice@example.org --pasword-stdin"))
    assert problem(words_of("smtpgate queue purge"))
    assert problem(words_of("smtpgate user list --json | jq .name")) is None
    assert problem(words_of("smtpgate user add|passwd|remove USER")) is None
    # The README's inline `.venv/bin/smtpgate ...` lines were not checked at all.
    inline = command_lines("Run `.venv/bin/smtpgate admin add NAME --confg var/s.toml`.")
    assert [problem(words_of(c)) for _, c in inline] == ["`smtpgate admin add` has no option --confg"]


def _commands(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command under ``command`` with its path (``("user", "cert", "add")``)."""
    out = [(path, command)] if path else []
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            out += _commands(sub, (*path, name))
    return out


def command_table() -> dict[tuple[str, ...], set[Path]]:
    """docs/cli.md's table: each command path a row names, with the pages it links.

    A row's first cell names commands as ``user add|passwd|remove [--json]``: the first
    alternative gives the command's path, the others are its siblings (or their
    subcommands: ``user cert add USER FILE|list USER``). A row naming a group covers
    the group's subcommands.
    """
    cli_md = ROOT / "docs" / "cli.md"
    out: dict[tuple[str, ...], set[Path]] = {}
    for line in cli_md.read_text(encoding="utf-8").splitlines():
        cells = line.split(" | ")
        if not line.startswith("| `") or len(cells) < 3:
            continue
        first = re.match(r"\| `([^`]+)`", line)
        assert first is not None
        pages = {(cli_md.parent / m).resolve() for m in re.findall(r"\]\(([^)#]+)", cells[-1])}
        if "below" in cells[-1] or not pages:
            pages.add(cli_md)
        parent: tuple[str, ...] = ()
        for n, alternative in enumerate(first.group(1).replace("\\|", "|").split("|")):
            command: click.Command = cli
            path = () if n == 0 else parent
            if n:
                group = cli
                for name in parent:
                    got = group.get_command(click.Context(group), name)
                    assert isinstance(got, click.Group)
                    group = got
                command = group
            for word in alternative.split():
                sub = command.get_command(click.Context(command), word) if isinstance(
                    command, click.Group) else None
                if sub is None:
                    break
                command, path = sub, (*path, word)
            if n == 0:
                parent = path[:-1]
            out.setdefault(path, set()).update(pages)
    return out


def _pages_of(path: tuple[str, ...], table: dict[tuple[str, ...], set[Path]]) -> set[Path] | None:
    """The pages of the row naming ``path`` or the group it is in; None if no row does."""
    for n in range(len(path), 0, -1):
        if path[:n] in table:
            return table[path[:n]]
    return None


def test_every_command_is_in_the_cli_table() -> None:
    table = command_table()
    missing = [" ".join(p) for p, c in _commands(cli)
               if not isinstance(c, click.Group) and _pages_of(p, table) is None]
    assert not missing, f"docs/cli.md's table does not name: {missing}"


def test_every_option_is_documented_where_the_cli_table_points() -> None:
    """An option `--help` lists is named in docs/cli.md or a page its row links to."""
    table = command_table()
    text = {page: page.read_text(encoding="utf-8") for page in PAGES}
    cli_md = ROOT / "docs" / "cli.md"
    missing = []
    for path, command in [((), cli), *_commands(cli)]:
        pages = {cli_md} | (_pages_of(path, table) or set())
        for param in command.params:
            for opt in (*param.opts, *param.secondary_opts):
                if opt.startswith("--") and opt not in ("--help", "--config") and not any(
                        re.search(re.escape(opt) + r"(?![\w-])", text[p]) for p in pages):
                    missing.append(f"smtpgate {' '.join(path)} {opt}".replace("  ", " "))
    assert not missing, f"options no page of the cli.md table names: {missing}"
