"""Entry point of the ``smtpgate`` command: a click group of noun-verb commands.

Each command's module is imported only when that command runs (``_LazyGroup``):
``smtpgate serve`` forks its workers from this process, and every module imported
here before the fork sits in each of them (the web admin, the audit, password
strength lists: about 40 MB per process that a worker never uses; bench/README.md,
workload D). ``--help`` and shell completion still list every command.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any, TextIO, cast

import click

from smtpgate import __version__
from smtpgate.cli.common import ExitCode, OperationalError

#: command name -> (its module in smtpgate.cli, the attribute, modules that add
#: subcommands to it when imported).
_COMMANDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "init": ("init_cmd", "init", ()),
    "serve": ("serve_cmd", "serve", ()),
    "config": ("config_cmd", "config", ("config_show_cmd",)),
    "user": ("user_cmd", "user",
             ("user_sasl_cmd", "user_policy_cmd", "user_import_cmd", "user_cert_cmd")),
    "app-password": ("app_password_cmd", "app_password", ()),
    "report": ("report_cmd", "report", ()),
    "admin-log": ("admin_cmd", "admin_log", ()),
    "guard": ("admin_cmd", "guard", ()),
    "admin": ("admin_account_cmd", "admin", ()),
    "test": ("tester_cmd", "test", ()),
    "audit": ("audit_cmd", "audit", ()),
    "reload": ("reload_cmd", "reload", ()),
    "db": ("db_cmd", "db", ()),
    "contrib": ("contrib_cmd", "contrib", ()),
    "queue": ("queue_cmd", "queue", ()),
    "status": ("status_cmd", "status", ()),
    "cluster": ("cluster_cmd", "cluster", ()),
}


def load_command(name: str) -> click.Command:
    """Import the module of ``name`` (and those that extend it); its command."""
    module, attr, extensions = _COMMANDS[name]
    for extra in extensions:
        importlib.import_module(f"smtpgate.cli.{extra}")
    mod = importlib.import_module(f"smtpgate.cli.{module}")
    by_name = {c.name: c for c in getattr(mod, "COMMANDS", ())}
    command = by_name.get(name) or getattr(mod, attr)
    if not isinstance(command, click.Command):
        raise TypeError(f"smtpgate.cli.{module}.{attr} is not a click command")
    _text_must_be_utf8(command)
    return command


#: A byte that was no UTF-8 in argv: Python keeps it as a lone surrogate
#: (U+DC80-U+DCFF, PEP 383) so that the argument can still name a file.
_UNDECODED = re.compile("[\udc80-\udcff]")


def _refuse_undecoded(value: object, param: click.Parameter, ctx: click.Context) -> None:
    """A usage error (exit 2) naming ``param`` when ``value`` holds bytes that were
    not UTF-8: such a name, reason or id can be neither stored nor looked up (SQLite
    and every encoder refuse the surrogate), which was a UnicodeEncodeError traceback
    from ``user lock``, ``guard unblock``, ``user alias add``, ``admin-log --user``..."""
    values = value if isinstance(value, tuple | list) else (value,)
    for v in values:
        m = _UNDECODED.search(v) if isinstance(v, str) else None
        if m is not None:
            raise click.BadParameter(
                f"not UTF-8 text (byte 0x{ord(m[0]) - 0xDC00:02x} at character {m.start()}); "
                "give it in UTF-8 (a terminal or script in another encoding: convert it, "
                "e.g. with iconv -t UTF-8)",
                ctx=ctx, param=param)


def _text_must_be_utf8(command: click.Command) -> None:
    """Every argument and option of ``command`` (and its subcommands) that is text,
    not a path, refuses bytes that are not UTF-8 before its type converts it. Paths
    are left alone: a file name need not be UTF-8 and Python opens it as given."""
    for param in command.params:
        if isinstance(param.type, click.Path | click.File) or getattr(param, "_utf8", False):
            continue
        convert = param.process_value

        def process(ctx: click.Context, value: Any, _p: click.Parameter = param,
                    _convert: Any = convert) -> Any:
            _refuse_undecoded(value, _p, ctx)
            return _convert(ctx, value)

        setattr(param, "process_value", process)  # noqa: B010 - one parameter, not its class
        setattr(param, "_utf8", True)  # noqa: B010
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _text_must_be_utf8(sub)


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        return load_command(cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="smtpgate")
def cli() -> None:
    """smtpgate: authenticated SMTP submission server."""


class OutputFailed(Exception):
    """Standard output could not be written (a full disk, an I/O error)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Stdout:
    """``sys.stdout``, whose write and flush errors are `OutputFailed`: an OSError
    from deep inside click or rich is otherwise indistinguishable from any other,
    and `smtpgate report --json > FILE` on a full disk ended in a traceback. A
    closed pipe (``| head``) stays BrokenPipeError, which click ends quietly."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputFailed(e) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputFailed(e) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _give_up_output(stream: TextIO) -> None:
    """Point standard output at /dev/null, so that the interpreter's own flush at exit
    does not fail again ("Exception ignored ...") with what is still buffered."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


def _escape_what_cannot_be_encoded(stream: TextIO) -> None:
    r"""A character that ``stream``'s encoding cannot write (an é under
    ``PYTHONIOENCODING=ascii``) is written as ``\xe9``, as visible.py writes a
    hidden one and as Python writes standard error, instead of a UnicodeEncodeError
    traceback in the middle of the output. An error handler chosen in
    ``PYTHONIOENCODING`` other than strict (``ascii:replace``) is kept."""
    if getattr(stream, "errors", None) != "strict":
        return
    try:
        stream.reconfigure(errors="backslashreplace")  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        pass  # not a TextIOWrapper (a test's capture): cli/output.py escapes anyway


def main() -> None:
    """Run the command; a database that fails mid-command is one error line, exit 1,
    and so is output that cannot be written.

    Commands turn the errors they expect into `OperationalError` themselves; this
    catches a store failing later (a corrupt file is only found at the first query),
    which would otherwise end in a traceback.
    """
    from smtpgate.auth.guard_store import GuardStoreError
    from smtpgate.auth.store import StoreError
    from smtpgate.cli.common import store_hint

    stdout = sys.stdout
    _escape_what_cannot_be_encoded(stdout)
    sys.stdout = cast(TextIO, _Stdout(stdout))
    try:
        try:
            cli()
        finally:
            sys.stdout.flush()  # here, where its error is handled, not at exit
    except OutputFailed as e:
        _give_up_output(stdout)
        OperationalError(
            f"cannot write the output: {e.error.strerror or e.error}",
            "check the file or device standard output goes to (a full disk?)",
        ).show()
        raise SystemExit(ExitCode.ERROR) from None
    except StoreError as e:
        OperationalError(str(e), store_hint(e, "check [accounts].database and its directory")).show()
        raise SystemExit(ExitCode.ERROR) from None
    except GuardStoreError as e:
        OperationalError(str(e), store_hint(e, "check [guard].database and its directory")).show()
        raise SystemExit(ExitCode.ERROR) from None
