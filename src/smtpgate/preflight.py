"""Pre-flight checks: what ``serve`` needs before it binds, said in plain words.

Theory of operation
-------------------
`config.load_config` checks the *shape* of the config (types, ranges, unknown
keys). `run_checks` checks that the world matches it: the certificate and key
load, are PEM, belong together and are in date; the files the server reads are
readable by the user running the check; the databases open and were not written
by a newer smtpgate; the directories it writes are writable; the delivery set-up
builds. Each finding is a `Problem` naming the config key and saying what is
wrong and what to do, never an OpenSSL error tuple or a traceback. It also lists
every loosening of a secure default in force (`loosenings`, principle 3), as a
warning; ``serve`` logs the same list at start-up.

``smtpgate config check`` prints the problems; ``serve`` runs the same function
before binding and refuses to start on an error. Nothing here binds, connects,
or writes: a check of the config of a running server changes nothing.

Permissions are checked for the user running the check, so run it as the user
the server runs as (``sudo -u smtpgate smtpgate config check``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import sqlite3
import ssl
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from smtpgate import mechanism_facts
from smtpgate.auth.networks import in_networks, parse_networks
from smtpgate.config import Config, ListenerConfig, hostname_problem
from smtpgate.plural import count
from smtpgate.queue.space import MIN_FREE_INODES, free_bytes, free_inodes
from smtpgate.smtp import replies as R

Severity = Literal["error", "warning"]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: A certificate that expires sooner than this is worth a warning: certbot renews
#: 30 days before the end, so a certificate this close has missed its renewal.
EXPIRY_WARNING_DAYS = 30
#: Files read here are small; a path to a device or a huge file must not hang us.
_MAX_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: ``key`` is the config key (``tls.key``), ``message`` says what is
    wrong and how to fix it."""

    severity: Severity
    key: str
    message: str
    #: A warning about a service that is down now, not about the config (the
    #: account database not answering): ``serve`` starts, but logs it as an ERROR,
    #: since no login succeeds until the service is back.
    outage: bool = False

    def to_json(self) -> dict[str, str]:
        return {"severity": self.severity, "key": self.key, "message": self.message}

    def __str__(self) -> str:
        return f"{self.severity}: {self.key}: {self.message}"


def _error(key: str, message: str) -> Problem:
    return Problem("error", key, message)


def _warning(key: str, message: str) -> Problem:
    return Problem("warning", key, message)


def run_checks(cfg: Config, *, now: dt.datetime | None = None) -> list[Problem]:
    """Every check ``serve`` runs before binding, then the loosenings in force.

    Never raises for anything a config or the file system can hold.
    """
    when = now or dt.datetime.now(dt.UTC)
    out: list[Problem] = []
    checks: list[tuple[str, Callable[[], list[Problem]]]] = [
        ("tls", lambda: check_tls(cfg, when)),
        ("listeners", lambda: check_listeners(cfg)),
        ("listeners.client_ca", lambda: check_client_cas(cfg, when)),
        ("auth_listeners", lambda: check_front_doors(cfg)),
        ("accounts.database", lambda: check_account_database(cfg)),
        ("accounts.scram_iterations", lambda: check_scram_iterations(cfg)),
        ("accounts.ldap", lambda: check_ldap(cfg)),
        ("accounts.postgresql", lambda: check_postgres(cfg)),
        ("guard.database", lambda: check_guard_database(cfg)),
        ("state", lambda: check_state(cfg)),
        ("auth.decoy_secret_file", lambda: check_decoy_secret(cfg)),
        ("queue.spool", lambda: check_directories(cfg)),
        ("queue.min_free_space", lambda: check_spool_space(cfg)),
        ("delivery", lambda: check_delivery(cfg)),
        ("auth.oauth_issuers", lambda: check_oauth(cfg)),
    ]
    for key, check in checks:
        try:
            out += check()
        except Exception as e:  # noqa: BLE001 - a check reports, never crashes the command
            out.append(_error(key, f"could not be checked: {type(e).__name__}: {e}"))
    return out + loosenings(cfg)


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


# --- files ---------------------------------------------------------------------------------


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):  # pragma: no cover - no passwd entry
        return f"uid {os.geteuid()}"


def _denied(path: Path, access: str) -> str:
    return (
        f"permission denied: user {_user()} cannot {access} {path}; give that user access "
        f"(chown or chmod), or run smtpgate as the user that owns it"
    )


def _read_only(path: Path) -> bool:
    """Whether ``path`` is on a file system mounted read-only: access(2) then fails
    for writing (EROFS) whatever the owner and mode, so "permission denied ...
    chown or chmod" would send an operator the wrong way."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _under_systemd() -> bool:
    """Whether this process runs as a systemd service: systemd sets ``INVOCATION_ID``
    for every process of a unit (systemd.exec(5)), a login shell has none."""
    return bool(os.environ.get("INVOCATION_ID"))


def _not_writable(path: Path, access: str) -> str:
    """Why ``path`` cannot be written: a read-only file system, or a permission.

    Under systemd, a read-only file system is almost always the unit's sandbox
    (``ProtectSystem=strict`` in smtpgate's unit leaves only its StateDirectory and
    LogsDirectory writable), while ``mount`` in a shell shows the file system
    read-write: "remount it" would send the operator the wrong way, so the message
    names ``ReadWritePaths=`` instead."""
    if _read_only(path):
        if _under_systemd():
            return (f"{path} is read-only for this service (chown or chmod cannot help): "
                    "the systemd unit's ProtectSystem=strict leaves only its "
                    "StateDirectory and LogsDirectory writable; add the directory to "
                    "ReadWritePaths= in a drop-in (systemctl edit smtpgate), or point "
                    "the setting at a writable directory")
        return (f"{path} is on a read-only file system (chown or chmod cannot help): "
                "remount it read-write, or point the setting at a writable directory")
    return _denied(path, access)


def read_file(key: str, path: Path) -> bytes | Problem:
    """The bytes of ``path``, or a Problem saying in plain words why not."""
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_READ + 1)
    except FileNotFoundError:
        return _error(key, f"{path} does not exist")
    except PermissionError:
        return _error(key, _denied(path, "read"))
    except IsADirectoryError:
        return _error(key, f"{path} is a directory, not a file")
    except OSError as e:
        return _error(key, f"cannot read {path}: {e.strerror or e}")
    if len(data) > _MAX_READ:
        return _error(key, f"{path} is larger than {_MAX_READ} bytes; is it the right file?")
    return data


def secret_readable_by_all(key: str, path: Path) -> list[Problem]:
    """A warning when the secret file ``path`` may be read by every user of the
    machine (its mode grants "other" read): the fix is the mode, not smtpgate."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return []  # reading it already said what is wrong
    if not mode & stat.S_IROTH:
        return []
    return [_warning(key, f"{path} is readable by every user of this machine (mode "
                     f"{stat.S_IMODE(mode):04o}); it holds a secret: chmod o-rwx {path} "
                     "(0640 with the group smtpgate runs as, or 0600)")]


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable_dir(key: str, path: Path, what: str) -> list[Problem]:
    """``path`` is (or can be created as) a directory this user can write in."""
    if path.exists():
        if not path.is_dir():
            return [_error(key, f"{path} is not a directory ({what})")]
        if not os.access(path, os.W_OK | os.X_OK):
            return [_error(key, _not_writable(path, f"write in the {what} directory"))]
        return []
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        return [_error(key, f"cannot create {path}: {parent} is not a directory")]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [_error(key, f"cannot create {path}: " + _not_writable(parent, "write in"))]
    return []


