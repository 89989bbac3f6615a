"""``smtpgate test``: run one SMTP session against any server and show every step.

The exit code says where it stopped (see `smtpgate.tools.tester.ExitCode` and
docs/tester.md). Secrets come from standard input, an environment variable, a
token file or a prompt, never from the command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import click

from smtpgate.plural import count
from smtpgate.tools.hostport import split_host_port
from smtpgate.tools.session import default_ehlo_name
from smtpgate.tools.tester import (
    QUIT_AFTER,
    ExitCode,
    TesterOptions,
    header_problem,
    recipient_missing,
    run_test,
)
from smtpgate.tools.transcript import Entry, Transcript


def parse_server(value: str, implicit: bool) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[v6]:PORT`` or a bare IPv6 address."""
    default = 465 if implicit else 587
    try:
        host, port = split_host_port(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--server") from None
    if not host:
        raise click.BadParameter("empty host", param_hint="--server")
    if port == "":
        return host, default
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"bad port {port!r}", param_hint="--server")
    return host, int(port)


def _read_secret_file(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise click.ClickException(f"cannot read {what} file {path}: {e.strerror}") from None
    return text.strip()


@click.command("test")
@click.option("--server", "-s", required=True, metavar="HOST[:PORT]",
              help="Server to test; port 587 by default (465 with --tls).")
@click.option("--starttls", "starttls", is_flag=True,
              help="Plain connection, then STARTTLS (required). Default except on port 465.")
@click.option("--tls", "--tls-on-connect", "implicit_tls", is_flag=True,
              help="Implicit TLS from the first byte (RFC 8314). Default on port 465. "
              "(swaks's --tls-on-connect; swaks's --tls is --starttls here.)")
@click.option("--plain", "no_tls", is_flag=True, help="No TLS at all.")
@click.option("--auth", "-a", "auth", metavar="MECH",
              help="SASL mechanism, or 'auto' for the strongest offered (default with --user).")
@click.option("--user", "-u", default="", help="User name to authenticate as.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--password-env", metavar="VAR", help="Read the password from environment VAR.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File holding an OAuth bearer token (OAUTHBEARER, XOAUTH2).")
@click.option("--from", "-f", "mail_from", metavar="ADDRESS",
              help="Envelope sender (default: --user if it is an address).")
@click.option("--to", "-t", "rcpt_to", multiple=True, metavar="ADDRESS",
              help="Recipient; repeat for several (default: the sender).")
@click.option("--data", "data_file",
              type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Send this file as the whole message (headers and body); "
              "'-' reads it from standard input.")
@click.option("--body", help="Body text of a generated test message.")
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="Header field for the message, replacing one of that name (Subject, "
              "From ...) or added; repeat for several.")
@click.option("--quit-after", type=click.Choice(QUIT_AFTER),
              help="Stop (with QUIT) after this stage.")
@click.option("--tls-verify/--no-tls-verify", default=True, show_default=True,
              help="Stop when the certificate chain or host name does not verify.")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Trust this PEM CA bundle instead of the system store.")
@click.option("--tls-version", type=click.Choice(["1.2", "1.3"]), help="Use only this version.")
@click.option("--tls-name", metavar="NAME",
              help="Name to verify the certificate against and send as SNI (default: host).")
@click.option("--ehlo", "ehlo_name", default=None, metavar="NAME",
              help="Name to send in EHLO (default: this machine's fully qualified name, "
              "else its host name, as swaks does).")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for each reply.")
@click.option("--greeting-wait", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds without a greeting (no --tls) before a second connection checks "
              "whether the port speaks implicit TLS; 0 never checks.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON record instead of text.")
