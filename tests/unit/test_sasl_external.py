"""SASL EXTERNAL (RFC 4422 Appendix A) and client certificates, below the wire:
the mechanism, the engine's advertisement, the auth service's mapping, the account
store's certificate table, the listener keys and the TLS session's verification.
The wire itself is tests/integration/test_client_certificates.py."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from smtpgate.admin import AccountAdmin
from smtpgate.auth.admin_store import CertificateTaken
from smtpgate.auth.authlog import AuthLog
from smtpgate.auth.service import REFUSED_LOCKED, REFUSED_POLICY, AuthContext, AuthService
from smtpgate.auth.store import AuditActor, SqliteAccountStore
from smtpgate.cli.main import cli
from smtpgate.config import AccountsConfig, AuthConfig, ListenerConfig, load_config
from smtpgate.preflight import run_checks
from smtpgate.sasl import base as sasl
from smtpgate.sasl.external import ExternalClient, ExternalServer
from smtpgate.sasl.registry import create_client_mechanism
from smtpgate.server.reload import build_tls
from smtpgate.smtp import replies as R
from smtpgate.tls.bio import TlsError
from smtpgate.tls.certs import write_self_signed
from smtpgate.tls.client_certs import CertificateFileError, normalise_fingerprint
from smtpgate.tls.memory_handshake import handshake, session_step, sslobject_step
from smtpgate.tls.session import ClientAuth, TlsConfigError, TlsServerSession, make_server_context
from tests.client_pki import TestCa

from .engine_driver import TLS, Driver

ALICE = "alice@example.org"
CAROL = "carol@example.org"
CFG = AccountsConfig(argon2_memory_kib=8192, argon2_time_cost=1, argon2_parallelism=1)
ACTOR = AuditActor("ops", "pytest")
FP = "ab" * 32


# --- the mechanism ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("initial", "authzid"),
    [(b"", ""), (ALICE.encode(), ALICE)],  # "AUTH EXTERNAL =" / "AUTH EXTERNAL YWxp..."
)
def test_rfc4422_a1_the_message_is_the_authzid(initial: bytes, authzid: str) -> None:
    step = ExternalServer().start(initial)
    assert step == sasl.NeedCredentials(sasl.VerifyCertificate(authzid, "EXTERNAL"))


def test_rfc4422_s5_no_initial_response_gets_an_empty_challenge() -> None:
    mech = ExternalServer()
    assert mech.start(None) == sasl.Challenge(b"")
    assert mech.step(b"") == sasl.NeedCredentials(sasl.VerifyCertificate(""))
    ok = mech.answer(sasl.Verdict(ok=True, identity=ALICE))
    assert ok == sasl.Success(identity=ALICE)


@pytest.mark.parametrize("bad", [b"al\x00ice", b"\xff\xfe", b"alice\r\nMAIL", b"a" * 1025])
def test_malformed_authzid_fails_before_any_lookup(bad: bytes) -> None:
    step = ExternalServer().start(bad)
    assert isinstance(step, sasl.Failure) and step.malformed


def test_a_refused_certificate_is_a_failure_naming_the_authzid() -> None:
    mech = ExternalServer()
    mech.start(ALICE.encode())
    step = mech.answer(sasl.Verdict(ok=False, reason="not registered"))
    assert step == sasl.Failure(reason="not registered", username=ALICE)


def test_client_sends_the_authzid_once() -> None:
    assert ExternalClient().start() == b""
    client = create_client_mechanism("EXTERNAL", username="", authzid=ALICE)
    assert client.step(b"") == ALICE.encode() and client.done
    with pytest.raises(sasl.ClientAuthError):
        client.step(b"")


# --- the engine: advertised only on a TLS session with a verified certificate -----------


CERT = sasl.ClientCertificate(FP, "CN=alice", (ALICE,))
MECHS = ("EXTERNAL", "SCRAM-SHA-256", "PLAIN")


def _ehlo(d: Driver) -> bytes:
    return d.feed(b"EHLO client.example\r\n")


def test_external_not_offered_without_a_client_certificate() -> None:
    d = Driver.new(tls=True, mechanisms=MECHS)
    assert b"AUTH SCRAM-SHA-256 PLAIN\r\n" in _ehlo(d)
    assert d.feed(b"AUTH EXTERNAL =\r\n") == R.AUTH_UNKNOWN_MECHANISM.format()


def test_external_never_in_clear_even_with_auth_in_clear() -> None:
    d = Driver.new(mechanisms=MECHS, auth_in_clear=True)
    assert b"EXTERNAL" not in _ehlo(d)
    assert d.feed(b"AUTH EXTERNAL =\r\n") == R.AUTH_UNKNOWN_MECHANISM.format()


def test_external_offered_first_with_a_verified_certificate() -> None:
    d = Driver.new(mechanisms=MECHS)
    d.engine.tls = replace(TLS, client_certificate=CERT)
    assert b"AUTH EXTERNAL SCRAM-SHA-256 PLAIN\r\n" in _ehlo(d)


# --- the auth service: certificate to account ------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> SqliteAccountStore:
    s = SqliteAccountStore(tmp_path / "accounts.sqlite", CFG)
    admin = AccountAdmin(s, CFG, actor=ACTOR)
    admin.add_account(ALICE, "pencil-pencil-pencil")
    admin.add_account(CAROL, "pencil-pencil-pencil")
    with s.transaction(ACTOR) as w:
        w.add_certificate(ALICE, FP, "CN=alice", None)
        w.add_certificate(ALICE, "cd" * 32, "CN=old", None)
        w.remove_certificate(ALICE, "cd" * 32)
    return s


@pytest.fixture
async def svc(store: SqliteAccountStore, tmp_path: Path) -> AsyncIterator[AuthService]:
    s = AuthService(store, CFG, AuthConfig(), AuthLog(tmp_path / "auth.log"))
    yield s
    await s.close()


async def _external(
    svc: AuthService, cert: sasl.ClientCertificate | None, authzid: str = ""
) -> tuple[sasl.CredentialAnswer, str | None]:
    ctx = AuthContext("submission", "192.0.2.7", 50123, "TLSv1.3", "s", client_certificate=cert)
    res = await svc.resolve_detailed(sasl.VerifyCertificate(authzid), ctx)
    return res.answer, res.refusal


async def test_registered_fingerprint_logs_in_as_its_account(svc: AuthService) -> None:
    assert await _external(svc, CERT) == (sasl.Verdict(ok=True, identity=ALICE), None)
    assert (await _external(svc, CERT, "alice@EXAMPLE.org"))[0] == sasl.Verdict(True, ALICE)


async def test_authzid_of_another_account_is_a_policy_refusal(svc: AuthService) -> None:
    answer, refusal = await _external(svc, CERT, CAROL)
    assert isinstance(answer, sasl.Verdict) and not answer.ok and refusal == REFUSED_POLICY


@pytest.mark.parametrize("trust_emails", [False, True])
async def test_removed_fingerprint_is_refused_even_with_san_login(
    svc: AuthService, trust_emails: bool
) -> None:
    cert = sasl.ClientCertificate("cd" * 32, "CN=old", (ALICE,), trust_emails)
    answer, refusal = await _external(svc, cert)
    assert isinstance(answer, sasl.Verdict) and not answer.ok and not answer.temporary
    assert "removed" in answer.reason and refusal is None  # counted as a wrong secret


async def test_unregistered_certificate_and_no_certificate_fail(svc: AuthService) -> None:
    stranger = sasl.ClientCertificate("ef" * 32, "CN=x", (ALICE,))  # SAN login off
    for cert in (stranger, None):
        answer, _ = await _external(svc, cert)
        assert isinstance(answer, sasl.Verdict) and not answer.ok and not answer.temporary


async def test_san_email_logs_in_only_where_trusted_and_unambiguous(svc: AuthService) -> None:
    def cert(*emails: str) -> sasl.ClientCertificate:
        return sasl.ClientCertificate("ef" * 32, "CN=c", emails, trust_emails=True)

    assert (await _external(svc, cert(CAROL)))[0] == sasl.Verdict(ok=True, identity=CAROL)
    assert (await _external(svc, cert(ALICE, CAROL), CAROL))[0] == sasl.Verdict(True, CAROL)
    for c, authzid in ((cert(ALICE, CAROL), ""), (cert(CAROL), ALICE), (cert("x@example.org"), "")):
        answer, _ = await _external(svc, c, authzid)
        assert isinstance(answer, sasl.Verdict) and not answer.ok


async def test_an_authzid_in_another_spelling_of_the_name_is_the_account(
    svc: AuthService,
) -> None:
    """The authzid is matched as PLAIN's is (SASLprep'd, ``names.login_spellings``):
    ``ａｌｉｃｅ@example.org`` in full-width letters or with a soft hyphen is alice.
    On the local database it was compared as given, and refused as another's."""
    def san(*emails: str) -> sasl.ClientCertificate:
        return sasl.ClientCertificate("ef" * 32, "CN=c", emails, trust_emails=True)

    for authzid in ("\uff41\uff4c\uff49\uff43\uff45@example.org", "ali\u00adce@example.org"):
        assert await _external(svc, CERT, authzid) == (sasl.Verdict(ok=True, identity=ALICE), None)
        assert (await _external(svc, san(ALICE, CAROL), authzid))[0] == sasl.Verdict(True, ALICE)
    answer, refusal = await _external(svc, CERT, "\uff43arol@example.org")  # still another's
    assert isinstance(answer, sasl.Verdict) and not answer.ok and refusal == REFUSED_POLICY