def _writable_file(key: str, path: Path, what: str) -> list[Problem]:
    """``path`` is (or can be created as) a file this user can write."""
    if path.exists():
        if path.is_dir():
            return [_error(key, f"{path} is a directory, not a file ({what})")]
        if not os.access(path, os.W_OK):
            return [_error(key, _not_writable(path, f"write the {what}"))]
        return []
    return _writable_dir(key, path.parent, f"directory of the {what}")


# --- TLS ------------------------------------------------------------------------------------

_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_KEY_LABELS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"}


def _labels(data: bytes) -> set[bytes]:
    return set(_PEM_LABEL.findall(data))


def _is_der_certificate(data: bytes) -> bool:
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return False
    return True


def _is_der_key(data: bytes) -> bool:
    try:
        serialization.load_der_private_key(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _spki(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]  # any certificate or private key
    data: bytes = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def _certificate_shape(path: Path, data: bytes, key_data: bytes) -> list[Problem]:
    labels = _labels(data)
    if b"CERTIFICATE" in labels:
        return []
    if labels & _KEY_LABELS and b"CERTIFICATE" in _labels(key_data):
        return [_error("tls.cert", "tls.cert and tls.key are swapped: tls.cert holds a private "
                       "key and tls.key a certificate; exchange the two paths")]
    if labels & _KEY_LABELS:
        return [_error("tls.cert", f"{path} holds a private key, not a certificate; point "
                       "tls.cert at the certificate chain (fullchain.pem with certbot)")]
    if _is_der_certificate(data):
        return [_error("tls.cert", f"{path} is a DER (binary) certificate, not PEM; convert it "
                       f"with: openssl x509 -inform der -in {path} -out {path}.pem")]
    return [_error("tls.cert", f"{path} is not a PEM certificate (no '-----BEGIN CERTIFICATE"
                   "-----' line)")]


def _key_shape(path: Path, data: bytes, cert_data: bytes) -> list[Problem]:
    labels = _labels(data)
    if b"ENCRYPTED PRIVATE KEY" in labels or b"Proc-Type: 4,ENCRYPTED" in data:
        return [_error("tls.key", f"{path} is protected by a passphrase, which smtpgate cannot "
                       f"ask for; store it without one (openssl pkey -in {path} -out "
                       "NEWFILE), readable only by the server's user")]
    if labels & _KEY_LABELS:
        return []
    if b"CERTIFICATE" in labels:
        if b"CERTIFICATE" not in _labels(cert_data) and _labels(cert_data) & _KEY_LABELS:
            return []  # swapped: reported once, on tls.cert
        return [_error("tls.key", f"{path} holds a certificate, not a private key; point "
                       "tls.key at the key (privkey.pem with certbot)")]
    if _is_der_key(data):
        return [_error("tls.key", f"{path} is a DER (binary) key, not PEM; convert it with: "
                       f"openssl pkey -inform der -in {path} -out {path}.pem")]
    return [_error("tls.key", f"{path} is not a PEM private key (no '-----BEGIN PRIVATE KEY"
                   "-----' line)")]


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)]


def _names_host(names: list[str], host: str) -> bool:
    host = host.lower()
    for name in (n.lower() for n in names):
        if name == host:
            return True
        # RFC 6125 §6.4.3: a wildcard covers exactly one left-most label.
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def _day(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def check_tls(cfg: Config, now: dt.datetime) -> list[Problem]:
    """Certificate and key: readable, PEM, not swapped, belonging together, in date;
    then OpenSSL loads them as ``serve`` does."""
    cert_path, key_path = cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key)
    cert_data = read_file("tls.cert", cert_path)
    key_data = read_file("tls.key", key_path)
    read_problems = [p for p in (cert_data, key_data) if isinstance(p, Problem)]
    if read_problems:
        return read_problems
    assert isinstance(cert_data, bytes) and isinstance(key_data, bytes)
    out = _certificate_shape(cert_path, cert_data, key_data)
    out += _key_shape(key_path, key_data, cert_data)
    if out:
        return out
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError as e:
        return [_error("tls.cert", f"{cert_path} holds a damaged certificate ({e})")]
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(key_data, None)
    except TypeError:
        return [_error("tls.key", f"{key_path} is protected by a passphrase, which smtpgate "
                       "cannot ask for; store it without one")]
    except (ValueError, UnsupportedAlgorithm) as e:
        return [_error("tls.key", f"{key_path} holds a damaged or unsupported key ({e})")]
    leaf = chain[0]
    if _spki(leaf) != _spki(key):
        later = [i for i, c in enumerate(chain[1:], 2) if _spki(c) == _spki(key)]
        if later:
            return [_error("tls.cert", f"the key matches certificate #{later[0]} in "
                           f"{cert_path}, not the first: the server's own certificate must "
                           "come first, then the intermediates")]
        return [_error("tls.key", f"{key_path} is not the key of the certificate in "
                       f"{cert_path} (their public keys differ); use the private key the "
                       "certificate was issued for (with certbot: privkey.pem from the same "
                       "live/ directory as fullchain.pem)")]
    not_after, not_before = leaf.not_valid_after_utc, leaf.not_valid_before_utc
    if not_after <= now:
        days = (now - not_after).days
        # A warning, not an error: refusing to start turns "clients that verify
        # refuse the certificate" into "no client can send at all", and a restart
        # after a missed renewal should not take the service down.
        ago = f"{count(days, 'day')} ago" if days else "less than a day ago"
        out.append(_warning("tls.cert", f"the certificate expired on {_day(not_after)} "
                            f"({ago}): clients that verify certificates refuse "
                            "it; renew it, then reload smtpgate"))
    elif not_after - now < dt.timedelta(days=EXPIRY_WARNING_DAYS):
        days = (not_after - now).days
        within = f"in {count(days, 'day')}" if days else "in less than a day"
        out.append(_warning("tls.cert", f"the certificate expires on {_day(not_after)} "
                            f"({within}); renew it (certbot renews 30 days ahead: is its "
                            "timer running?)"))
    if not_before > now:
        out.append(_error("tls.cert", f"the certificate is not valid before "
                          f"{_day(not_before)}; check this machine's clock"))
    names = _names(leaf)
    if not names:
        # Clients that follow RFC 6125 §6.4.4 (Chrome, Go) read the names only here:
        # a certificate naming the host in its subject CN alone verifies for none.
        subject = leaf.subject.rfc4514_string() or "empty"
        out.append(_warning("tls.cert", f"the certificate names no host in a "
                            f"subjectAltName (its subject is {subject}); clients that "
                            "read names only there (Chrome, Go) will not verify it; have it "
                            f"issued with a subjectAltName for {cfg.hostname!r}"))
    elif not _names_host(names, cfg.hostname):
        out.append(_warning("tls.cert", f"the certificate does not name hostname "
                            f"{cfg.hostname!r} (it names {', '.join(names)}); clients that "
                            "connect by that name will not verify it"))
    if len(chain) == 1 and leaf.issuer != leaf.subject and not _issued_by_a_root(leaf):
        # certbot's cert.pem in place of fullchain.pem: the server sends no
        # intermediate, and clients that verify cannot build a path to their roots.
        issuer = leaf.issuer.rfc4514_string() or "an empty name"
        out.append(_warning("tls.cert", f"{cert_path} holds only the server's certificate, "
                            f"issued by {issuer}, which is not a root certificate this "
                            "machine trusts: clients that verify certificates will fail "
                            "unless the file also holds the intermediate certificates, "
                            "after it (with certbot: fullchain.pem, not cert.pem); if "
                            "that issuer is a private CA your clients trust, ignore this"))
    if not errors(out):
        out += _openssl_loads(cfg, cert_path, key_path)
    return out + secret_readable_by_all("tls.key", key_path)


