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

from typing import Any

import click
from rich.table import Table as RichTable
from rich.text import Text

from smtpgate.visible import visible


def shown(value: object) -> str:
    """One value for one line: every control/format/separator character escaped."""
    return visible(str(value))


def echo(message: object = "", err: bool = False, nl: bool = True) -> None:
    """``click.echo`` with control/format characters escaped; newlines and tabs (a
    folded header's indent) kept: they move the cursor as text does, nothing more."""
    click.echo(visible(str(message), keep="\n\t"), err=err, nl=nl)


def text(value: object) -> Text:
    """A rich renderable of ``value`` as typed: no markup, characters escaped."""
    return Text(shown(value))


class Table(RichTable):
    """rich's ``Table``; a string cell is shown as ``text`` shows it."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(text(r) if isinstance(r, str) else r for r in renderables), **kwargs)
