"""`smtpgate config check` and `serve` share one pre-flight: every check names the key
and says what is wrong in plain words (issue 8: `config check` passed what `serve`
then refused)."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smtpgate.cli.main import cli
from smtpgate.config import Config, load_config
from smtpgate.preflight import Problem, loosenings, run_checks
from smtpgate.tls.certs import write_self_signed
from tests.unit.as_nobody import NOBODY, run_as_nobody
from tests.unit.cli_support import write_config


@pytest.fixture
def gate() -> Iterator[Path]:
    """A directory made by `smtpgate init`, under a world-traversable temporary
    directory (so a check run as another user reaches the files)."""
    top = Path(tempfile.mkdtemp(prefix="smtpgate-preflight-"))
    top.chmod(0o755)
    r = CliRunner().invoke(cli, ["init", "--dir", str(top / "gate"), "--no-demo",
                                 "--hostname", "localhost"])
    assert r.exit_code == 0, r.output
    yield top / "gate"
    shutil.rmtree(top)


def config(gate: Path, extra: str = "", **replace: str) -> Config:
    path = gate / "smtpgate.toml"
    text = (gate / "smtpgate.toml").read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path.write_text(text + extra)
    return load_config(path)


def only(problems: list[Problem], severity: str = "error") -> dict[str, str]:
    return {p.key: p.message for p in problems if p.severity == severity}


def test_a_fresh_init_passes_without_a_finding(gate: Path) -> None:
    assert run_checks(config(gate)) == []


def test_key_of_another_certificate_is_refused(gate: Path, tmp_path: Path) -> None:
    write_self_signed(tmp_path / "other.pem", tmp_path / "other.key", "localhost")
    errors = only(run_checks(config(gate, **{'key = "tls/key.pem"': f'key = "{tmp_path}/other.key"'})))
    assert list(errors) == ["tls.key"]
    assert "is not the key of the certificate" in errors["tls.key"]


def test_swapped_certificate_and_key_are_named_once(gate: Path) -> None:
    cfg = config(gate, **{'cert = "tls/cert.pem"': 'cert = "tls/key.pem"',
                          'key = "tls/key.pem"': 'key = "tls/cert.pem"'})
    assert only(run_checks(cfg)) == {
        "tls.cert": "tls.cert and tls.key are swapped: tls.cert holds a private key and "
        "tls.key a certificate; exchange the two paths"
    }


def test_certificate_given_as_key(gate: Path) -> None:
    errors = only(run_checks(config(gate, **{'key = "tls/key.pem"': 'key = "tls/cert.pem"'})))
    assert list(errors) == ["tls.key"]
    assert "holds a certificate, not a private key" in errors["tls.key"]


def test_der_certificate_is_not_pem(gate: Path) -> None:
    cert = x509.load_pem_x509_certificate((gate / "tls/cert.pem").read_bytes())
    (gate / "tls/cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    errors = only(run_checks(config(gate, **{'cert = "tls/cert.pem"': 'cert = "tls/cert.der"'})))
    assert list(errors) == ["tls.cert"]
    assert "is a DER (binary) certificate, not PEM" in errors["tls.cert"]
    assert "openssl x509 -inform der" in errors["tls.cert"]


def test_garbage_is_not_a_pem_certificate(gate: Path) -> None:
    (gate / "tls/cert.pem").write_text("dummy")
    errors = only(run_checks(config(gate)))
    assert list(errors) == ["tls.cert"]
    assert "is not a PEM certificate" in errors["tls.cert"]


def test_passphrase_protected_key(gate: Path) -> None:
    key = serialization.load_pem_private_key((gate / "tls/key.pem").read_bytes(), None)
    (gate / "tls/key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ))
    errors = only(run_checks(config(gate)))
    assert list(errors) == ["tls.key"]
    assert "passphrase" in errors["tls.key"]


def test_leaf_certificate_must_come_first_in_the_chain(gate: Path, tmp_path: Path) -> None:
    write_self_signed(tmp_path / "other.pem", tmp_path / "other.key", "localhost")
    chain = (tmp_path / "other.pem").read_bytes() + (gate / "tls/cert.pem").read_bytes()
    (gate / "tls/cert.pem").write_bytes(chain)
    errors = only(run_checks(config(gate)))
    assert list(errors) == ["tls.cert"]
    assert "matches certificate #2" in errors["tls.cert"]


def _not_after(gate: Path) -> dt.datetime:
    cert = x509.load_pem_x509_certificate((gate / "tls/cert.pem").read_bytes())
    return cert.not_valid_after_utc


def test_expired_certificate_is_a_loud_warning(gate: Path) -> None:
    """Serving an expired certificate beats serving nothing (docs/cli.md)."""
    later = _not_after(gate) + dt.timedelta(days=3)
    problems = run_checks(config(gate), now=later)
    assert not only(problems)
    expired = [p for p in problems if p.key == "tls.cert" and p.severity == "warning"]
    assert len(expired) == 1
    assert expired[0].message.startswith("the certificate expired on ")
    assert "(3 days ago)" in expired[0].message


@pytest.mark.parametrize(
    ("shift", "said"),
    [
        (dt.timedelta(days=1, hours=2), "expired on {day} (1 day ago)"),
        (dt.timedelta(hours=5), "expired on {day} (less than a day ago)"),
        (-dt.timedelta(days=1, hours=2), "expires on {day} (in 1 day)"),
        (-dt.timedelta(hours=5), "expires on {day} (in less than a day)"),
    ],
)
def test_days_to_or_since_expiry_read_in_the_singular_and_under_a_day(
    gate: Path, shift: dt.timedelta, said: str,
) -> None:
    """'(1 days ago)' and '(0 days ago)' were what the check said a day after."""
    not_after = _not_after(gate)
    warnings = only(run_checks(config(gate), now=not_after + shift), "warning")
    assert said.format(day=f"{not_after:%Y-%m-%d %H:%M} UTC") in warnings["tls.cert"]


def test_certificate_expiring_within_30_days_is_a_warning(gate: Path) -> None:
    soon = _not_after(gate) - dt.timedelta(days=10, hours=1)
    problems = run_checks(config(gate), now=soon)
    assert only(problems) == {}
    assert "(in 10 days)" in only(problems, "warning")["tls.cert"]
    assert only(run_checks(config(gate), now=_not_after(gate) - dt.timedelta(days=31))) == {}


def test_certificate_not_naming_the_hostname_is_a_warning(gate: Path) -> None:
    cfg = config(gate, **{'hostname = "localhost"': 'hostname = "mail.example.org"'})
    warnings = only(run_checks(cfg), "warning")
    assert "does not name hostname 'mail.example.org'" in warnings["tls.cert"]


@pytest.mark.parametrize("common_name", ["localhost", "other.example"])
def test_certificate_naming_no_host_in_a_subject_alt_name_is_a_warning(
    gate: Path, common_name: str
) -> None:
    """A certificate with its name in the subject CN only (``openssl req -x509
    -subj /CN=...`` without ``-addext subjectAltName``) passed without a word, even
    for another name; clients that ignore the CN refuse it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=90)).sign(key, hashes.SHA256()))
    (gate / "tls/cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (gate / "tls/key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    problems = run_checks(config(gate))
    assert only(problems) == {}
    assert only(problems, "warning")["tls.cert"] == (
        f"the certificate names no host in a subjectAltName (its subject is "
        f"CN={common_name}); clients that read names only there (Chrome, Go) will not "
        "verify it; have it issued with a subjectAltName for 'localhost'")


def as_other_user(fn: Callable[[], list[Problem]]) -> list[dict[str, str]]:
    """Run ``fn`` as user nobody (``as_nobody``)."""
    fn()  # import everything the checks import while we still can
    out: list[dict[str, str]] = run_as_nobody(lambda: [p.to_json() for p in fn()])
    return out


def test_unreadable_key_and_relay_password_say_permission_denied(gate: Path) -> None:
    (gate / "relay.pw").write_text("secret\n")
    for name in ("tls/key.pem", "relay.pw"):
        (gate / name).chmod(0o000 if os.geteuid() != 0 else 0o600)
    cfg = config(gate, **{'mode = "maildir"': 'mode = "relay"\nrelay_host = "127.0.0.1"\n'
                          'relay_user = "u"\nrelay_password_file = "relay.pw"'})
    found = {p["key"]: p["message"] for p in as_other_user(lambda: run_checks(cfg))
             if p["severity"] == "error"}
    for key, name in (("tls.key", "tls/key.pem"), ("delivery.relay_password_file", "relay.pw")):
        assert found[key].startswith("permission denied: user nobody " if os.geteuid() == 0 else "permission denied: user ")
        assert f"cannot read {gate / name}" in found[key]
        assert "[('" not in found[key]  # no OpenSSL error tuples


def test_read_only_maildir_says_read_only_not_chown_or_chmod(
    gate: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Maildir on a file system mounted read-only (EROFS) was reported as
    "permission denied ... give that user access (chown or chmod)" for the Maildir
    and each of tmp/, new/ and cur/: advice that cannot work."""
    maildir = gate / "mail"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    cfg = config(gate)
    real_access, real_statvfs = os.access, os.statvfs

    def on_ro_mount(path: os.PathLike[str] | str) -> bool:
        return Path(path) == maildir or maildir in Path(path).parents

    def access(path: os.PathLike[str] | str, mode: int, **kw: object) -> bool:
        if on_ro_mount(path) and mode & os.W_OK:
            return False  # access(2) fails with EROFS
        return real_access(path, mode)

    class ReadOnly:
        f_flag = os.ST_RDONLY

    def statvfs(path: os.PathLike[str] | str) -> object:
        return ReadOnly() if on_ro_mount(path) else real_statvfs(path)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "statvfs", statvfs)
    monkeypatch.delenv("INVOCATION_ID", raising=False)  # not as a systemd service
    found = [p for p in run_checks(cfg) if p.key == "delivery.maildir"]
    want = (f"{maildir} is on a read-only file system (chown or chmod cannot help): "
            "remount it read-write, or point the setting at a writable directory")
    assert [p.message for p in found] == [want]


def test_database_log_file_left_by_another_user_is_named(gate: Path) -> None:
    db, shm = gate / "accounts.sqlite", gate / "accounts.sqlite-shm"
    with sqlite3.connect(db) as conn:  # WAL mode: opening leaves -shm beside the file
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        assert shm.exists()
        if os.geteuid() == 0:
            os.chown(db, NOBODY, NOBODY)  # the file is the server's, its -shm still root's
        else:
            shm.chmod(0o000)
        cfg = config(gate)
        found = {p["key"]: p["message"] for p in as_other_user(lambda: run_checks(cfg))
                 if p["severity"] == "error"}
    conn.close()
    assert f"cannot read and write the account database's log {shm}" in found["accounts.database"]


def test_missing_relay_password_file(gate: Path) -> None:
    cfg = config(gate, **{'mode = "maildir"': 'mode = "relay"\nrelay_host = "127.0.0.1"\n'
                          'relay_user = "u"\nrelay_password_file = "nope"'})
    assert only(run_checks(cfg)) == {"delivery.relay_password_file": f"{gate}/nope does not exist"}


def test_empty_relay_password_file_is_refused_as_serve_does(gate: Path) -> None:
    (gate / "relay.pw").write_text("\n")
    cfg = config(gate, **{'mode = "maildir"': 'mode = "relay"\nrelay_host = "127.0.0.1"\n'
                          'relay_user = "u"\nrelay_password_file = "relay.pw"'})
    assert list(only(run_checks(cfg))) == ["delivery.relay_password_file"]


def test_database_written_by_a_newer_smtpgate(gate: Path) -> None:
    from smtpgate.auth.store import SCHEMA_VERSION

    with sqlite3.connect(gate / "accounts.sqlite") as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'later')", (SCHEMA_VERSION + 1,))
    conn.close()
    errors = only(run_checks(config(gate)))
    assert list(errors) == ["accounts.database"]
    assert "was written by a newer smtpgate" in errors["accounts.database"]


def test_guard_database_written_by_a_newer_smtpgate(gate: Path) -> None:
    from smtpgate.auth.guard_store import MIGRATIONS, SqliteGuardStore

    SqliteGuardStore(gate / "guard.sqlite").close()
    with sqlite3.connect(gate / "guard.sqlite") as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'later')", (len(MIGRATIONS) + 1,))
    conn.close()
    errors = only(run_checks(config(gate)))
    assert list(errors) == ["guard.database"]
    assert "was written by a newer smtpgate" in errors["guard.database"]


def test_accounts_whose_name_is_no_mailbox_are_one_warning(gate: Path) -> None:
    """Made before ``user add`` refused them, they log in but can send only from
    their aliases: named, as a warning (they work as before)."""
    from smtpgate.auth.admin_store import AuditActor
    from smtpgate.auth.store import SqliteAccountStore
    from tests.unit.cli_support import FAST

    store = SqliteAccountStore(gate / "accounts.sqlite", FAST)
    try:
        with store.transaction(AuditActor("ops", "pytest")) as w:
            for name in ("ok@example.org", "a)b@example.org", "c,d@example.org"):
                w.create_account(name, {})
    finally:
        store.close()
    problems = run_checks(config(gate))
    assert only(problems) == {}
    warning = only(problems, "warning")["accounts.database"]
    assert warning.startswith("2 accounts whose name is not a mailbox")
    assert "'a)b@example.org', 'c,d@example.org'" in warning and "ok@" not in warning


def test_database_due_for_an_upgrade_is_a_warning(gate: Path) -> None:
    from smtpgate.auth.store import SCHEMA_VERSION

    with sqlite3.connect(gate / "accounts.sqlite") as conn:
        conn.execute("DELETE FROM schema_version WHERE version = ?", (SCHEMA_VERSION,))
    conn.close()
    problems = run_checks(config(gate))
    assert only(problems) == {}
    assert only(problems, "warning")["accounts.database"].endswith(
        f"has schema version {SCHEMA_VERSION - 1}; the next smtpgate command or start "
        f"upgrades it to {SCHEMA_VERSION}, keeping a copy of the old file beside it "
        f"(accounts.sqlite.bak-v{SCHEMA_VERSION - 1}-TIMESTAMP)"
    )


@pytest.mark.parametrize(("key", "table", "line"), [
    ("accounts.database", None, 'database = "state/accounts.sqlite"'),
    ("guard.database", "guard", 'database = "state/guard.sqlite"'),
], ids=["accounts", "guard"])
def test_a_database_in_a_directory_that_does_not_exist_is_an_error(
    gate: Path, key: str, table: str | None, line: str,
) -> None:
    """SQLite makes the file but not its directory, and `serve` stopped there with a
    bare "[Errno 2] No such file or directory": config check said OK (a warning for
    the account database, nothing for the guard's)."""
    if table is None:
        cfg = config(gate, **{'database = "accounts.sqlite"': line})
    else:
        cfg = config(gate, f"\n[{table}]\n{line}\n")
    errors = only(run_checks(cfg))
    assert list(errors) == [key], errors
    assert f"its directory {gate / 'state'} does not exist" in errors[key]
    assert f"or correct {key}" in errors[key]


def test_database_that_is_not_a_database(gate: Path) -> None:
    for name in ("accounts.sqlite", "accounts.sqlite-wal", "accounts.sqlite-shm"):
        (gate / name).unlink(missing_ok=True)
    (gate / "accounts.sqlite").write_bytes(b"not a database at all" * 100)
    errors = only(run_checks(config(gate)))
    assert list(errors) == ["accounts.database"]
    assert "cannot be read as an SQLite database" in errors["accounts.database"]


def test_spool_that_is_a_file(gate: Path) -> None:
    shutil.rmtree(gate / "spool")
    (gate / "spool").write_text("")
    assert only(run_checks(config(gate))) == {
        "queue.spool": f"{gate}/spool is not a directory (spool)"
    }


@pytest.mark.parametrize(
    ("first", "second", "clash"),
    [
        ("127.0.0.1", "0.0.0.0", True),
        ("0.0.0.0", "127.0.0.1", True),
        ("127.0.0.1", "[::]", True),  # Linux binds :: dual-stack
        ("[::1]", "[::]", True),
        ("0.0.0.0", "[::1]", False),
        ("127.0.0.1", "127.0.0.2", False),
        ("[::1]", "[0::1]", True),  # one address, spelt twice: both would bind (SO_REUSEPORT)
    ],
)
def test_listeners_that_cannot_both_bind(
    gate: Path, first: str, second: str, clash: bool
) -> None:
    text = (gate / "smtpgate.toml").read_text()
    port = load_config(gate / "smtpgate.toml").listeners[0].host_port[1]
    text = text.replace(f'address = "127.0.0.1:{port}"', f'address = "{first}:{port}"')
    extra = f'\n[[listeners]]\nname = "other"\naddress = "{second}:{port}"\ntls = "starttls"\n'
    # [[listeners]] tables come before the other tables: insert before [tls].
    head, sep, tail = text.partition("[tls]")
    (gate / "smtpgate.toml").write_text(head + extra + sep + tail)
    errors = only(run_checks(load_config(gate / "smtpgate.toml")))
    if clash:
        assert list(errors) == ["listeners.2.address"]
        assert "both use" in errors["listeners.2.address"]
    else:
        assert errors == {}


def test_one_listener_address_with_its_port_spelt_twice(gate: Path) -> None:
    text = (gate / "smtpgate.toml").read_text()
    port = load_config(gate / "smtpgate.toml").listeners[0].host_port[1]
    extra = f'\n[[listeners]]\nname = "other"\naddress = "127.0.0.1:0{port}"\ntls = "implicit"\n'
    head, sep, tail = text.partition("[tls]")
    (gate / "smtpgate.toml").write_text(head + extra + sep + tail)
    errors = only(run_checks(load_config(gate / "smtpgate.toml")))
    assert list(errors) == ["listeners.2.address"]
    assert f"both use 127.0.0.1 port {port}" in errors["listeners.2.address"]


@pytest.mark.parametrize(
    ("admin", "metrics", "clash"),
    [
        ("0.0.0.0:{port}", "127.0.0.1:9465", "admin.listen"),  # init --admin 0.0.0.0:587 ...
        ("127.0.0.1:{port}", "127.0.0.1:9465", "admin.listen"),
        ("127.0.0.1:9480", "[::]:{port}", "metrics.listen"),
        ("127.0.0.1:9480", "127.0.0.1:9480", "metrics.listen"),
        ("127.0.0.2:{port}", "127.0.0.1:9465", None),
    ],
)
def test_http_endpoints_that_cannot_bind_beside_a_listener(
    gate: Path, admin: str, metrics: str, clash: str | None
) -> None:
    # config check said OK, and serve then failed on listeners.0.address with "another
    # server (or another smtpgate) holds it", naming neither admin.listen nor its own admin.
    port = load_config(gate / "smtpgate.toml").listeners[0].host_port[1]
    cfg = config(gate, **{'listen = "127.0.0.1:9480"': f'listen = "{admin.format(port=port)}"',
                          'listen = "127.0.0.1:9465"':
                          f'listen = "{metrics.format(port=port)}"'})
    errors = only(run_checks(cfg))
    if clash is None:
        assert errors == {}
    else:
        assert list(errors) == [clash]
        assert "the second cannot bind" in errors[clash]


def test_oauth_key_set_file_must_be_a_key_set(gate: Path) -> None:
    (gate / "jwks.json").write_text("{not json")
    cfg = config(gate, '\n[[auth.oauth_issuers]]\nissuer = "https://id.example"\n'
                 'audience = ["smtp"]\njwks_file = "jwks.json"\n')
    assert only(run_checks(cfg)) == {
        "auth.oauth_issuers.0.jwks_file": f"{gate}/jwks.json is not JSON (expected a JSON "
        "Web Key Set)"
    }
    key = ec.generate_private_key(ec.SECP256R1())
    import jwt

    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    (gate / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    assert only(run_checks(cfg)) == {}


LOOSE = """
[guard]
enabled = false
allowlist = ["127.0.2.0/24"]
[policy]
sender_ownership = "log"
allow_missing_from_header = true
[smtp]
bare_line_endings = "normalize"
[passwords]
min_strength = 0
"""


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_every_loosening_is_a_warning_and_serve_logs_the_same_list(gate: Path) -> None:
    from smtpgate.server.app import check_before_binding

    cfg = _loose(gate)
    listed = loosenings(cfg)
    assert [p.key for p in listed] == [
        "listeners.0.auth_in_clear", "auth.mechanisms", "smtp.bare_line_endings",
        "guard.enabled", "guard.allowlist", "policy.sender_ownership",
        "policy.allow_missing_from_header", "passwords.min_strength", "delivery.relay_verify_cert",
    ]
    assert {p.severity for p in listed} == {"warning"}
    assert [p for p in run_checks(cfg) if p.severity == "warning"][-len(listed):] == listed
    logger, collect = logging.getLogger("smtpgate"), _Collect()
    logger.addHandler(collect)
    try:
        check_before_binding(cfg)
    finally:
        logger.removeHandler(collect)
    assert collect.messages[-len(listed):] == [f"{p.key}: {p.message}" for p in listed]


def test_cram_md5_beside_password_mechanisms_is_a_warning_per_listener(gate: Path) -> None:
    # PHPMailer picks CRAM-MD5 whenever offered (no fallback) and smtplib tries it
    # first: on a listener with PLAIN/LOGIN/SCRAM too, accounts not opted in fail.
    auth = 'log_file = "auth.log"\nmechanisms = ["SCRAM-SHA-256", "PLAIN", "CRAM-MD5"]'
    warned = [p for p in run_checks(config(gate, **{'log_file = "auth.log"': auth}))
              if p.severity == "warning" and "PHPMailer" in p.message]
    assert [p.key for p in warned] == ["listeners.0.mechanisms", "listeners.1.mechanisms"]
    assert "listener of its own" in warned[0].message
    # curl 7.88 picks CRAM-MD5 too when it is offered and does not fall back (exit
    # 67, "Login denied"; measured by the h25sasl review): the warning names it.
    assert "PHPMailer (by default) and curl" in warned[0].message
    # CRAM-MD5 on a listener of its own, the others without it: no such warning.
    own = config(gate, **{'tls = "implicit"': 'tls = "implicit"\nmechanisms = ["CRAM-MD5"]',
                          'tls = "starttls"': 'tls = "starttls"\nmechanisms = ["PLAIN"]'})
    assert not [p for p in run_checks(own) if "PHPMailer" in p.message]


def test_a_listener_without_any_mechanism_is_a_warning(gate: Path) -> None:
    """mechanisms = [] started a server nobody could log in to, without a word."""
    original = (gate / "smtpgate.toml").read_text()
    none = config(gate, **{'log_file = "auth.log"': 'log_file = "auth.log"\nmechanisms = []'})
    warned = [p for p in run_checks(none) if "offers no SASL mechanism" in p.message]
    assert [(p.severity, p.key) for p in warned] == [("warning", "auth.mechanisms")] * 2
    (gate / "smtpgate.toml").write_text(original)  # config() keeps its changes
    one = config(gate, **{'tls = "implicit"': 'tls = "implicit"\nmechanisms = []'})
    assert [p.key for p in run_checks(one) if "offers no SASL" in p.message] == [
        "listeners.1.mechanisms"]
    # A proxy that logs clients in with XCLIENT needs none.
    (gate / "smtpgate.toml").write_text(original)
    proxied = config(gate, **{'tls = "implicit"': 'tls = "implicit"\nmechanisms = []\n'
                              'xclient_trusted = ["127.0.0.1/32"]'})
    assert not [p for p in run_checks(proxied) if "offers no SASL" in p.message]


def test_every_loosening_is_in_the_leniencies_of_docs_security_md() -> None:
    """docs/security.md promises "every leniency" in its Leniencies table: each key
    `loosenings` can name is there (its listeners as `listeners.*`). Four of its
    eighteen were, the rest only in cli.md's summary or nowhere."""
    source = inspect.getsource(loosenings)
    keys = {re.sub(r"\{\w+\}", "*", k) for k in re.findall(r'_warning\(f?"([\w.{}]+)"', source)}
    keys |= set(re.findall(r'\("(policy\.\w+)", cfg\.', source))  # the (key, mode) loop
    assert len(keys) >= 18 and {"listeners.*.auth_in_clear", "policy.from_header"} <= keys
    page = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    table = page.split("## Leniencies", 1)[1].split("\n## ", 1)[0]
    missing = sorted(k for k in keys if f"`{k}" not in table)
    assert not missing, f"docs/security.md, Leniencies, does not name: {missing}"


def test_an_auth_log_turned_off_is_a_loosening(gate: Path) -> None:
    """fail2ban and `smtpgate report` read the auth log: turning it off left them
    blind without a word (found by the h25docs review)."""
    off = config(gate, **{'log_file = "auth.log"': 'log_file = ""'})
    assert [p.key for p in loosenings(off)] == ["auth.log_file"]
    assert "fail2ban" in loosenings(off)[0].message


def test_secure_defaults_have_no_loosening(gate: Path) -> None:
    assert loosenings(config(gate)) == []


def _loose(gate: Path) -> Config:
    return config(gate, LOOSE, **{
        'tls = "starttls"': 'tls = "starttls"\nauth_in_clear = true',
        'log_file = "auth.log"': 'log_file = "auth.log"\nmechanisms = ["PLAIN", "CRAM-MD5"]',
        'mode = "maildir"': 'mode = "relay"\nrelay_host = "127.0.0.1"\nrelay_verify_cert = false',
    })


# --- the command --------------------------------------------------------------------------------


def test_config_check_prints_errors_and_exits_1(gate: Path) -> None:
    (gate / "tls/cert.pem").write_text("dummy")
    path = gate / "smtpgate.toml"
    r = CliRunner().invoke(cli, ["config", "check", "--config", str(path)])
    assert r.exit_code == 1
    assert f"{path}: error: tls.cert: {gate}/tls/cert.pem is not a PEM certificate" in r.output
    assert f"{path}: 1 error, 0 warnings" in r.output


def test_config_check_with_only_warnings_exits_0(gate: Path) -> None:
    _loose(gate)
    r = CliRunner().invoke(cli, ["config", "check", "--config", str(gate / "smtpgate.toml")])
    assert r.exit_code == 0, r.output
    assert ": warning: guard.enabled: false: no penalties" in r.output
    assert "OK (2 listeners, delivery relay), 11 warnings" in r.output


def test_config_check_json(gate: Path) -> None:
    _loose(gate)
    (gate / "tls/key.pem").write_text("dummy")
    path = gate / "smtpgate.toml"
    r = CliRunner().invoke(cli, ["config", "check", "--json", "--config", str(path)])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["config"] == str(path) and doc["ok"] is False
    assert doc["errors"] == 1 and doc["warnings"] == 11
    assert doc["problems"][0] == {
        "severity": "error", "key": "tls.key",
        "message": f"{gate}/tls/key.pem is not a PEM private key (no '-----BEGIN PRIVATE "
        "KEY-----' line)",
    }
    assert {p["severity"] for p in doc["problems"][1:]} == {"warning"}


def test_config_check_json_of_a_schema_error(gate: Path) -> None:
    path = gate / "smtpgate.toml"
    path.write_text(path.read_text().replace("hostname", "hostnam"))
    r = CliRunner().invoke(cli, ["config", "check", "--json", "--config", str(path)])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["problems"] == [{
        "severity": "error", "key": "hostnam",
        "message": "unknown key `hostnam` at the top level; did you mean `hostname`?",
    }]


def test_config_check_of_a_missing_file_exits_3(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["config", "check", "--config", str(tmp_path / "nope.toml")])
    assert r.exit_code == 3
    assert "nope.toml does not exist" in r.output


def test_a_spool_disk_under_the_reserve_is_a_warning_naming_the_key(gate: Path) -> None:
    st = os.statvfs(gate)
    too_much = st.f_bavail * st.f_frsize + 10**12
    cfg = config(gate, **{"[queue]\n": f"[queue]\nmin_free_space = {too_much}\n"})
    found = run_checks(cfg)
    assert only(found) == {}  # the server still starts
    warning = only(found, "warning")["queue.min_free_space"]
    assert "MAIL will be answered 452 4.3.1 until there is room" in warning
    assert run_checks(config(gate, **{f"min_free_space = {too_much}\n": ""})) == []


def test_a_secret_file_every_user_may_read_is_a_warning_naming_the_key(gate: Path) -> None:
    # A key copied with cp or written under umask 022 (0644) passed without a word.
    assert run_checks(config(gate)) == []
    (gate / "tls" / "key.pem").chmod(0o644)
    (gate / "decoy.key").chmod(0o604)
    password = gate / "relay.password"
    password.write_text("secret\n")
    password.chmod(0o644)
    cfg = config(gate, **{'mode = "maildir"': 'mode = "relay"\nrelay_host = "127.0.0.1"\n'
                          'relay_user = "u"\nrelay_password_file = "relay.password"'})
    problems = run_checks(cfg)
    assert only(problems) == {}
    warnings = only(problems, "warning")
    assert "readable by every user of this machine (mode 0644)" in warnings["tls.key"]
    assert "chmod o-rwx" in warnings["tls.key"]
    assert "(mode 0604)" in warnings["auth.decoy_secret_file"]
    assert "(mode 0644)" in warnings["delivery.relay_password_file"]
    for path in (gate / "tls" / "key.pem", gate / "decoy.key", password):
        path.chmod(0o640)
    assert not {"tls.key", "auth.decoy_secret_file", "delivery.relay_password_file"} & set(
        only(run_checks(cfg), "warning"))


def _issue(subject: str, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
           key: ec.EllipticCurvePrivateKey, *, ca: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.mark.parametrize("with_intermediate", [False, True])
def test_a_leaf_without_its_intermediate_is_a_warning(
    gate: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_intermediate: bool
) -> None:
    """certbot's cert.pem configured in place of fullchain.pem: the server sends no
    intermediate and verifying clients fail ("unable to get local issuer
    certificate"); config check said nothing."""
    root_key, mid_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _issue("Test Root", "Test Root", root_key, root_key, ca=True)
    mid = _issue("Test Intermediate", "Test Root", root_key, mid_key, ca=True)
    leaf = _issue("localhost", "Test Intermediate", mid_key, key)
    roots = tmp_path / "roots.pem"
    roots.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    monkeypatch.setenv("SSL_CERT_FILE", str(roots))  # this machine's trusted roots
    chain = [leaf, mid] if with_intermediate else [leaf]
    (gate / "tls/cert.pem").write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    (gate / "tls/key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    problems = run_checks(config(gate))
    assert only(problems) == {}
    warning = only(problems, "warning").get("tls.cert", "")
    if with_intermediate:
        assert warning == ""
    else:
        assert "holds only the server's certificate, issued by CN=Test Intermediate" in warning
        assert "fullchain.pem, not cert.pem" in warning


def test_a_leaf_issued_directly_by_a_trusted_root_is_no_warning(
    gate: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _issue("Test Root", "Test Root", root_key, root_key, ca=True)
    leaf = _issue("localhost", "Test Root", root_key, key)
    roots = tmp_path / "roots.pem"
    roots.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    monkeypatch.setenv("SSL_CERT_FILE", str(roots))
    (gate / "tls/cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (gate / "tls/key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    assert run_checks(config(gate)) == []


@pytest.mark.parametrize(("mode", "warned"), [("0666", True), ("0662", True),
                                              ("0660", False), ("0600", False)])
def test_a_front_door_socket_every_user_may_connect_to_is_a_warning(
    gate: Path, mode: str, warned: bool
) -> None:
    """Connecting to a unix socket needs write permission on it: mode = "0666" let every
    local user test passwords through the Dovecot door, with no word said."""
    door = (f'\n[[auth_listeners]]\nprotocol = "dovecot"\naddress = "unix:{gate}/auth.sock"\n'
            f'mode = "{mode}"\n')
    # One warning (it was said twice), among the leniencies: config check and serve
    # print them with the other checks.
    cfg = config(gate, door)
    problems = [p for p in run_checks(cfg) if p.key == "auth_listeners.0.mode"]
    assert len(problems) == int(warned)
    found = only(loosenings(cfg), "warning")
    if warned:
        assert "every local user may connect" in found["auth_listeners.0.mode"]
    else:
        assert "auth_listeners.0.mode" not in found


def _issuers(gate: Path, *domains: str) -> str:
    (gate / "jwks.json").write_text('{"keys": []}')
    return "".join(
        f'\n[[auth.oauth_issuers]]\nissuer = "https://id{i}.example.test"\n'
        f'audience = ["smtp"]\njwks_file = "jwks.json"\n' + (f"domains = {d}\n" if d else "")
        for i, d in enumerate(domains))


@pytest.mark.parametrize(("domains", "warned"), [
    (("",), []),
    (('["example.org"]', ""), ["auth.oauth_issuers.1.domains"]),
    (("", ""), ["auth.oauth_issuers.0.domains", "auth.oauth_issuers.1.domains"]),
    (('["example.org"]', '["partner.example"]'), []),
])
def test_several_issuers_without_domains_is_a_warning(
    gate: Path, domains: tuple[str, ...], warned: list[str]
) -> None:
    """With two issuers and no domains, each may log in as any account: the partner's
    tenant as the company's users, and the other way round."""
    found = only(loosenings(config(gate, _issuers(gate, *domains))), "warning")
    assert sorted(k for k in found if k.startswith("auth.oauth_issuers")) == warned
    for key in warned:
        assert "may log in as any account" in found[key]


@pytest.mark.parametrize(("user", "said"), [
    ("", "none: mail goes to the relay without TLS"),
    ('relay_user = "u"\nrelay_password_file = "relay.pw"\n',
     "none: mail and relay_user's password go to the relay without TLS"),
])
def test_relay_without_tls_is_said_in_english(gate: Path, user: str, said: str) -> None:
    """'mail go to the relay': the verb agreed with the password when there was none."""
    (gate / "relay.pw").write_text("secret\n")
    cfg = config(gate, **{'mode = "maildir"': 'mode = "relay"\nrelay_host = "127.0.0.1"\n'
                          f'relay_tls = "none"\n{user}'})
    assert only(loosenings(cfg), "warning")["delivery.relay_tls"] == said


def _in_read_only_mount(directory: Path, command: list[str],
                        env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``command`` in a mount namespace of its own where ``directory`` is a read-only
    bind mount, as systemd's ProtectSystem=strict leaves a path outside the unit's
    writable directories."""
    script = (f'mount --make-rprivate / && mount --bind -o ro "{directory}" "{directory}" '
              '&& exec "$@"')
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *command],
                          check=False, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a read-only bind mount")
def test_read_only_under_systemd_names_read_write_paths(tmp_path: Path) -> None:
    """A Maildir outside /var/lib/smtpgate under the shipped unit: ProtectSystem=strict
    mounts it read-only for the service alone, and `serve` said "remount it
    read-write" of a file system that `mount` shows read-write. A real read-only
    bind mount and a real `serve` with systemd's INVOCATION_ID: the message names
    ReadWritePaths=; from a shell (no INVOCATION_ID) it stays as it was."""
    ro = tmp_path / "vmail"
    ro.mkdir()
    path = write_config(tmp_path)
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mx.example.org")
    path.write_text(path.read_text() + f'\n[delivery]\nmode = "maildir"\nmaildir = "{ro}/mail"\n')
    smtpgate = str(Path(sys.executable).parent / "smtpgate")
    env = {**os.environ, "INVOCATION_ID": "0123456789abcdef0123456789abcdef"}
    done = _in_read_only_mount(ro, [smtpgate, "serve", "--config", str(path)], env)
    assert done.returncode == 2, done.stderr
    assert (f"cannot start: delivery.maildir: cannot create {ro}/mail: {ro} is read-only "
            "for this service") in done.stderr
    assert "ReadWritePaths= in a drop-in (systemctl edit smtpgate)" in done.stderr
    env.pop("INVOCATION_ID")
    done = _in_read_only_mount(ro, [smtpgate, "config", "check", "--config", str(path)], env)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "is on a read-only file system" in out and "ReadWritePaths" not in out


@pytest.mark.parametrize(("count", "warned"), [(1_000_000, False), (2_000_000, True)])
def test_scram_iterations_our_own_client_refuses_are_warned_of(
    gate: Path, count: int, warned: bool
) -> None:
    """scram_iterations = 2000000 passed without a word, and `smtpgate test --auth
    SCRAM-SHA-256` against that server then stopped with 'iteration count 2000000 out
    of range' (exit 5): our client takes at most 1,000,000 from a server."""
    cfg = config(gate, "", **{
        'database = "accounts.sqlite"':
            f'database = "accounts.sqlite"\nscram_iterations = {count}'})
    found = only(run_checks(cfg), "warning")
    if warned:
        assert "smtpgate's own SCRAM client" in found["accounts.scram_iterations"], found
        assert "'iteration count 2000000 out of range'" in found["accounts.scram_iterations"]
    else:
        assert "accounts.scram_iterations" not in found, found


@pytest.mark.parametrize(("keys", "warned"), [
    ("", False),  # opportunistic alone: encrypted, not verified (Postfix's "may")
    ("relay_verify_cert = true\n", True),
    ('relay_verify_cert = true\nrelay_tls = "require"\n', False),
    ("relay_verify_cert = false\n", False),  # a loosening, said by loosenings()
])
def test_config_check_says_opportunistic_tls_with_verification_holds_mail(
        gate: Path, keys: str, warned: bool) -> None:
    """relay_verify_cert = true with relay_tls = "opportunistic" deferred every message
    to a self-signed relay until queue.max_age, and config check said nothing."""
    cfg = config(gate, **{'mode = "maildir"': 'mode = "relay"\nrelay_host = "127.0.0.1"\n'
                          + keys})
    found = [p for p in run_checks(cfg) if p.key == "delivery.relay_verify_cert"
             and "gets no mail" in p.message]
    assert bool(found) == warned
    if warned:
        assert found[0].severity == "warning"
        assert "queue.max_age" in found[0].message and "relay_tls_pins" in found[0].message


def test_oauth_key_set_refreshes_without_a_limit_are_a_warning(gate: Path) -> None:
    # jwks_min_refresh_seconds = 0 passed config check in silence: every token with a
    # made-up kid or a forged signature then fetched the issuer's key set once more.
    issuer = ('\n[[auth.oauth_issuers]]\nissuer = "https://id.example"\n'
              'audience = ["smtp"]\njwks_url = "https://id.example/jwks"\n')
    assert only(run_checks(config(gate, issuer)), "warning") == {}
    unlimited = config(gate, "jwks_min_refresh_seconds = 0\n")  # into the issuer above
    warned = only(run_checks(unlimited), "warning")
    assert list(warned) == ["auth.oauth_issuers.0.jwks_min_refresh_seconds"]
    assert "https://id.example/jwks again" in warned[
        "auth.oauth_issuers.0.jwks_min_refresh_seconds"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a read-only bind mount")
def test_a_database_on_a_read_only_file_system_is_said_read_only(tmp_path: Path) -> None:
    """The state directory on a file system remounted read-only (after disk errors):
    `user list`, `user lock` ... and `config check` said "permission denied: user
    root cannot read and write the account database ...; give that user access
    (chown or chmod)", which cannot help, while `config check` said the truth of the
    spool and the Maildir beside it. A real read-only bind mount, real commands."""
    state = tmp_path / "state"
    state.mkdir()
    path = write_config(tmp_path)
    db = tmp_path / "accounts.sqlite"
    db.rename(state / "accounts.sqlite")
    path.write_text(path.read_text().replace('database = "accounts.sqlite"',
                                             f'database = "{state}/accounts.sqlite"'))
    assert f'database = "{state}/accounts.sqlite"' in path.read_text()
    smtpgate = str(Path(sys.executable).parent / "smtpgate")
    env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
    want = (f"{state}/accounts.sqlite is on a read-only file system (chown or chmod cannot "
            "help): remount it read-write")
    for command in (["user", "lock", "a@example.org"], ["config", "check"]):
        done = _in_read_only_mount(state, [smtpgate, *command, "--config", str(path)], env)
        assert done.returncode == 1, done.stderr
        out = done.stdout + done.stderr
        assert want in out, out
        assert "permission denied" not in out, out


def test_accounts_whose_names_read_the_same_are_one_warning(gate: Path) -> None:
    """A pair made before ``user add`` refused look-alike names (found by the
    h29i18n review: alice@example.org and аlice@example.org with the Cyrillic a)
    is named, as a warning: either can send mail that reads as the other's."""
    from smtpgate.auth.admin_store import AuditActor
    from smtpgate.auth.store import SqliteAccountStore
    from tests.unit.cli_support import FAST

    store = SqliteAccountStore(gate / "accounts.sqlite", FAST)
    try:
        with store.transaction(AuditActor("ops", "pytest")) as w:
            for name in ("alice@example.org", "jörg@example.org", "jorg@example.org",
                         "user1@example.org", "userl@example.org"):
                w.create_account(name, {})
    finally:
        store.close()
    with sqlite3.connect(gate / "accounts.sqlite") as conn:  # what user add took before
        conn.execute("INSERT INTO accounts (name, created, updated) VALUES (?, ?, ?)",
                     ("\u0430lice@example.org", "2026-12-01T00:00:00.000000Z",
                      "2026-12-01T00:00:00.000000Z"))
    conn.close()
    problems = run_checks(config(gate))
    assert only(problems) == {}
    warning = only(problems, "warning")["accounts.database"]
    assert warning.startswith("1 pair of accounts whose names read the same: ")
    assert "'alice@example.org' and '\u0430lice@example.org' (U+0430 CYRILLIC SMALL LETTER A)" \
        in warning
    assert "jorg" not in warning and "user1" not in warning