def _issued_by_a_root(leaf: x509.Certificate) -> bool:
    """Whether ``leaf``'s issuer is one of the roots in this machine's default CA
    file (OpenSSL's, as Python finds it; ``SSL_CERT_FILE`` moves it)."""
    paths = ssl.get_default_verify_paths()
    for name in dict.fromkeys(p for p in (paths.cafile, paths.openssl_cafile) if p):
        try:
            with warnings.catch_warnings():  # a bundle's old roots (negative serials)
                warnings.simplefilter("ignore")
                roots = x509.load_pem_x509_certificates(Path(name).read_bytes())
        except (OSError, ValueError):
            continue
        if any(root.subject == leaf.issuer for root in roots):
            return True
    return False


def _openssl_loads(cfg: Config, cert: Path, key: Path) -> list[Problem]:
    """What ``serve`` does with the files; anything the checks above missed."""
    from smtpgate.tls.session import TlsError, make_server_context

    try:
        make_server_context(cert, key, cfg.tls.min_version)
    except TlsError as e:
        return [_error("tls.cert", f"OpenSSL refuses the certificate or key: {e}")]
    return []


# --- listeners ------------------------------------------------------------------------------


def check_listeners(cfg: Config) -> list[Problem]:
    """Each address is an IP address or a host name, and no two listeners would
    fight over one port (see `_overlap`)."""
    out: list[Problem] = []
    bound: list[tuple[int, IpAddress | None, str]] = []
    for i, lst in enumerate(cfg.listeners):
        key = f"listeners.{i}.address"
        host, port = lst.host_port
        ip: IpAddress | None = None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if hostname_problem(host) is not None:
                out.append(_error(key, f"{host!r} in {lst.address!r} is neither an IP address "
                                  "nor a host name; use e.g. 127.0.0.1:587 or [::1]:587"))
                continue
        if port == 0:
            out.append(_warning(key, f"port 0 in {lst.address!r}: the kernel picks a free port "
                                "at each start, so clients cannot know it"))
        for other_port, other_ip, other_name in bound:
            if other_port != port or port == 0:
                continue
            if ip is not None and ip == other_ip:  # '127.0.0.1:587' and '127.0.0.1:0587'
                out.append(_error(key, f"listener {lst.name!r} and listener {other_name!r} "
                                  f"both use {ip} port {port}: give each listener a port "
                                  "of its own"))
            elif _overlap(ip, other_ip):
                out.append(_error(key, f"listener {lst.name!r} and listener {other_name!r} "
                                  f"both use port {port}, and one of them listens on every "
                                  "address: the second cannot bind"))
        bound.append((port, ip, lst.name))
        out += _cram_md5_beside_passwords(cfg, i, lst)
        out += _proxies_unused(f"listeners.{i}", lst.proxy_protocol, lst.trusted_proxies)
        out += _no_way_to_log_in(cfg, i, lst)
        out += _scram_withheld(cfg, i, lst)
    # The web admin and the metrics endpoint bind plainly in the same server: on an
    # SMTP listener's address (or overlapping it), one of the two cannot bind.
    named = [(f"listener {name!r}", p, ip) for p, ip, name in bound]
    for key, label, endpoint in (("admin.listen", "the web admin", cfg.admin.endpoint),
                                 ("metrics.listen", "the metrics endpoint",
                                  cfg.metrics.endpoint)):
        if endpoint is None:
            continue
        host, port = endpoint
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        for other, other_port, other_ip in named:
            if other_port == port and port != 0 and (
                _overlap(ip, other_ip) or (ip is not None and ip == other_ip)
            ):
                out.append(_error(key, f"{label} and {other} both use port {port} on "
                                  "overlapping addresses: the second cannot bind; give "
                                  f"{key} another port"))
        named.append((label, port, ip))
    return out


#: What clients that prefer CRAM-MD5 could have used instead on the same listener.
_PASSWORD_MECHANISMS = frozenset({"PLAIN", "LOGIN", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS",
                                  "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"})


def _cram_md5_beside_passwords(cfg: Config, i: int, lst: ListenerConfig) -> list[Problem]:
    """CRAM-MD5 works only for accounts that opted in, but clients that prefer it
    cannot know that: PHPMailer and curl pick it whenever it is offered and never
    fall back, Python's smtplib and swaks try it first and fall back after a
    failure the guard counts. On a listener that also offers the other password
    mechanisms, every other account of theirs fails (docs/mechanisms.md, CRAM-MD5)."""
    offered = {m.upper() for m in (lst.mechanisms or cfg.auth.mechanisms)}
    if "CRAM-MD5" not in offered or not offered & _PASSWORD_MECHANISMS:
        return []
    return [_warning(f"listeners.{i}.mechanisms", f"listener {lst.name!r} offers CRAM-MD5 "
                     "beside PLAIN, LOGIN or SCRAM: PHPMailer (by default) and curl then pick "
                     "CRAM-MD5 and Python's smtplib and swaks try it first, so for each "
                     "account not opted in with `smtpgate user cram-md5` PHPMailer and curl "
                     "fail and smtplib and swaks leave a failed login, counted by the guard, "
                     "at every login; offer CRAM-MD5 on a listener of its own "
                     "(docs/mechanisms.md)")]


def _no_way_to_log_in(cfg: Config, i: int, lst: ListenerConfig) -> list[Problem]:
    """``mechanisms = []`` (here or in [auth]) leaves a listener where nobody can
    authenticate, so nobody can send, unless a proxy logs clients in with XCLIENT or
    client certificates bring EXTERNAL."""
    named = lst.mechanisms if lst.mechanisms is not None else cfg.auth.mechanisms
    offered = {m.upper() for m in named} - cfg.accounts.withheld_mechanisms
    if offered or lst.xclient_trusted or lst.client_certificates is not None:
        return []
    key = f"listeners.{i}.mechanisms" if lst.mechanisms is not None else "auth.mechanisms"
    return [_warning(key, f"listener {lst.name!r} offers no SASL mechanism: no client can "
                     "log in there, so none can send; name the mechanisms to offer, or leave "
                     "the key out for the default")]


