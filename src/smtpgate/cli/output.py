"""How commands print text that came from the network or another user: a relay's
reply, a HELO name, message headers, a lock reason, a guard key, an auth-log
name. Everything goes through ``smtpgate.visible``, so an ESC or a U+202E in it
reaches root's terminal as ``\\x1b`` or ``\\u202e`` (docs/cli.md, "Output").

``echo`` is ``click.echo`` for such lines (newlines and tabs kept, so a
multi-line text such as a message's headers still reads as lines); ``Table`` is rich's table whose cells are plain text (no
rich markup: a reason ``[red]`` is shown as typed) with their characters escaped;
``shown`` is one value on one line (its newlines escaped too).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.table import Table as RichTable
from rich.text import Text

from smtpgate.visible import visible


@contextmanager
def secret_shown_once(undo: Callable[[], str]) -> Iterator[None]:
    """Around the lines that show a secret for the only time: they are flushed here,
    and if standard output cannot be written (a full disk under ``> file``) nobody
    saw the secret, so ``undo`` takes back what was made with it and says what it
    did, on standard error, before the command fails as any output failure does.
    (Until 2026-12 the app password or admin stayed, never shown, its name taken.)"""
    from smtpgate.cli.main import OutputFailed  # main wraps standard output

    try:
        yield
        sys.stdout.flush()
    except OutputFailed:
        click.echo(f"note: {undo()}", err=True)
        raise


def writable(value: str, err: bool = False) -> str:
    r"""``value`` with each character that standard output (``err``: standard error)
    cannot encode written as ``visible`` writes a hidden one: ``\xe9`` for an é.

    ``PYTHONIOENCODING=ascii`` (or a cron job's ASCII locale on a Python that does
    not coerce it to UTF-8) made ``user list`` of ``josé@example.org`` a
    UnicodeEncodeError traceback. ``main`` lets the stream escape what still gets
    through (``errors="backslashreplace"``); escaped here, before rich measures a
    cell, a table's borders stay aligned too. The escaped name is accepted back by
    the USER argument (``cli/common.py``, ``AddressType``)."""
    stream = sys.stderr if err else sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    if value.isascii() or encoding.lower().replace("-", "").replace("_", "") == "utf8":
        return value
    try:
        value.encode(encoding)
    except UnicodeEncodeError:
        return value.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        pass
    return value


def shown(value: object) -> str:
    """One value for one line: every control/format/separator character escaped,
    and every one standard output cannot encode."""
    return writable(visible(str(value)))


def name_shown(name: str) -> str:
    r"""An account name as the account commands show it: as ``shown``, with a
    backslash itself written ``\\``, so that the shown form reads back as one name
    only (``visible.name_from_shown``): ``ali\x1bce@x`` is the name with an ESC in it, and
    ``ali\\x1bce@x`` the legacy name that holds a backslash. Neither can be made
    any more (auth/names.py), but a database from before the rules, or a row
    inserted by hand, may hold them, and the commands must reach them."""
    return shown(name.replace("\\", "\\\\"))


def echo(message: object = "", err: bool = False, nl: bool = True) -> None:
    """``click.echo`` with control/format characters escaped; newlines and tabs (a
    folded header's indent) kept: they move the cursor as text does, nothing more.
    Characters the stream cannot encode are escaped too (``writable``)."""
    click.echo(writable(visible(str(message), keep="\n\t"), err=err), err=err, nl=nl)


def text(value: object) -> Text:
    """A rich renderable of ``value`` as typed: no markup, characters escaped."""
    return Text(shown(value))


class Table(RichTable):
    """rich's ``Table``; a string cell is shown as ``text`` shows it."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(text(r) if isinstance(r, str) else r for r in renderables), **kwargs)