async def test_locked_account_is_refused(svc: AuthService, store: SqliteAccountStore) -> None:
    AccountAdmin(store, CFG, actor=ACTOR).lock(ALICE, "stolen laptop")
    answer, refusal = await _external(svc, CERT)
    assert isinstance(answer, sasl.Verdict) and not answer.ok and refusal == REFUSED_LOCKED


async def test_a_refused_certificate_names_its_account_for_the_auth_log(
    svc: AuthService, store: SqliteAccountStore
) -> None:
    """``AUTH EXTERNAL =`` names nobody; the certificate does. A login refused for
    its account (locked, a mechanism it may not use, a removed fingerprint, no such
    account) says which, for the auth log's user name (auth/login.py; until
    2026-12 such a record had "", so its owner's refusals could not be found)."""
    ctx = AuthContext("submission", "192.0.2.7", 50123, "TLSv1.3", "s", client_certificate=CERT)
    admin = AccountAdmin(store, CFG, actor=ACTOR)
    admin.lock(ALICE, "stolen laptop")
    locked = await svc.resolve_detailed(sasl.VerifyCertificate(""), ctx)
    assert locked.refusal == REFUSED_LOCKED and locked.named_identity == ALICE
    admin.unlock(ALICE)
    admin.set_allowed_mechanisms(ALICE, ["SCRAM-SHA-256"])
    refused = await svc.resolve_detailed(sasl.VerifyCertificate(""), ctx)
    assert refused.refusal is not None and refused.named_identity == ALICE
    old = replace(ctx, client_certificate=sasl.ClientCertificate("cd" * 32, "CN=old", ()))
    removed = await svc.resolve_detailed(sasl.VerifyCertificate(""), old)
    assert "removed" in removed.answer.reason and removed.named_identity == ALICE  # type: ignore[union-attr]
    ghost = replace(ctx, client_certificate=sasl.ClientCertificate(
        "ef" * 32, "CN=g", ("ghost@example.org",), trust_emails=True))
    unknown = await svc.resolve_detailed(sasl.VerifyCertificate(""), ghost)
    assert unknown.named_identity == "ghost@example.org"
    stranger = replace(ctx, client_certificate=sasl.ClientCertificate("ef" * 32, "CN=x", ()))
    assert (await svc.resolve_detailed(sasl.VerifyCertificate(""), stranger)).named_identity is None