def _scram_withheld(cfg: Config, i: int, lst: ListenerConfig) -> list[Problem]:
    """A listener whose own ``mechanisms`` names SCRAM while the directory's users
    have no SCRAM keys (``accounts.ldap.scram`` false): the name is dropped from
    EHLO, which the administrator who wrote it should hear about."""
    named = {m.upper() for m in (lst.mechanisms or [])} & cfg.accounts.withheld_mechanisms
    if not named:
        return []
    listed = ", ".join(mechanism_facts.in_strength_order(named))
    return [_warning(f"listeners.{i}.mechanisms", f"listener {lst.name!r} names {listed}, "
                     "which is not offered: the LDAP directory checks passwords by a bind "
                     "and its users have no SCRAM keys; set accounts.ldap.scram = true to "
                     "offer SCRAM to users who have logged in once with PLAIN or LOGIN "
                     "(docs/directories.md)")]


def check_front_doors(cfg: Config) -> list[Problem]:
    """Each unix socket of ``[[auth_listeners]]`` can be made where ``serve`` binds it:
    its directory exists and can be written in, its ``user`` and ``group`` exist; a
    directory others may write in is a warning (another user could put a socket of
    their own there first). A ``mode`` every user may connect with is a leniency
    (`leniencies`): a password oracle for every local account, but a choice."""
    import grp
    import pwd

    out: list[Problem] = []
    for i, door in enumerate(cfg.auth_listeners):
        path = door.unix_path
        if path is None:
            continue
        key = f"auth_listeners.{i}"
        # A mode every user may connect with is among the leniencies (`leniencies`).
        if not path.parent.is_dir():
            out.append(_error(f"{key}.address", f"{path.parent} is not a directory, so the "
                              f"socket {path} cannot be made there; create it first"))
        elif not os.access(path.parent, os.W_OK | os.X_OK):
            out.append(_error(f"{key}.address", f"cannot make the socket {path}: "
                              + _denied(path.parent, "write in")))
        elif path.parent.stat().st_mode & stat.S_IWOTH:
            # Sticky or not: another user can make the path first, while smtpgate is
            # down, and the MTA would then take that socket's OK for any password.
            out.append(_warning(f"{key}.address", f"others may write in {path.parent}: a "
                                f"local user could put a socket of their own at {path} while "
                                "smtpgate is stopped, and the MTA would believe its answers; "
                                "use a directory of its own (docs/integration.md)"))
        for field, name, lookup in (("user", door.user, pwd.getpwnam),
                                    ("group", door.group, grp.getgrnam)):
            if name:
                try:
                    lookup(name)
                except KeyError:
                    out.append(_error(f"{key}.{field}", f"no such {field}: {name!r}"))
        out += _socket_owner_refused(key, door.user, door.group)
    for i, door in enumerate(cfg.auth_listeners):
        out += _proxies_unused(f"auth_listeners.{i}", door.proxy_protocol, door.trusted_proxies)
        if door.upstream is not None:
            out += _upstream_refuses_nginx(cfg, f"auth_listeners.{i}.upstream", door.upstream)
    return out


def _socket_owner_refused(key: str, user: str | None, group: str | None) -> list[Problem]:
    """The socket's ``user`` and ``group`` this process may not give it: only root
    gives a file to another user, and another user only to a group it is a member
    of. ``serve`` stopped at the bind then (naming ``user`` even for the group)
    while ``config check``, run as that user, said OK. As root (``serve`` started
    as root binds as root) anything goes."""
    import grp
    import pwd

    if os.geteuid() == 0:
        return []
    out: list[Problem] = []
    try:
        if user and pwd.getpwnam(user).pw_uid != os.geteuid():
            out.append(_error(f"{key}.user", f"user {_user()} cannot give the socket to "
                              f"user {user!r} (only root can); leave user unset, or start "
                              "serve as root with [server] user"))
        gid = grp.getgrnam(group).gr_gid if group else None
    except KeyError:
        return out  # named above
    if gid is not None and gid != os.getegid() and gid not in os.getgroups():
        out.append(_error(f"{key}.group", f"user {_user()} is not a member of group "
                          f"{group!r}, so it cannot give the socket to it; make it one "
                          "(systemd: SupplementaryGroups=), or leave group unset and let a "
                          "set-group-ID directory give the socket its group "
                          "(docs/integration.md)"))
    return out


def _proxies_unused(key: str, proxy_protocol: bool, trusted_proxies: list[str]) -> list[Problem]:
    """``trusted_proxies`` without ``proxy_protocol = true`` does nothing, and reads
    like an allowlist: it names who may send a PROXY header, not who may connect, so
    a listener or front door meant for the balancer (or the MTA) alone took
    connections from anyone without a word."""
    if proxy_protocol or not trusted_proxies:
        return []
    return [_warning(f"{key}.trusted_proxies", "is ignored without proxy_protocol = true: it "
                     "names who may send a PROXY header, it does not limit who may connect; "
                     f"set {key}.proxy_protocol = true behind HAProxy's send-proxy, or remove "
                     "trusted_proxies and limit who connects with the address or a firewall")]


def _upstream_refuses_nginx(cfg: Config, key: str, upstream: str) -> list[Problem]:
    """An auth_http ``upstream`` that is one of this server's own listeners, where
    nginx's session cannot start: nginx speaks plain SMTP there and sends ``XCLIENT``
    before anything else, so a listener with implicit TLS never greets it, and one
    whose ``xclient_trusted`` does not hold nginx's address (for a loopback upstream,
    that address itself) refuses the ``XCLIENT``. Each login is then accepted by the
    door (a success in the auth log) and its client gets no session (nginx's ``451
    4.3.2 Internal server error``), for ever, while config check said OK. An upstream
    on another host is not checked."""
    host, port = _split_upstream(upstream)
    try:
        target = ipaddress.ip_address(host)
    except ValueError:
        return []  # the schema refuses it already
    for j, lst in enumerate(cfg.listeners):
        lhost, lport = lst.host_port
        try:
            bound = ipaddress.ip_address(lhost)
        except ValueError:
            continue  # a host name: resolved at bind time
        if lport != port or not (bound == target or (_overlap(bound, target)
                                                     and target.is_loopback)):
            continue
        name = f"listeners.{j} ({lst.name!r})"
        if lst.tls == "implicit":
            return [_warning(key, f"{upstream} is {name}, which has tls = 'implicit': "
                             "nginx's mail proxy talks plain SMTP to its upstream and waits "
                             "for a greeting that never comes, so no login nginx accepts gets "
                             "a session; use a STARTTLS listener of its own "
                             "(docs/integration.md, \"nginx mail proxy\")")]
        trusted = parse_networks(lst.xclient_trusted)
        if not trusted:
            why = "whose xclient_trusted is empty"
        elif target.is_loopback and not in_networks(target, trusted):
            why = f"whose xclient_trusted does not hold {target}, where nginx connects from"
        else:
            return []
        return [_warning(key, f"{upstream} is {name}, {why}: nginx's XCLIENT is refused "
                         "there with 550 5.7.0, so every login nginx accepts ends in its "
                         "'Internal server error' (451); use a listener of its own whose "
                         "xclient_trusted names nginx's address (docs/integration.md, "
                         "\"nginx mail proxy\")")]
    return []


