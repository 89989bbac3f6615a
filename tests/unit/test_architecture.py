"""Architecture rules that a reviewer would otherwise have to remember."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "smtpgate"
FORBIDDEN_IN_SANS_IO = {"asyncio", "socket", "ssl", "time", "sqlite3", "selectors", "threading"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", ["smtp", "sasl", "client", "frontdoor"])
def test_sans_io_cores_import_no_io(package: str) -> None:
    files = list((PKG / package).rglob("*.py"))
    assert files
    for f in files:
        bad = _imports(f) & FORBIDDEN_IN_SANS_IO
        assert not bad, f"{f.relative_to(PKG)} imports {bad}"


#: A reply in a string: a code with an enhanced code, a 4xx/5xx with text, or any
#: 3xx line start (``b"334 "``: a SASL challenge is a reply too, RFC 4954 §4).
_REPLY_LITERAL = re.compile(
    r"""["'](?:[245]\d\d[ -]\d\.\d{1,3}\.\d{1,3}|[45]\d\d [A-Z][a-z]|3\d\d[ -])"""
)


@pytest.mark.parametrize(
    ("line", "is_reply"),
    [
        ('self._send_raw(b"334 " + challenge)', True),
        ("out = '354 End data with <CR><LF>.<CR><LF>'", True),
        ('x = "535 5.7.8 Authentication credentials invalid"', True),
        ('x = "454 Temporary failure"', True),
        ('if code == 334 and text.startswith("334"):', False),
        ('reason = "3000 iterations"', False),
    ],
)
def test_reply_literal_pattern(line: str, is_reply: bool) -> None:
    """The grep below must see every class of reply, 3xx included, and only replies."""
    assert bool(_REPLY_LITERAL.search(line)) is is_reply


def test_no_reply_string_literals_outside_replies_module() -> None:
    """Principle 4: every reply is a named constant in smtp/replies.py."""
    offenders = []
    for f in PKG.rglob("*.py"):
        if f.name == "replies.py" or f.parts[-2] == "client":
            continue  # the client side parses replies; it does not send them
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if _REPLY_LITERAL.search(line):
                offenders.append(f"{f.relative_to(PKG)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# --- imports point one way ----------------------------------------------------------------

#: The project's packages (and top-level modules), from the top down. A package may
#: import from its own layer or any layer below, never from one above; inside a
#: layer the imports form no cycle (`test_package_imports_form_no_cycle`), so
#: siblings use each other one way only (policy -> auth, smtp -> sasl, tls -> sasl).
#: docs/architecture.md draws the same picture.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("server",),
    ("web",),
    ("preflight",),
    ("admin",),
    ("tools", "queue", "policy", "auth"),
    ("smtp", "client", "tls", "sasl", "frontdoor"),
    ("config",),
    ("mechanism_facts", "errors", "ldap_presets", "metrics", "plural", "regular_file",
     "usable_cpus", "visible"),
)
_RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(path: Path) -> str:
    """The package (or top-level module) ``path`` belongs to: ``auth``, ``config``."""
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _project_imports(text: str, rel: Path) -> Iterator[tuple[str, int]]:
    """(package imported, line) for each import of the project's own code in the
    source ``text`` of the file at ``rel`` (relative to the package), at module level
    or inside a function, absolute or relative."""
    for node in ast.walk(ast.parse(text)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["smtpgate", *rel.parts[: len(rel.parts) - node.level]]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from smtpgate import config` imports the module named after `import`.
            if module == "smtpgate":
                targets = [f"smtpgate.{a.name}" for a in node.names]
            else:
                targets = [module]
        for target in targets:
            parts = target.split(".")
            if parts[0] == "smtpgate" and len(parts) > 1:
                yield parts[1], node.lineno


def _package_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for f in sorted(PKG.rglob("*.py")):
        src = _unit(f)
        if src == "__init__":
            continue
        for dst, line in _project_imports(f.read_text(), f.relative_to(PKG)):
            if dst != src and dst != "__version__":
                edges.setdefault((src, dst), []).append(f"{f.relative_to(PKG)}:{line}")
    return edges


def test_every_package_has_a_layer() -> None:
    units = {_unit(f) for f in PKG.rglob("*.py")} - {"__init__"}
    assert units, PKG
    assert not units - set(_RANK), f"place {sorted(units - set(_RANK))} in LAYERS"


def test_no_package_imports_one_above_it() -> None:
    """``cli -> server -> (auth, policy, queue, tools) -> (smtp, sasl, client, tls) -> config``."""
    upward = [
        f"{src} imports {dst} (a higher layer) at {', '.join(where)}"
        for (src, dst), where in sorted(_package_edges().items())
        if _RANK[dst] < _RANK[src]
    ]
    assert not upward, "\n".join(upward)


def test_package_imports_form_no_cycle() -> None:
    edges = _package_edges()
    graph: dict[str, set[str]] = {}
    for src, dst in edges:
        graph.setdefault(src, set()).add(dst)
    cycles = [
        f"{a} <-> {b}: {edges[(a, b)][0]} and {edges[(b, a)][0]}"
        for a, b in sorted(edges)
        if a < b and (b, a) in edges
    ]
    assert not cycles, "\n".join(cycles)
    # Longer cycles: a depth-first search that finds a back edge.
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_import_finder_sees_every_form_of_import() -> None:
    """The checks above would pass vacuously if the finder missed one of these."""
    text = (
        "import smtpgate.cli.main\n"
        "from smtpgate import tools, __version__\n"
        "from smtpgate.queue.spool import Spool\n"
        "from ..policy import rates\n"
        "from . import guard\n"
        "def f():\n"
        "    from smtpgate.server import app\n"
        "    import os\n"
    )
    found = {pkg for pkg, _ in _project_imports(text, Path("auth/sample.py"))}
    assert found == {"cli", "tools", "__version__", "queue", "policy", "auth", "server"}


def test_every_reply_in_the_vocabulary_is_sent_somewhere() -> None:
    """A reply constant nothing sends is dead vocabulary (docs and tests would cite a
    reply the server never gives)."""
    vocabulary = (PKG / "smtp" / "replies.py").read_text()
    names = re.findall(r"^([A-Z][A-Z0-9_]+) = Reply\(", vocabulary, re.MULTILINE)
    assert len(names) > 20
    code = "\n".join(
        f.read_text() for f in PKG.rglob("*.py") if f != PKG / "smtp" / "replies.py"
    )
    unused = [n for n in names if not re.search(rf"\b{n}\b", code)]
    assert not unused, f"replies nothing sends: {unused}"