# --- the account store ---------------------------------------------------------------


def test_store_keeps_certificates_and_their_removal(store: SqliteAccountStore) -> None:
    records = {r.fingerprint: r for r in store.certificates(ALICE)}
    assert records[FP].revoked is None and records["cd" * 32].revoked is not None
    assert store.certificate(FP) is not None and store.certificate("00" * 32) is None
    with store.transaction(ACTOR) as w:
        assert not w.add_certificate(ALICE, FP, "CN=alice", None)  # already there
        assert not w.remove_certificate(CAROL, FP)  # not carol's
        with pytest.raises(CertificateTaken):
            w.add_certificate(CAROL, FP, "CN=alice", None)
    with store.transaction(ACTOR) as w:
        assert w.add_certificate(CAROL, "cd" * 32, "CN=old", None)  # a removed one comes back
    back = store.certificate("cd" * 32)
    assert back is not None and (back.account, back.revoked) == (CAROL, None)
    actions = [e.action for e in store.admin_log()]
    assert actions.count("certificate added") == 3 and "certificate removed" in actions


def test_removing_the_account_removes_its_certificates(store: SqliteAccountStore) -> None:
    AccountAdmin(store, CFG, actor=ACTOR).remove_account(ALICE)
    assert store.certificate(FP) is None