def _split_upstream(upstream: str) -> tuple[str, int]:
    host, _, port = upstream.rpartition(":")
    return host.strip("[]"), int(port)


def check_client_cas(cfg: Config, now: dt.datetime) -> list[Problem]:
    """Each listener's ``client_ca`` (SASL EXTERNAL) is readable and holds PEM CA
    certificates, none of them expired (its client certificates would not verify)."""
    out: list[Problem] = []
    for i, lst in enumerate(cfg.listeners):
        if lst.client_ca is None:
            continue
        # By index, as every listener key (and the schema's errors) is named.
        key, path = f"listeners.{i}.client_ca", cfg.path(lst.client_ca)
        data = read_file(key, path)
        if not isinstance(data, bytes):
            out.append(data)
            continue
        try:
            cas = x509.load_pem_x509_certificates(data)
        except ValueError:
            out.append(_error(key, f"{path} holds no PEM certificate (the CAs that issue "
                               "client certificates)"))
            continue
        for ca in cas:
            if ca.not_valid_after_utc <= now:
                out.append(_warning(key, f"CA {ca.subject.rfc4514_string()!r} in {path} "
                                    f"expired on {_day(ca.not_valid_after_utc)}: no client "
                                    "certificate it issued verifies"))
    return out


def _overlap(a: IpAddress | None, b: IpAddress | None) -> bool:
    """Would binding both addresses (on one port) fail? A wildcard covers its family,
    and ``::`` covers IPv4 too (Linux binds it dual-stack)."""
    if a is None or b is None:
        return False  # a host name: resolved at bind time
    if any(x.version == 6 and x.is_unspecified for x in (a, b)):
        return True
    return a.version == b.version and (a.is_unspecified or b.is_unspecified)


# --- databases ------------------------------------------------------------------------------


def _open_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)


def _database_file(key: str, path: Path, what: str) -> tuple[list[Problem], bool]:
    """Access checks; the bool says whether the file exists and may be opened."""
    if not path.exists():
        if not path.parent.exists():
            # SQLite makes the file, never its directory: `serve` stopped with a bare
            # "[Errno 2] No such file or directory" where this check said OK.
            return [_error(key, f"{path} cannot be created: its directory {path.parent} "
                           "does not exist (smtpgate makes the file, not the directory); "
                           f"create it, owned by the user smtpgate runs as, or correct "
                           f"{key or 'the path'}")], False
        return _writable_dir(key, path.parent, f"directory of the {what}"), False
    if path.is_dir():
        return [_error(key, f"{path} is a directory, not a database file")], False
    # `_not_writable`: on a read-only file system (a disk remounted read-only after
    # errors, a unit's ProtectSystem=strict) access(2) fails for root too, and
    # until 2026-12 this said "permission denied: user root ... (chown or chmod)".
    if not os.access(path, os.R_OK | os.W_OK):
        return [_error(key, _not_writable(path, f"read and write the {what}"))], False
    for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        # Left by whoever opened it last (`init` run as root, say): SQLite must
        # write them too.
        if side.exists() and not os.access(side, os.R_OK | os.W_OK):
            return [_error(key, _not_writable(side, f"read and write the {what}'s log"))
                    ], False
    if not os.access(path.parent, os.W_OK | os.X_OK):
        # SQLite's write-ahead log lives in NAME-wal and NAME-shm beside the file.
        return [_error(key, _not_writable(path.parent, "create files (the SQLite "
                                          f"write-ahead log of the {what}) in"))], False
    return [], True


def database_access_problem(path: Path, what: str) -> str | None:
    """Why this user cannot use the SQLite file ``path`` (it, its ``-wal``/``-shm``
    files or its directory not readable and writable), in `_database_file`'s words;
    None when nothing is wrong with the permissions. For the CLI's hints: SQLite says
    only "attempt to write a readonly database" or "unable to open database file"."""
    problems, _ = _database_file("", path, what)
    return next((p.message for p in problems if p.severity == "error"), None)


def check_account_database(cfg: Config) -> list[Problem]:
    """Opens (read-only) and has a schema this version of smtpgate knows."""
    from smtpgate.auth.store import SCHEMA_VERSION

    if cfg.accounts.backend not in ("sqlite", "ldap"):  # ldap: its local overlay file
        return []  # a server, not a file: serve checks it when it opens it
    key, path = "accounts.database", cfg.path(cfg.accounts.database)
    out, exists = _database_file(key, path, "account database")
    if not exists:
        if not out:
            out.append(_warning(key, f"{path} does not exist yet, so no account can log in; "
                                "`smtpgate user add` creates it"))
        return out
    schema = _schema(key, path, SCHEMA_VERSION)
    if any(p.severity == "error" for p in schema):
        return out + schema
    return out + schema + _names_not_mailboxes(key, path)


def check_scram_iterations(cfg: Config) -> list[Problem]:
    """A count above what smtpgate's own SCRAM client takes from a server: the config
    passed, and `smtpgate test`, `smtpgate audit` and a relay to another smtpgate then
    refused this server's SCRAM ('iteration count N out of range'). A warning, not an
    error: other clients may take it, and the keys stored with it stay valid."""
    from smtpgate.sasl.scram import DEFAULT_MAX_CLIENT_ITERATIONS as most

    n = cfg.accounts.scram_iterations
    if n <= most:
        return []
    return [_warning("accounts.scram_iterations", (
        f"{n:,} is above {most:,}, the most smtpgate's own SCRAM client accepts from a "
        "server (smtpgate test, smtpgate audit and a relay to another smtpgate refuse "
        f"SCRAM here: 'iteration count {n} out of range'), and every SCRAM login costs "
        "the client that much PBKDF2; other clients may cap it too. Keys derived with it "
        "keep that count, the key lowered or not, until the account's password is set "
        "again (docs/mechanisms.md)"))]


def _names_not_mailboxes(key: str, path: Path) -> list[Problem]:
    """One warning naming the accounts (up to three, and a count) whose name is no
    RFC 5321 mailbox: made before ``user add`` refused them, they log in but can
    send only from their aliases. A warning, not an error: they work as before."""
    try:
        conn = _open_read_only(path)
        try:
            names = [r[0] for r in conn.execute("SELECT name FROM accounts")]
        finally:
            conn.close()
    except sqlite3.Error:
        return []  # no accounts table yet (an empty file), or _schema said why
    kept = [n for n in names if isinstance(n, str)]
    return _mailbox_warning(key, kept) + _look_alike_warning(key, kept)


