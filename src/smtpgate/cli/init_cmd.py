"""``smtpgate init``: a working directory with config, certificate, database and a demo account.

Two layouts. By default everything lives in ``--dir`` (``make run``'s ``./var``),
with paths in the config relative to it. For production, ``--state-dir`` and
``--log-dir`` put the databases, spool and Maildir, and the auth log, in their
own directories (``/var/lib/smtpgate``, ``/var/log/smtpgate``), and ``--owner``
hands them to the user the service runs as: that user may write its state and
logs, and only read its config and TLS key (root-owned, group-readable), so a
compromised server cannot rewrite either. ``init`` then checks, as that user,
that this holds.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from smtpgate.auth.decoy import create_decoy_secret, decoy_secret_path
from smtpgate.cli.common import OperationalError
from smtpgate.config import Config, ConfigError, check_hostname, parse_config
from smtpgate.preflight import check_listeners
from smtpgate.server import privileges

#: Where the config init writes serves metrics and the web admin: loopback, the
#: ports of issue 14's contract. A config written by hand opens only what it names.
DEFAULT_METRICS = "127.0.0.1:9465"
DEFAULT_ADMIN = "127.0.0.1:9480"

_TEMPLATE = """\
# smtpgate configuration, written by `smtpgate init`.
# Every key is described in docs/configuration.md; `smtpgate config check` validates it.
hostname = "{hostname}"

[[listeners]]
name = "submission"          # RFC 6409 submission with STARTTLS (RFC 3207)
address = "{submission}"
tls = "starttls"

[[listeners]]
name = "submissions"         # RFC 8314 implicit TLS
address = "{submissions}"
tls = "implicit"