def test(
    server: str,
    starttls: bool,
    implicit_tls: bool,
    no_tls: bool,
    auth: str | None,
    user: str,
    password_stdin: bool,
    password_env: str | None,
    token_file: Path | None,
    mail_from: str | None,
    rcpt_to: tuple[str, ...],
    data_file: Path | None,
    body: str | None,
    headers: tuple[str, ...],
    quit_after: str | None,
    tls_verify: bool,
    ca_file: Path | None,
    tls_version: str | None,
    tls_name: str | None,
    ehlo_name: str | None,
    timeout: float,
    greeting_wait: float,
    as_json: bool,
) -> None:
    """Test an SMTP server: connect, TLS, AUTH and send a message, showing each step.

    Exit codes: 0 success, 1 local error, 2 usage, 3 connection failure, 4 TLS
    failure, 5 auth refused, 6 auth temporary failure, 7 message refused,
    8 protocol error.
    """
    chosen = [flag for flag, on in (("--starttls", starttls), ("--tls", implicit_tls),
                                    ("--plain", no_tls)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"use only one of {', '.join(chosen)}")
    tls_mode = ("starttls" if starttls else "implicit" if implicit_tls
                else "plain" if no_tls else None)
    if password_stdin and password_env:
        raise click.UsageError("use --password-stdin or --password-env, not both")
    data_stdin = data_file is not None and str(data_file) == "-"
    if data_stdin and password_stdin:
        raise click.UsageError("--data - and --password-stdin both read standard input: "
                               "use --password-env VAR for the password")
    if data_file is not None and body is not None:
        raise click.UsageError("use --data or --body, not both")
    for field in headers:
        if (problem := header_problem(field)) is not None:
            raise click.BadParameter(problem, param_hint="--header")
    if auth is not None and not user:
        raise click.UsageError("--auth needs --user")
    host, port = parse_server(server, tls_mode == "implicit")
    mode = tls_mode or ("implicit" if port == 465 else "starttls")
    if recipient_missing(TesterOptions(host=host, port=port, user=user, mail_from=mail_from,
                                       rcpt_to=rcpt_to, quit_after=quit_after)):  # type: ignore[arg-type]  # a click.Choice of QUIT_AFTER
        # Said before connecting (and before a password prompt), not at MAIL after
        # a login.
        raise click.UsageError(
            "no recipient: pass --to ADDRESS (without it the sender is the recipient, "
            "and there is none: no --from, no --user that is an address); "
            "--quit-after mail or earlier needs none")
    password = ""
    if password_stdin:
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    elif password_env:
        if password_env not in os.environ:
            raise click.UsageError(f"environment variable {password_env} is not set")
        password = os.environ[password_env]
        if not password:
            raise click.UsageError(f"environment variable {password_env} is empty")
    token = _read_secret_file(token_file, "token") if token_file is not None else ""
    if password_stdin and not password and not token:
        # Not "--user needs --password-stdin ...", which it was given.
        raise click.UsageError("--password-stdin: standard input is empty (no password)")
    if user and not password and not token:
        if not sys.stdin.isatty():
            raise click.UsageError(
                "--user needs a secret: --password-stdin, --password-env VAR or --token-file F"
            )
        password = str(click.prompt("Password", hide_input=True))
    data = None
    if data_stdin:
        # swaks's "--data -": the message from a pipe.
        data = sys.stdin.buffer.read()
    elif data_file is not None:
        try:
            data = data_file.read_bytes()
        except OSError as e:
            raise click.ClickException(f"cannot read {data_file}: {e.strerror}") from None
    opts = TesterOptions(
        host=host,
        port=port,
        tls_mode=mode,  # type: ignore[arg-type]  # one of the flag values
        auth=(auth or "auto") if user else None,
        user=user,
        password=password,
        token=token,
        mail_from=mail_from,
        rcpt_to=rcpt_to,
        data=data,
        body=body,
        headers=headers,
        quit_after=quit_after,  # type: ignore[arg-type]  # a click.Choice of QUIT_AFTER
        tls_verify=tls_verify,
        ca_file=ca_file,
        tls_version=tls_version,
        tls_name=tls_name,
        ehlo_name=ehlo_name or default_ehlo_name(),
        timeout=timeout,
        greeting_wait=greeting_wait,
    )

    def show(entry: Entry) -> None:
        click.echo(entry.render())

    transcript = Transcript(listener=None if as_json else show)
    report = asyncio.run(run_test(opts, transcript))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    elif report.exit_code == ExitCode.SUCCESS:
        odd = (f"; warning: the server sent {count(len(report.unsolicited), 'reply', 'replies')} "
               "nobody asked for" if report.unsolicited else "")
        click.echo(f"== result: success (exit 0), stopped after {report.stage}{odd}")
    else:
        click.echo(f"** result: {report.outcome} (exit {int(report.exit_code)})")
    sys.exit(int(report.exit_code))


COMMANDS: list[click.Command] = [test]