def _mailbox_warning(key: str, names: list[str]) -> list[Problem]:
    from smtpgate.auth.names import mailbox_problem

    bad = [n for n in names if mailbox_problem(n)]
    if not bad:
        return []
    shown = ", ".join(repr(n) for n in bad[:3]) + (f" and {len(bad) - 3} more"
                                                   if len(bad) > 3 else "")
    return [_warning(key, f"{count(len(bad), 'account')} whose name is not a mailbox "
                     f"(RFC 5321 §4.1.2: specials outside quotes): {shown}; each logs in "
                     "but can send only from its aliases, never as itself; add the user "
                     "again under a name of letters, digits, dots and "
                     "!#$%&'*+-/=?^_`{|}~, and remove the old account")]


def _look_alike_warning(key: str, names: list[str]) -> list[Problem]:
    """One warning naming the pairs of accounts (up to three, and a count) whose
    names read the same (``names.look_alike``: ``alice@example.org`` and
    ``аlice@example.org`` with the Cyrillic a), made before ``user add`` refused
    the second: either can send mail that reads as the other's. A warning, not an
    error: both work as before, and which one goes is the administrator's call."""
    from smtpgate.auth.names import look_alike, look_alike_key, look_alike_letters

    by_key: dict[str, list[str]] = {}
    for n in names:
        by_key.setdefault(look_alike_key(n), []).append(n)
    pairs = [(a, b) for group in by_key.values() if len(group) > 1
             for i, a in enumerate(group) for b in group[i + 1:] if look_alike(a, b)]
    if not pairs:
        return []
    shown = "; ".join(f"{a!r} and {b!r} ({look_alike_letters(a, b)})" for a, b in pairs[:3])
    more = f"; and {len(pairs) - 3} more" if len(pairs) > 3 else ""
    return [_warning(key, f"{count(len(pairs), 'pair')} of accounts whose names read the "
                     f"same: {shown}{more}; either could send mail that reads as the "
                     "other's: remove the one that should not exist (smtpgate user "
                     "remove; docs/accounts.md)")]


def check_ldap(cfg: Config) -> list[Problem]:
    """The LDAP backend's files, and one connection as the service account: wrong
    credentials are an error naming the key; a directory that does not answer is a
    warning (serve starts, and logins get 454 until it answers)."""
    if cfg.accounts.backend != "ldap":
        return []
    from smtpgate.auth.directory import StoreUnavailable
    from smtpgate.auth.ldap_directory import (
        BIND_PASSWORD_KEY,
        DirectoryMisconfigured,
        LdapDirectory,
    )

    lc = cfg.accounts.ldap
    password = b""
    out: list[Problem] = []
    if lc.bind_password_file is not None:
        got = read_file(BIND_PASSWORD_KEY, cfg.path(lc.bind_password_file))
        if isinstance(got, Problem):
            out.append(got)
        else:
            password = got
    ca = None if lc.ca_file is None else cfg.path(lc.ca_file)
    if ca is not None and isinstance(got_ca := read_file("accounts.ldap.ca_file", ca), Problem):
        out.append(got_ca)
    if out:
        return out
    lines = password.decode("utf-8", "replace").splitlines()
    directory = LdapDirectory(
        lc, bind_password=lines[0] if lines else "", ca_file=ca,
        bind_password_file=None if lc.bind_password_file is None
        else cfg.path(lc.bind_password_file),
        outage_log=False)  # the problem below says it, once
    try:
        directory.check_service_account()
    except DirectoryMisconfigured as e:
        out.append(_error(e.key, str(e)))
    except StoreUnavailable as e:
        out.append(Problem("warning", "accounts.ldap.url", f"{e}; serve starts, and logins "
                           "get a temporary failure until the directory answers",
                           outage=True))
    finally:
        directory.close()
    return out


def check_postgres(cfg: Config) -> list[Problem]:
    """The PostgreSQL backend opened once, as ``serve`` opens it: the password file,
    the server's answer and the schema version. A refused login, no such
    database and a schema to migrate (or newer than this version) stop ``serve``,
    so each is an error here too; a server that does not answer (refused, timed
    out, no such host, starting up) is a warning: ``serve`` starts, and answers
    logins 454 4.7.0 until it does (docs/directories.md). Account names that are
    no mailbox are a warning, as with SQLite."""
    if cfg.accounts.backend != "postgresql":
        return []
    from smtpgate.auth.accounts import accounts_key, open_account_store
    from smtpgate.auth.directory import StoreError
    from smtpgate.auth.postgres_schema import PostgresUnreachable

    try:
        store = open_account_store(cfg)
        try:
            names = [a.name for a in store.list_accounts()]
        except StoreError:
            names = []  # gone since it opened: the next check says so
        finally:
            store.close()
    except PostgresUnreachable as e:
        reason = " ".join(str(e).split())  # libpq's reason spans lines: one line here
        return [Problem("warning", accounts_key(cfg), f"{reason}; serve starts anyway, and "
                        "answers logins 454 4.7.0 (temporary failure) until the database "
                        "answers", outage=True)]
    except StoreError as e:
        return [_error(getattr(e, "key", None) or accounts_key(cfg), str(e))]
    return _mailbox_warning(accounts_key(cfg), names) + _look_alike_warning(
        accounts_key(cfg), names)


def check_guard_database(cfg: Config) -> list[Problem]:
    """As the account database; a missing file is simply created at start. With
    the state in Redis no process opens the file: nothing to check."""
    from smtpgate.auth.guard_store import MIGRATIONS

    if cfg.state.backend == "redis":
        return []

    key, path = "guard.database", cfg.path(cfg.guard.database)
    out, exists = _database_file(key, path, "guard database")
    if not exists:
        return out
    return out + _schema(key, path, len(MIGRATIONS))


def check_state(cfg: Config) -> list[Problem]:
    """With ``[state] backend = "redis"``: its files read, and Redis answers a PING
    as configured. A refusal (password, certificate) is an error, as a refused
    PostgreSQL login is; a Redis that does not answer is an outage, a warning:
    ``serve`` starts and logins follow ``state.on_unavailable`` until it answers
    (auth/redis_check.py says why)."""
    st = cfg.state
    if st.backend != "redis":
        return []
    out: list[Problem] = []
    for key, path in (("state.password_file", st.password_file), ("state.ca_file", st.ca_file),
                      ("state.cert_file", st.cert_file), ("state.key_file", st.key_file)):
        if path is None:
            continue
        got = read_file(key, cfg.path(path))
        if isinstance(got, Problem):
            out.append(got)
        elif key in ("state.password_file", "state.key_file"):
            out += secret_readable_by_all(key, cfg.path(path))
    if errors(out):
        return out
    from smtpgate.auth.redis_check import ping

    found = ping(cfg)
    if found is None:
        return out
    if found.refused:
        return out + [_error(found.key, found.message)]
    if not found.outage:
        return out + [Problem("warning", found.key, found.message)]
    return out + [Problem("warning", found.key, f"{found.message}; serve starts anyway, and "
                          f"logins follow state.on_unavailable ({st.on_unavailable!r}) until "
                          "it answers", outage=True)]