[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"

[accounts]
database = {accounts_db}

[auth]
log_file = {log_file}
{guard}
[queue]
spool = {spool}

[delivery]
{delivery}
{http}"""


def _quote(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def _delivery_block(deliver: str, state: Path | None) -> str:
    kind, _, rest = deliver.partition(":")
    if kind == "maildir" and rest:
        maildir = str(state / rest) if state is not None else rest
        return f'mode = "maildir"\nmaildir = {_quote(maildir)}'
    if kind == "relay" and rest:
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit():
            raise click.BadParameter("expected relay:HOST:PORT", param_hint="--deliver")
        return f'mode = "relay"\nrelay_host = "{host}"\nrelay_port = {port}'
    raise click.BadParameter("expected maildir:PATH or relay:HOST:PORT", param_hint="--deliver")


def _http_blocks(metrics: str, admin: str) -> str:
    """The [metrics] and [admin] tables; an empty address leaves a table out (off)."""
    out = ""
    if metrics:
        out += (f"\n[metrics]\nlisten = {_quote(metrics)}"
                "        # Prometheus /metrics (docs/operations.md); \"\" turns it off\n")
    if admin:
        out += (f"\n[admin]\nlisten = {_quote(admin)}"
                "        # the web admin; log in after `smtpgate admin add NAME`; \"\" turns it off\n")
    return out


def _hostname(value: str) -> str:
    """Checked before anything is written: the name becomes the certificate's SAN."""
    try:
        return check_hostname(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--hostname") from None


def demo_password() -> str:
    """20 random URL-safe characters (120 bits) that start with a letter or digit:
    a password starting with "-" is taken for an option by swaks and other tools
    the README has newcomers paste it into."""
    while True:
        password = secrets.token_urlsafe(15)
        if password[0].isalnum():
            return password


def _demo_address(hostname: str) -> str:
    return f"demo@{hostname.lower()}"


@click.command()
@click.option(
    "--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path)
)
@click.option(
    "--hostname", default="localhost", show_default=True, callback=lambda _c, _p, v: _hostname(v),
    help="Server name: a DNS host name (RFC 1123), e.g. mail.example.org.",
)
@click.option("--submission", default="127.0.0.1:2587", show_default=True, help="STARTTLS listener.")
@click.option(
    "--submissions", default="127.0.0.1:2465", show_default=True, help="Implicit-TLS listener."
)
@click.option(
    "--deliver",
    default="maildir:mail",
    show_default=True,
    help="maildir:PATH or relay:HOST:PORT.",
)
@click.option(
    "--metrics", default=DEFAULT_METRICS, show_default=True, metavar="HOST:PORT",
    help="Prometheus /metrics endpoint; '' leaves it off.",
)
@click.option(
    "--admin", default=DEFAULT_ADMIN, show_default=True, metavar="HOST:PORT",
    help="Web admin (plain HTTP on loopback, HTTPS elsewhere); '' leaves it off.",
)
@click.option("--no-demo", is_flag=True, help="Do not create the demo account.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Databases, spool and Maildir go here (production: /var/lib/smtpgate). "
    "Default: DIR.",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The auth log goes here (production: /var/log/smtpgate). Default: DIR.",
)
@click.option(
    "--owner",
    metavar="USER",
    default=None,
    help="The user the server runs as (production: smtpgate; needs root). It gets the "
    "state and log directories; the config and TLS key stay root's, readable by "
    "USER's group.",
)
def init(
    directory: Path,
    hostname: str,
    submission: str,
    submissions: str,
    deliver: str,
    metrics: str,
    admin: str,
    no_demo: bool,
    state_dir: Path | None,
    log_dir: Path | None,
    owner: str | None,
) -> None:
    """Create DIR with smtpgate.toml, a self-signed certificate, the account
    database, a spool and a demo account (its password is printed once).

    For production: init --dir /etc/smtpgate --state-dir /var/lib/smtpgate
    --log-dir /var/log/smtpgate --owner smtpgate --hostname mail.example.org
    --submission 0.0.0.0:587 --submissions 0.0.0.0:465 --no-demo"""
    try:
        with _no_write_for_others():
            _create(directory, hostname, submission, submissions, deliver, metrics, admin,
                    no_demo, state_dir, log_dir, owner)
    except OSError as e:
        # A directory that cannot be made or written in (/etc/smtpgate as a user
        # other than root, a read-only file system) was a traceback.
        where = e.filename if e.filename is not None else directory
        raise OperationalError(
            f"cannot create {where}: {e.strerror or e}",
            "run init as a user that may write there (root for /etc/smtpgate), or "
            "choose other directories; remove what it made before running it again",
        ) from None


@contextlib.contextmanager
def _no_write_for_others() -> Iterator[None]:
    """The umask of the caller, with write for group and others taken out (as
    ``sudo`` does): what init makes follows it, and under ``umask 000`` (a
    container's entrypoint, a service manager's ``UMask=0000``) or ``002`` until
    2026-12 the config, the TLS directory (so the key could be replaced), the state
    directory, the spool and the Maildir were writable by every user of the
    machine, or by the admin's whole group."""
    previous = os.umask(0o022)
    os.umask(previous | 0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _create(
    directory: Path, hostname: str, submission: str, submissions: str, deliver: str,
    metrics: str, admin: str, no_demo: bool, state_dir: Path | None, log_dir: Path | None,
    owner: str | None,
) -> None:
    """What `init` does (its docstring is its --help)."""
    from smtpgate.admin import AccountAdmin, default_actor
    from smtpgate.auth.accounts import open_account_store
    from smtpgate.auth.guard_store import SqliteGuardStore
    from smtpgate.tls.certs import write_self_signed

    config_path = directory / "smtpgate.toml"
    if config_path.exists():
        click.echo(f"error: {config_path} exists; refusing to overwrite it", err=True)
        raise SystemExit(1)
    who = _owner(owner) if owner else None
    state = state_dir.resolve() if state_dir is not None else None
    logs = log_dir.resolve() if log_dir is not None else None
    text = _TEMPLATE.format(
        hostname=hostname,
        submission=submission,
        submissions=submissions,
        accounts_db=_quote(str(state / "accounts.sqlite") if state else "accounts.sqlite"),
        log_file=_quote(str(logs / "auth.log") if logs else "auth.log"),
        # The guard's file defaults to DIR; with a state directory it goes there too.
        guard=f"\n[guard]\ndatabase = {_quote(str(state / 'guard.sqlite'))}\n" if state else "",
        spool=_quote(str(state / "spool") if state else "spool"),
        delivery=_delivery_block(deliver, state),
        http=_http_blocks(metrics.strip(), admin.strip()),
    )
    home = state or directory.resolve()
    for db in (home / "accounts.sqlite", home / "guard.sqlite"):
        if db.exists():
            click.echo(
                f"error: {db} exists; init does not touch existing state (move it away, "
                "or write the config by hand around it)",
                err=True,
            )
            raise SystemExit(1)
    for pem in (directory / "tls/cert.pem", directory / "tls/key.pem"):
        # lexists: a link (to certbot's live/ files, say) would be written through,
        # replacing the real certificate and key with the self-signed pair.
        if os.path.lexists(pem):
            click.echo(
                f"error: {pem} exists; init does not replace a certificate or key (it "
                "may be, or link to, the one in use): move it away, or run init with "
                "another --dir and point tls.cert and tls.key at it",
                err=True,
            )
            raise SystemExit(1)
    # Validate the options before anything is written: a bad --submission must not
    # leave a directory with a key in it behind.
    try:
        cfg = parse_config(text, directory.resolve(), tls_files=False)
    except ConfigError as e:
        key, msg = e.problems[0]
        raise click.BadParameter(msg, param_hint=_option_for(key)) from None
    clash = next((p for p in check_listeners(cfg) if p.severity == "error"), None)
    if clash is not None:
        raise click.BadParameter(clash.message, param_hint=_option_for(clash.key))
    created_config_dir = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    write_self_signed(directory / "tls/cert.pem", directory / "tls/key.pem", hostname)
    try:
        cfg.path(cfg.queue.spool).mkdir(parents=True, exist_ok=True)
        if cfg.delivery.mode == "maildir":
            for sub in ("tmp", "new", "cur"):
                (cfg.path(cfg.delivery.maildir) / sub).mkdir(parents=True, exist_ok=True)
        cfg.path(cfg.accounts.database).parent.mkdir(parents=True, exist_ok=True)
        # A random demo password: the [passwords] policy is for passwords people choose.
        accounts_admin = AccountAdmin(open_account_store(cfg), cfg.accounts,
                                      actor=default_actor())
        password = ""
        user = _demo_address(hostname)
        try:
            if not no_demo:
                password = demo_password()
                accounts_admin.add_account(user, password)
        finally:
            accounts_admin.close()
        # Created now, so that a first `smtpgate guard ...` run as root cannot leave a
        # root-owned file the server may not open.
        SqliteGuardStore(cfg.path(cfg.guard.database)).close()
        # The secret behind SCRAM's fake salts for unknown names (auth/decoy.py): state,
        # beside the databases, so a backup of the state directory carries it along.
        create_decoy_secret(decoy_secret_path(cfg))
        log_file = cfg.path(cfg.auth.log_file) if cfg.auth.log_file is not None else None
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            if who is not None:
                # fail2ban refuses to start a jail whose log file does not exist yet.
                os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640))
    except OSError:
        # The pair this run wrote goes with it: left behind, it would stop the next
        # run (init does not replace a certificate or key).
        for pem in (directory / "tls/cert.pem", directory / "tls/key.pem"):
            pem.unlink(missing_ok=True)
        raise
    config_path.write_text(text, encoding="utf-8")
    if who is not None:
        _hand_over(cfg, config_path, who, created_config_dir, log_file)
    # Every command printed below runs as shown: there is no default config path, so
    # each names this one (a bare `smtpgate admin add NAME` stopped at "no config").
    prog = sys.argv[0] if sys.argv and sys.argv[0].endswith("smtpgate") else "smtpgate"
    click.echo(f"wrote {config_path}")
    click.echo(f"  certificate: {directory / 'tls/cert.pem'} (self-signed, ECDSA P-256)")
    click.echo(f"  accounts:    {cfg.path(cfg.accounts.database)}")
    if cfg.metrics.url:
        click.echo(f"  metrics:     {cfg.metrics.url} (after `smtpgate serve`)")
    if cfg.admin.url:
        click.echo(f"  web admin:   {cfg.admin.url} (create a login with "
                   f"`{prog} admin add NAME --config {config_path}`)")
    if state is not None or logs is not None:
        click.echo(f"  state:       {state or directory}")
        click.echo(f"  logs:        {logs or directory}")
    if who is not None:
        click.echo(
            f"  owner:       {who.name} (writes the state and logs; reads the config and "
            f"key through group {who.group})"
        )
    elif os.geteuid() == 0 and (state is not None or logs is not None):
        click.echo(
            "note: the files belong to root; a server running as another user "
            "(the systemd unit's User=smtpgate) needs --owner USER",
            err=True,
        )
    if password:
        click.echo(f"demo account: {user}")
        click.echo(f"    password: {password}    (shown once; change it with "
                   f"`{prog} user passwd {user} --config {config_path}`)")
        click.echo("send a test message (after `smtpgate serve`):")
        host, port = cfg.listeners[0].host_port
        # A wildcard address is not in the certificate: the test goes to loopback.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        click.echo(
            f"  echo '{password}' | {prog} test --server {server} --starttls "
            f"--ca {directory / 'tls/cert.pem'} --user {user} --password-stdin "
            f"--from {user} --to {user}"
        )


