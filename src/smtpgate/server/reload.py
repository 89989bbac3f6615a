"""What a reload (SIGHUP, ``smtpgate reload``) may change, and loading it safely.

A reload reads the config file again and builds the TLS context from the
certificate and key it names, checked as start-up checks them. If either is
broken (or start-up would refuse it) nothing changes: the running config and
certificate stay, and the error names the key. Otherwise the
*reloadable* part of the new config replaces the running one:

- ``hostname``, ``tls.*`` (certificate, key, versions, handshake timeout),
  ``limits.*``, ``guard.*`` (except ``guard.database``), ``policy.*``,
  ``smtp.*``, ``auth.mechanisms``, ``auth.failure_floor``, ``auth.session_recheck``
  and ``passwords.*`` (the auth service's ``max_age_days``, the web admin's policy
  for a new password; the CLI reads the file each time anyway). A new ``hostname``
  is taken by the sessions; delivery keeps the running one (its EHLO to the next
  hop, the DSNs' Reporting-MTA) until a restart, and the reload says so (``partly``);
  ``state.timeout`` and ``state.on_unavailable``;
- ``accounts.*`` and the OAuth keys (``auth.oauth_issuers``, ``auth.oauth_scope``):
  each serving process builds a new auth service for new logins
  (``auth/services.py``). A changed directory is opened once here, and changed
  issuers checked as ``config check`` does, so that a setting start-up would
  refuse (a missing bind password file, a key set that is not one) fails the
  reload with its key instead of reaching the serving processes;
- ``admin.*``: the web admin is opened, moved or closed (``web/server.py``);
- ``metrics.listen``: the endpoint is opened, moved or closed by the serving
  process (``server/metrics_http.py``); every process counts in files from the
  start, so an endpoint opened later reports the counts since start-up.

Everything else (listeners, ``server.*``, ``queue.*``, ``delivery.*``,
``auth.log_file``, ``auth.decoy_secret_file``,
``guard.database``, where the state lives) is bound to sockets, processes, open
files or thread pools made at start-up; a reload that changes them keeps the
running values and names the keys so the administrator knows a restart is
needed. docs/operations.md has the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtpgate.config import Config, ConfigError, in_file, load_config
from smtpgate.tls.session import ClientAuth, ServerTlsContext, TlsConfigError, make_server_context


class ReloadError(Exception):
    """The new config or certificate is unusable; ``key`` names the setting, and
    ``path`` the config file when the problem is in it (the log line then names
    the file too, as start-up does)."""

    def __init__(self, key: str, message: str, *, path: Path | None = None) -> None:
        super().__init__(in_file(path, key, message) if path is not None else f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Reloaded:
    #: The running config with the reloadable keys taken from the file.
    cfg: Config
    tls: ServerTlsContext
    #: Keys that differ in the file but take effect only after a restart.
    needs_restart: tuple[str, ...]
    #: What start-up would warn about the certificate and key (expired, expiring,
    #: not naming ``hostname``, a key readable by all), as ``key: message``.
    warnings: tuple[str, ...] = ()
    #: Keys taken, but not everywhere until a restart, as ``key: what keeps the old``.
    partly: tuple[str, ...] = ()


def build_tls(cfg: Config) -> ServerTlsContext:
    """The server TLS context of ``cfg`` (with each listener's ``client_ca``, read
    again on a reload). Raises TlsConfigError naming the key."""
    client_auth = {
        lst.name: ClientAuth(
            cfg.path(lst.client_ca),
            required=lst.client_certificates == "required",
            trust_emails=lst.client_cert_san_login,
            key=f"listeners.{i}.client_ca",  # by index, as preflight names it
        )
        for i, lst in enumerate(cfg.listeners)
        if lst.client_certificates is not None and lst.client_ca is not None
    }
    return make_server_context(
        cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key), cfg.tls.min_version, client_auth,
        session_tickets=cfg.tls.session_tickets,
    )


def load(path: Path, running: Config) -> Reloaded:
    """Read ``path`` and the certificate it names; merge into ``running``.

    Raises:
        ReloadError: the config does not load (the first problem is named, with
            a count of the others) or the certificate/key is unusable.
    """
    try:
        new = load_config(path)
    except ConfigError as e:
        key, message = e.problems[0]
        more = len(e.problems) - 1
        raise ReloadError(key, message + (f" (and {more} more problems)" if more else ""),
                          path=path) from None
    merged = merge(running, new)
    # Start-up's checks first, as start-up runs them before it builds the context:
    # they say which certificate of the chain a key belongs to, and that a
    # mismatched key should be the certificate's own (certbot's privkey.pem),
    # where OpenSSL's failure only says "does not belong".
    warnings = check_certificate(merged)
    try:
        tls = build_tls(merged)
    except TlsConfigError as e:
        raise ReloadError(e.key, str(e).removeprefix(f"{e.key}: ")) from None
    if directory_changed(running, merged):
        check_directory(merged)
    if oauth_changed(running, merged):
        check_oauth(merged)
    return Reloaded(merged, tls, changed_keys(merged, new), warnings, partly_taken(running, merged))


def partly_taken(running: Config, merged: Config) -> tuple[str, ...]:
    """Changed keys that new sessions use at once but the delivery side keeps until a
    restart: it was built at start-up with them (``queue/factory.py``), as with
    ``delivery.*`` itself."""
    if running.hostname == merged.hostname:
        return ()
    note = ("hostname: new sessions use it now; delivery keeps "
            f"{running.hostname!r} (its EHLO to the next hop, the Reporting-MTA of "
            "delivery status notifications) until a restart")
    return (note,)


def check_certificate(cfg: Config) -> tuple[str, ...]:
    """The certificate checks of start-up (``preflight.check_tls``): what start-up
    refuses (a certificate not yet valid) fails the reload too, rather than being
    served until the next restart fails; its warnings are returned to be logged.

    Raises:
        ReloadError: naming the key, as start-up would.
    """
    import datetime as dt

    from smtpgate.preflight import check_tls, errors

    found = check_tls(cfg, dt.datetime.now(dt.UTC))
    for problem in errors(found):
        raise ReloadError(problem.key, problem.message)
    return tuple(f"{p.key}: {p.message}" for p in found)


#: The ``[auth]`` keys the token verifier and the OAuth mechanisms are built from.
OAUTH_KEYS = ("oauth_issuers", "oauth_scope", "oauth_openid_configuration")


def directory_changed(a: Config, b: Config) -> bool:
    """The account store must be opened again (``[accounts]``)."""
    return a.accounts != b.accounts


def oauth_changed(a: Config, b: Config) -> bool:
    """The token verifier must be built again."""
    return any(getattr(a.auth, k) != getattr(b.auth, k) for k in OAUTH_KEYS)


def check_directory(cfg: Config) -> None:
    """Open the account store of ``cfg`` once and close it, as start-up does: a
    missing password file or a service account the directory refuses is an error;
    a directory that does not answer is only logged (logins get 454 until it does).
    Blocks for at most the directory's ``connect_timeout``.

    Raises:
        ReloadError: naming the key.
    """
    from smtpgate.auth.accounts import accounts_key, open_account_store
    from smtpgate.auth.directory import StoreError
    from smtpgate.preflight import check_account_database, errors

    for p in errors(check_account_database(cfg)):
        raise ReloadError(p.key, p.message)
    try:
        open_account_store(cfg).close()
    except StoreError as e:
        message = str(e)
        key = getattr(e, "key", None) or message.split(" ", 1)[0].rstrip(":")
        if type(e).__name__ == "ServiceBindRefused":
            key = "accounts.ldap.bind_password_file"  # or bind_dn: as preflight names it
        elif not key.startswith("accounts."):
            key = accounts_key(cfg)
        raise ReloadError(key, message.removeprefix(key).lstrip(": ")) from None


def check_oauth(cfg: Config) -> None:
    """The key-set and secret files of the issuers, as start-up checks them.

    Raises:
        ReloadError: naming the key (``auth.oauth_issuers.N.jwks_file``...).
    """
    from smtpgate.preflight import check_oauth as problems
    from smtpgate.preflight import errors

    for p in errors(problems(cfg)):
        raise ReloadError(p.key, p.message)


def merge(running: Config, new: Config) -> Config:
    """``running`` with the reloadable keys of ``new``."""
    # The mechanisms and the issuers together: the config refuses OAuth
    # mechanisms without an issuer, and a reload may add both at once.
    auth = running.auth.model_copy(update={
        key: getattr(new.auth, key) for key in (
            "mechanisms", "failure_floor", "session_recheck", *OAUTH_KEYS)})
    guard = new.guard.model_copy(update={"database": running.guard.database})
    return running.model_copy(
        update={
            "hostname": new.hostname,
            "tls": new.tls,
            "limits": new.limits,
            "guard": guard,
            # The bound and the mode apply at once; where the state lives needs a restart.
            "state": running.state.model_copy(update={
                "timeout": new.state.timeout, "on_unavailable": new.state.on_unavailable}),
            "policy": new.policy,
            "smtp": new.smtp,
            "auth": auth,
            # A new auth service per serving process (auth/services.py).
            "accounts": new.accounts,
            # Read where a password is checked or set: the auth service (max_age_days)
            # and the web admin (the policy of a new password).
            "passwords": new.passwords,
            # Moved, opened or closed by the serving process (web/server.py).
            "admin": new.admin,
            # Opened, moved or closed by the serving process (server/metrics_http.py):
            # every process counts in files from the start.
            "metrics": new.metrics,
        }
    )


def changed_keys(a: Config, b: Config) -> tuple[str, ...]:
    """Dotted keys whose values differ (a list such as ``listeners`` counts as one)."""
    out: list[str] = []
    _diff(a.model_dump(exclude={"base_dir"}), b.model_dump(exclude={"base_dir"}), "", out)
    return tuple(out)


def _diff(a: Any, b: Any, prefix: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            _diff(a.get(k), b.get(k), f"{prefix}{k}.", out)
    elif a != b:
        out.append(prefix.rstrip("."))