def check_decoy_secret(cfg: Config) -> list[Problem]:
    """The decoy secret reads and is long enough; a missing one can be created (serve
    creates it at start-up: auth/decoy.py)."""
    from smtpgate.auth.decoy import KEY, SECRET_BYTES, decoy_secret_path, decoy_secret_problem

    path = decoy_secret_path(cfg)
    if not path.exists():
        return [
            _error(KEY, f"{path} does not exist, and serve could not create it "
                   f"({p.message}); create it: head -c {SECRET_BYTES} /dev/urandom > {path}, "
                   "readable by the user smtpgate runs as")
            for p in _writable_dir(KEY, path.parent, "decoy secret's")
        ]
    data = read_file(KEY, path)
    if isinstance(data, Problem):
        return [data]
    problem = decoy_secret_problem(data, path)
    if problem:
        return [_error(KEY, problem + "; remove it and serve makes a new one")]
    return secret_readable_by_all(KEY, path)


def _schema(key: str, path: Path, latest: int) -> list[Problem]:
    """The file is an SQLite database whose ``schema_version`` (the stores' migration
    record) is not newer than ``latest``; an older one is upgraded at the next open."""
    try:
        conn = _open_read_only(path)
        try:
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )}
            version = 0
            if "schema_version" in tables:
                version = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_version"
                ).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as e:
        return [_error(key, f"{path} cannot be read as an SQLite database ({e})")]
    if version > latest:
        return [_error(key, f"{path} was written by a newer smtpgate (schema version "
                       f"{version}; this one knows up to {latest}): upgrade smtpgate, "
                       "or restore the backup made before the upgrade")]
    if tables and version < latest:
        return [_warning(key, f"{path} has schema version {version}; the next smtpgate "
                         f"command or start upgrades it to {latest}, keeping a copy of the "
                         f"old file beside it ({path.name}.bak-v{version}-TIMESTAMP)")]
    return []


# --- directories and delivery -----------------------------------------------------------------


def check_directories(cfg: Config) -> list[Problem]:
    """The spool, the Maildir and the auth log can be written."""
    out = _writable_dir("queue.spool", cfg.path(cfg.queue.spool), "spool")
    if cfg.delivery.mode == "maildir":
        maildir = cfg.path(cfg.delivery.maildir)
        found = _writable_dir("delivery.maildir", maildir, "Maildir")
        out += found
        if maildir.is_dir() and not found:  # else the same cause, four times
            for sub in ("tmp", "new", "cur"):
                if (maildir / sub).exists():
                    out += _writable_dir("delivery.maildir", maildir / sub, "Maildir")
    if cfg.auth.log_file is not None:
        out += _writable_file("auth.log_file", cfg.path(cfg.auth.log_file), "auth log")
    return out


def check_spool_space(cfg: Config) -> list[Problem]:
    """The spool's file system has the free space MAIL asks for (queue/space.py);
    a warning, not an error: the server starts and answers 452 4.3.1 until it has."""
    reserve = cfg.queue.free_space_reserve(cfg.limits.max_message_size)
    where = cfg.path(cfg.queue.spool)
    while not where.exists() and where != where.parent:
        where = where.parent  # not made yet (init makes it): its file system
    if reserve <= 0:
        return []
    full = R.INSUFFICIENT_STORAGE
    out: list[Problem] = []
    inodes = free_inodes(where)
    if inodes is not None and inodes < MIN_FREE_INODES:
        out.append(_warning("queue.spool",
                            f"the spool's file system ({where}) has {inodes} free inodes, under "
                            f"the {MIN_FREE_INODES} kept free: MAIL will be answered {full.code} "
                            f"{full.enhanced} until files are removed (docs/operations.md, "
                            f"\"Disk space\")"))
    free = free_bytes(where)
    if free >= reserve:
        return out
    return [*out, _warning("queue.min_free_space",
                     f"the spool's file system ({where}) has {free // 1_000_000} MB free, under "
                     f"the {reserve // 1_000_000} MB kept in reserve: MAIL will be answered "
                     f"{full.code} {full.enhanced} until there is room (docs/operations.md, "
                     f"\"Disk space\")")]


def check_delivery(cfg: Config) -> list[Problem]:
    """Relay mode: the password and CA files read, and the deliverer builds (without
    connecting)."""
    d = cfg.delivery
    if d.mode != "relay":
        return []
    out: list[Problem] = []
    for key, path in (
        ("delivery.relay_password_file", d.relay_password_file),
        ("delivery.relay_ca_file", d.relay_ca_file),
    ):
        if path is not None:
            data = read_file(key, cfg.path(path))
            if isinstance(data, Problem):
                out.append(data)
    if out:
        return out
    if d.relay_password_file is not None:
        out += secret_readable_by_all("delivery.relay_password_file",
                                      cfg.path(d.relay_password_file))
    if d.relay_tls == "opportunistic" and d.relay_verify_cert:
        # Asked for: "encrypt when offered" then holds mail for a relay whose
        # certificate does not verify, while one without STARTTLS gets it in clear.
        out.append(_warning("delivery.relay_verify_cert", "true with relay_tls = "
                            "'opportunistic': a relay whose certificate does not verify "
                            "(self-signed, a private CA not in relay_ca_file) gets no mail, "
                            "each message deferred until queue.max_age and bounced, though "
                            "one without STARTTLS gets it in clear; leave relay_verify_cert "
                            "out (encrypted, not verified, as Postfix's 'may'), pin the relay "
                            "(relay_tls_pins), or set relay_tls = 'require'"))
    from smtpgate.queue.factory import DeliverySetupError, make_deliverer

    try:
        make_deliverer(cfg)
    except DeliverySetupError as e:
        return [_error(e.key, f"{e.message}; {e.hint}" if e.hint else e.message)]
    except (ValueError, OSError) as e:
        return [_error("delivery", f"the relay delivery cannot be set up: {e}")]
    return out


def check_oauth(cfg: Config) -> list[Problem]:
    """Key-set files parse as JSON Web Key Sets; secret files read; the issuers fit
    together."""
    from smtpgate.auth.oauth import TokenVerifier

    out: list[Problem] = []
    for i, iss in enumerate(cfg.auth.oauth_issuers):
        prefix = f"auth.oauth_issuers.{i}"
        if iss.jwks_file is not None:
            out += _key_set(f"{prefix}.jwks_file", cfg.path(iss.jwks_file))
        if iss.ca_file is not None:
            out += _issuer_ca(f"{prefix}.ca_file", cfg.path(iss.ca_file))
        if iss.jwks_url is not None and iss.jwks_min_refresh_seconds == 0:
            # A made-up kid or a forged signature refetches the key set: at 0 each such
            # token (a flood costs the attacker nothing) is one request to the issuer.
            out.append(_warning(f"{prefix}.jwks_min_refresh_seconds", "0 turns off the "
                                "limit on key-set refreshes: every token with an unknown "
                                "kid or a signature no cached key verifies fetches "
                                f"{iss.jwks_url} again; set it to 60 (the default) or more"))
        if iss.introspection_client_secret_file is not None:
            key = f"{prefix}.introspection_client_secret_file"
            secret_path = cfg.path(iss.introspection_client_secret_file)
            data = read_file(key, secret_path)
            if isinstance(data, Problem):
                out.append(data)
            elif not data.strip():
                out.append(_error(key, f"{secret_path} is empty"))
    try:
        TokenVerifier(list(cfg.auth.oauth_issuers))
    except ValueError as e:
        out.append(_error("auth.oauth_issuers", str(e)))
    return out