#: The option of ``init`` behind each config key it writes from one.
_OPTION_KEYS = (
    ("listeners.0.", "--submission"),
    ("listeners.1.", "--submissions"),
    ("metrics.", "--metrics"),
    ("admin.", "--admin"),
    ("delivery.", "--deliver"),
    ("hostname", "--hostname"),
)


def _option_for(key: str) -> str:
    """'--submission (listeners.0.address)' for a problem with a config key."""
    option = next((o for prefix, o in _OPTION_KEYS if key.startswith(prefix)), None)
    return f"{option} ({key})" if option else key


@dataclass(frozen=True, slots=True)
class _Owner:
    name: str
    uid: int
    gid: int
    group: str


def _owner(name: str) -> _Owner:
    """USER of --owner, checked before anything is written."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise click.BadParameter(
            f"no user {name!r} (create it first: useradd --system --home-dir "
            f"/var/lib/smtpgate --shell /usr/sbin/nologin {name})",
            param_hint="--owner",
        ) from None
    if pw.pw_uid != os.geteuid() and os.geteuid() != 0:
        raise click.BadParameter(
            f"giving files to {name} needs root (run init with sudo)", param_hint="--owner"
        )
    try:
        group = grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        group = str(pw.pw_gid)
    return _Owner(name, pw.pw_uid, pw.pw_gid, group)


def _hand_over(
    cfg: Config, config_path: Path, who: _Owner, created_config_dir: bool, log_file: Path | None
) -> None:
    """Give the state and log to ``who``; let its group read the config and key."""
    config_dir = config_path.parent
    key = cfg.path(cfg.tls.key)
    # Read-only for the server: root-owned, group-readable.
    for path, mode in ((config_path, 0o640), (key, 0o640), (key.parent, 0o750)):
        os.chown(path, -1, who.gid)
        os.chmod(path, mode)
    if created_config_dir:
        os.chown(config_dir, -1, who.gid)
        os.chmod(config_dir, 0o750)
    # Written by the server: owned by it.
    owned: list[Path] = []
    for db in (cfg.path(cfg.accounts.database), cfg.path(cfg.guard.database)):
        owned += [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
        owned.append(db.parent)
    owned.append(cfg.path(cfg.queue.spool))
    owned.append(decoy_secret_path(cfg))  # stays 0600: the server's alone
    if cfg.delivery.mode == "maildir":
        owned.append(cfg.path(cfg.delivery.maildir))
    if log_file is not None:
        owned += [log_file, log_file.parent]
    for path in owned:
        if not path.exists() or path == config_dir:
            continue
        for p in [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]:
            os.chown(p, who.uid, who.gid)
        if path.is_dir():
            os.chmod(path, 0o750)
    _check_as(who, cfg, config_path)


def _check_as(who: _Owner, cfg: Config, config_path: Path) -> None:
    """Check, as ``who``, what the server will need: a mistake here (a config
    directory others may not enter, say) otherwise shows only at the first start."""
    need: list[tuple[int, Path]] = [
        (os.R_OK, config_path),
        (os.R_OK, cfg.path(cfg.tls.cert)),
        (os.R_OK, cfg.path(cfg.tls.key)),
    ]
    write = os.R_OK | os.W_OK | os.X_OK
    need += [(write, cfg.path(cfg.accounts.database).parent), (write, cfg.path(cfg.queue.spool))]
    need.append((os.R_OK, decoy_secret_path(cfg)))
    if cfg.delivery.mode == "maildir":
        need.append((write, cfg.path(cfg.delivery.maildir) / "new"))
    if cfg.auth.log_file is not None:
        need.append((write, cfg.path(cfg.auth.log_file).parent))
    # The Python this runs on, which the service will run on (the README's
    # /opt/smtpgate/.venv): one under /root (pyenv) is not the owner's to read.
    python = privileges.python_paths()
    # A forked child takes the owner's identity and asks the kernel (os.access uses
    # the real ids); no program has to be executable by the owner for this.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 0
        try:
            os.close(read_end)
            os.setgroups([who.gid])
            os.setgid(who.gid)
            os.setuid(who.uid)
            for mode, path in need:
                if not os.access(path, mode):
                    verb = "read" if mode == os.R_OK else "write in"
                    os.write(write_end, f"{verb} {path}".encode())
                    code = 1
                    break
            else:
                for path in python:
                    if not os.access(path, os.R_OK | os.X_OK):
                        os.write(write_end, str(path).encode())
                        code = 3
                        break
        except OSError:
            code = 2
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        failed = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 3:
        # The files are right; the program may be replaced before the first start.
        click.echo(
            f"warning: user {who.name} cannot read {failed}, the Python smtpgate runs "
            f"on: a server running as {who.name} cannot start from it; make the venv "
            "with the system's python3 (README, \"Running it for real\")",
            err=True,
        )
    elif os.waitstatus_to_exitcode(status) != 0:
        click.echo(
            f"error: user {who.name} cannot {failed or 'take the identity to check the files'}; "
            "check the permissions of the directories on the way",
            err=True,
        )
        raise SystemExit(1)