@pytest.mark.parametrize(
    ("text", "ok"),
    [("AB:" * 31 + "AB", True), ("sha256:" + "ab" * 32, True), ("ab" * 31, False), ("zz" * 32, False),
     # The whole line of `openssl x509 -noout -fingerprint -sha256` (OpenSSL 3, then
     # 1.1), as docs/accounts.md says `user cert remove` takes it.
     ("sha256 Fingerprint=" + "AB:" * 31 + "AB", True), ("SHA256 Fingerprint=" + "AB:" * 31 + "AB", True)],
)
def test_fingerprints_as_people_paste_them(text: str, ok: bool) -> None:
    if ok:
        assert normalise_fingerprint(text) == "ab" * 32
    else:
        with pytest.raises(CertificateFileError):
            normalise_fingerprint(text)


# --- the listener keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    "keys",
    [
        {"client_certificates": "optional"},
        {"client_ca": "ca.pem"},
        {"client_cert_san_login": True},
        {"client_certificates": "sometimes", "client_ca": "ca.pem"},
    ],
)
def test_listener_client_certificate_keys_are_checked(keys: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ListenerConfig(name="s", address="127.0.0.1:587", tls="starttls", **keys)  # type: ignore[arg-type]


# --- the TLS session: verification against client_ca ----------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    write_self_signed(d / "cert.pem", d / "key.pem", "localhost")
    return d


def _handshake(
    tls_files: Path, auth: ClientAuth, cert: tuple[Path, Path] | None
) -> TlsServerSession:
    ctx = make_server_context(tls_files / "cert.pem", tls_files / "key.pem", "1.2", {"s": auth})
    server = TlsServerSession(ctx, "s")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    if cert is not None:
        client_ctx.load_cert_chain(*cert)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(inc, out, server_hostname="localhost")
    # TLS 1.3: the client's certificate comes last, after the client is done.
    handshake(sslobject_step(client, inc, out), session_step(server))
    assert server.handshake_done
    return server


def test_optional_untrusted_certificate_leaves_the_session_without_one(
    tls_files: Path, tmp_path: Path
) -> None:
    ca, other = TestCa(tmp_path, "ours"), TestCa(tmp_path, "theirs")
    good, expired = ca.issue("good", emails=(ALICE,)), ca.issue("old", expired=True)
    foreign = other.issue("foreign")
    auth = ClientAuth(ca.pem, trust_emails=True)
    cert, why = _handshake(tls_files, auth, (good.cert, good.key)).client_certificate()
    assert cert == sasl.ClientCertificate(good.fingerprint, "CN=good", (ALICE,), True)
    assert why == ""
    for issued, reason in ((expired, "expired"), (foreign, "issuer not in client_ca")):
        cert, why = _handshake(tls_files, auth, (issued.cert, issued.key)).client_certificate()
        assert cert is None and reason in why
    assert _handshake(tls_files, auth, None).client_certificate() == (None, "")


def test_required_without_a_certificate_fails_the_handshake(
    tls_files: Path, tmp_path: Path
) -> None:
    ca = TestCa(tmp_path, "ours")
    with pytest.raises(TlsError):
        _handshake(tls_files, ClientAuth(ca.pem, required=True), None)


def test_an_unreadable_client_ca_names_its_key(tls_files: Path, tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    for path in (bad, tmp_path / "missing.pem"):
        auth = ClientAuth(path, key="listeners.0.client_ca")
        with pytest.raises(TlsConfigError) as e:
            make_server_context(tls_files / "cert.pem", tls_files / "key.pem", "1.2", {"s": auth})
        assert e.value.key == "listeners.0.client_ca"


# --- `config check` / start-up: the listener's client_ca --------------------------------


def test_config_check_names_a_missing_unparsable_or_expired_client_ca(tmp_path: Path) -> None:
    root = tmp_path / "gate"
    r = CliRunner().invoke(cli, ["init", "--dir", str(root), "--no-demo"])
    assert r.exit_code == 0, r.output
    path = root / "smtpgate.toml"
    path.write_text(path.read_text().replace(
        'tls = "starttls"\n', 'tls = "starttls"\nclient_certificates = "optional"\nclient_ca = "ca.pem"\n'
    ))
    # By index, as every other listener key and the schema's errors name it (it was
    # "listeners.submission.client_ca" here and "listeners.0.mechanisms" elsewhere).
    key = "listeners.0.client_ca"
    assert "does not exist" in _findings(path)[key]
    (root / "ca.pem").write_text("not a certificate\n")
    assert "holds no PEM certificate" in _findings(path)[key]
    # A reload (and start-up) that cannot read it names it so too.
    with pytest.raises(TlsConfigError) as e:
        build_tls(load_config(path))
    assert e.value.key == key
    TestCa(root, "ok")  # writes ok-ca.pem, valid for 30 days
    (root / "ca.pem").write_bytes((root / "ok-ca.pem").read_bytes())
    assert key not in _findings(path)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=60)
    warnings = {p.key: p.message for p in run_checks(load_config(path), now=later)}
    assert "expired on" in warnings[key]


def _findings(path: Path) -> dict[str, str]:
    return {p.key: p.message for p in run_checks(load_config(path))}


def test_user_mechanisms_allow_external_notes_where_it_is_offered(tmp_path: Path) -> None:
    root = tmp_path / "gate"
    assert CliRunner().invoke(cli, ["init", "--dir", str(root), "--no-demo"]).exit_code == 0
    path = root / "smtpgate.toml"
    run = CliRunner()
    args = ["user", "mechanisms", "demo@example.org", "--allow", "EXTERNAL", "--config", str(path)]
    assert run.invoke(cli, ["user", "add", "demo@example.org", "--password-stdin",
                            "--config", str(path)], input="a long enough passphrase 1\n").exit_code == 0
    first = run.invoke(cli, args)
    assert first.exit_code == 0 and "unusable for now: EXTERNAL" in first.output
    TestCa(root, "ok")
    path.write_text(path.read_text().replace(
        'tls = "starttls"\n', 'tls = "starttls"\nclient_certificates = "optional"\nclient_ca = "ok-ca.pem"\n'
    ))
    second = run.invoke(cli, args)
    assert second.exit_code == 0 and "unusable" not in second.output