def _issuer_ca(key: str, path: Path) -> list[Problem]:
    """An issuer's ca_file holds certificates OpenSSL loads: else every fetch of its
    key set would fail, and its logins get 454 until the file is fixed."""
    from smtpgate.auth.oauth_http import tls_context

    try:
        tls_context(path)
    except (OSError, ssl.SSLError) as e:
        return [_error(key, f"{path}: no CA certificate loads from it ({e})")]
    return []


def _key_set(key: str, path: Path) -> list[Problem]:
    import jwt as pyjwt

    data = read_file(key, path)
    if isinstance(data, Problem):
        return [data]
    try:
        doc = json.loads(data)
    except ValueError:
        return [_error(key, f"{path} is not JSON (expected a JSON Web Key Set)")]
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        return [_error(key, f"{path} has no \"keys\" list (expected a JSON Web Key Set, "
                       "RFC 7517 §5)")]
    out: list[Problem] = []
    for n, jwk in enumerate(keys, 1):
        try:
            pyjwt.PyJWK(jwk)
        except (pyjwt.PyJWTError, TypeError, ValueError) as e:
            out.append(_error(key, f"key #{n} in {path} is unusable: {e}"))
    return out


# --- loosenings --------------------------------------------------------------------------------


def _plaintext_equivalent(names: list[str]) -> list[str]:
    return [m for m in mechanism_facts.in_strength_order(names)
            if m in mechanism_facts.PLAINTEXT_EQUIVALENT]


def _what_a_door_exposes(protocol: str) -> str:
    """What whoever may connect to a front door can do: a policy service checks no
    password, so "check passwords" would send its administrator looking for the
    wrong risk; what it gives away is every account's budget."""
    if protocol == "postfix_policy":
        return ("ask which addresses any account owns, and spend any account's hourly "
                "budget (an END-OF-MESSAGE request counts its recipient_count), so that "
                "the account can send no more")
    return ("check passwords in clear, for any client address it names (the guard counts "
            "per that address)")


def loosenings(cfg: Config) -> list[Problem]:
    """Every loosening of a secure default in force (principle 3), as warnings.

    This is the one list: ``serve`` logs it at start-up and ``config check`` prints it.
    """
    out: list[Problem] = []
    for i, lst in enumerate(cfg.listeners):
        if lst.auth_in_clear:
            out.append(_warning(f"listeners.{i}.auth_in_clear", f"listener {lst.name!r} offers "
                                "AUTH without TLS: passwords may cross the network in clear"))
        for m in _plaintext_equivalent(lst.mechanisms or []):
            out.append(_warning(f"listeners.{i}.mechanisms", f"listener {lst.name!r} offers "
                                f"{m}, which needs plaintext-equivalent secrets"))
    for i, door in enumerate(cfg.auth_listeners):
        exposed = _what_a_door_exposes(door.protocol)
        if door.unix_path is not None and door.file_mode & stat.S_IWOTH:
            out.append(_warning(f"auth_listeners.{i}.mode", f"{door.mode}: every local user "
                                f"may connect to the socket and {exposed}; give it to the "
                                "MTA's group only (0660)"))
        if door.unix_path is None and not _loopback(door.host_port[0]):
            out.append(_warning(f"auth_listeners.{i}.address", f"{door.address} is not on "
                                f"loopback: whoever reaches it may {exposed}"))
    for m in _plaintext_equivalent(cfg.auth.mechanisms):
        out.append(_warning("auth.mechanisms", f"{m} is enabled: it needs "
                            "plaintext-equivalent secrets in the account database"))
    if cfg.smtp.bare_line_endings == "normalize":
        out.append(_warning("smtp.bare_line_endings", "normalize: bare LF in messages becomes "
                            "CRLF instead of refusing the message"))
    if cfg.auth.log_file is None:
        out.append(_warning("auth.log_file", "empty: no auth log, so fail2ban, 'smtpgate "
                            "report' and the web admin's log page see no login attempt (the "
                            "guard still counts them)"))
    if cfg.auth.failure_floor == 0:
        out.append(_warning("auth.failure_floor", "0: failed logins are answered at once, so "
                            "timing may tell an unknown account from a wrong password"))
    if not cfg.guard.enabled:
        out.append(_warning("guard.enabled", "false: no penalties, lockouts or blocks against "
                            "password guessing"))
    if cfg.guard.allowlist:
        out.append(_warning("guard.allowlist", f"the guard ignores "
                            f"{', '.join(cfg.guard.allowlist)} (no penalty, count or block)"))
    for key, mode in (
        ("policy.sender_ownership", cfg.policy.sender_ownership),
        ("policy.from_header", cfg.policy.from_header),
    ):
        if mode != "enforce":
            out.append(_warning(key, f"{mode}: accounts may send as addresses they do not own"))
    if cfg.policy.allow_missing_from_header and cfg.policy.from_header != "off":
        out.append(_warning("policy.allow_missing_from_header", "true: messages without a "
                            "From header are accepted (their author is not checked)"))
    if cfg.limits.messages_per_hour == 0:
        out.append(_warning("limits.messages_per_hour", "0: no limit on messages per account, "
                            "so a stolen password can send without bound"))
    if cfg.limits.recipients_per_hour == 0:
        out.append(_warning("limits.recipients_per_hour", "0: no limit on recipients per "
                            "account, so a stolen password can send without bound"))
    if cfg.passwords.min_strength == 0:
        out.append(_warning("passwords.min_strength", "0: new passwords are not checked "
                            "against common and easily guessed ones"))
    if not cfg.passwords.reject_username:
        out.append(_warning("passwords.reject_username", "false: a password may contain the "
                            "account name"))
    issuers = cfg.auth.oauth_issuers
    for i, iss in enumerate(issuers if len(issuers) > 1 else []):
        if not iss.domains:
            out.append(_warning(f"auth.oauth_issuers.{i}.domains", f"not set, with "
                                f"{len(issuers)} issuers: {iss.issuer} may log in as any "
                                "account, the other issuers' users included"))
    ldap = cfg.accounts.ldap
    if cfg.accounts.backend == "ldap" and ldap.allow_cleartext and ldap.cleartext:
        out.append(_warning("accounts.ldap.allow_cleartext", f"true: {ldap.url} is used "
                            "without TLS, so passwords cross the network in clear"))
    d = cfg.delivery
    if d.mode == "relay":
        if d.relay_tls == "none":
            what = "mail and relay_user's password go" if d.relay_user else "mail goes"
            out.append(_warning("delivery.relay_tls", f"none: {what} to the relay "
                                "without TLS"))
        elif d.relay_verify_cert is False:
            out.append(_warning("delivery.relay_verify_cert", "false: the relay's certificate "
                                "is not checked, so anyone on the path can pose as the relay"))
    endpoint = cfg.metrics.endpoint
    if endpoint is not None and not _loopback(endpoint[0]):
        out.append(_warning("metrics.listen", f"{cfg.metrics.listen}: /metrics (no "
                            "authentication) is served beyond this host"))
    return out


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
