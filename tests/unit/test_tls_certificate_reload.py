"""The certificate and key a reload (SIGHUP, ``smtpgate reload``) puts in service.

Found by replacing the files of a running server certbot-style and sending
SIGHUP: a key protected by a passphrase made OpenSSL ask for it
("Enter PEM pass phrase:") on the terminal of a server run in the foreground,
where the reloading process then waited for ever (SIGTERM only asked again).
And a certificate not valid yet, which start-up refuses, was served from the
reload on ("reloaded configuration; certificate: ..."), until the next restart
failed; an expired one, or one not naming ``hostname``, without the warning
start-up gives.
"""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtpgate.config import parse_config
from smtpgate.server import app
from smtpgate.server import reload as reloading
from tests.unit.test_server_processes import _cfg as write_config

#: Loads the config given as argv[1] as a reload does, then prints the outcome.
RELOAD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from smtpgate.config import load_config
    from smtpgate.server import reload as reloading
    path = Path(sys.argv[1])
    try:
        reloading.load(path, load_config(path))
    except reloading.ReloadError as e:
        print("refused", e.key, e)
    else:
        print("reloaded")
""")


def _encrypt_key(key_file: Path, traditional: bool) -> None:
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    fmt = (serialization.PrivateFormat.TraditionalOpenSSL if traditional
           else serialization.PrivateFormat.PKCS8)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt,
                                           serialization.BestAvailableEncryption(b"secret")))


def _reload_elsewhere(path: Path) -> subprocess.CompletedProcess[str]:
    """The reload in a process of its own, with no terminal to be prompted on
    (without the fix it would otherwise wait on the test runner's terminal)."""
    return subprocess.run(
        [sys.executable, "-c", RELOAD, str(path)], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, start_new_session=True, timeout=60, check=False,
    )


def test_a_key_with_a_passphrase_fails_the_reload_and_is_never_asked_for(tmp_path: Path) -> None:
    for traditional in (False, True):
        path = write_config(tmp_path)
        _encrypt_key(tmp_path / "tls" / "key.pem", traditional)
        done = _reload_elsewhere(path)
        assert done.stdout.startswith("refused tls.key "), (done.stdout, done.stderr)
        assert "protected by a passphrase" in done.stdout
        assert "pass phrase" not in done.stderr.lower()
        (tmp_path / "tls" / "cert.pem").unlink()  # a new pair for the other format


def _replace_certificate(tls: Path, name: str, not_before: dt.datetime,
                         not_after: dt.datetime) -> None:
    """A new key and certificate for ``name``, written over the running ones as a
    renewal does."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    (tls / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tls / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_a_certificate_start_up_refuses_fails_the_reload(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    now = dt.datetime.now(dt.UTC)
    _replace_certificate(tmp_path / "tls", running.hostname, now + dt.timedelta(days=3),
                         now + dt.timedelta(days=90))
    with pytest.raises(reloading.ReloadError) as e:
        reloading.load(path, running)
    assert e.value.key == "tls.cert"
    assert "not valid before" in str(e.value)


@pytest.mark.parametrize(("days", "name", "warning"), [
    ((-90, -2), "", "the certificate expired on"),
    ((-60, 10), "", "the certificate expires on"),
    ((-1, 90), "other.example", "does not name hostname"),
], ids=["expired", "expiring", "another name"])
def test_what_start_up_warns_of_the_reload_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, days: tuple[int, int], name: str,
    warning: str,
) -> None:
    path = write_config(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    now = dt.datetime.now(dt.UTC)
    _replace_certificate(tmp_path / "tls", name or running.hostname,
                         now + dt.timedelta(days=days[0]), now + dt.timedelta(days=days[1]))
    new = reloading.load(path, running)  # served: refusing would not make it valid
    with caplog.at_level(logging.INFO, logger="smtpgate"):
        app._log_reload(running, new)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [m for m in warned if m.startswith("reload: tls.cert: ") and warning in m], warned


def _issued_pair(name: str) -> tuple[bytes, bytes, bytes]:
    """A CA, and a key and certificate for ``name`` it issued: (leaf PEM, CA PEM,
    leaf key PEM)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=90))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=80))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (leaf.public_bytes(pem), ca.public_bytes(pem), key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def test_a_chain_in_the_wrong_order_fails_the_reload_as_it_fails_start_up(
    tmp_path: Path,
) -> None:
    """The intermediate first (``cat chain.pem cert.pem``): start-up said the key
    belongs to certificate #2 and that the server's comes first; the reload said only
    that the key "does not belong to the certificate"."""
    path = write_config(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    leaf, ca, key = _issued_pair(running.hostname)
    (tmp_path / "tls" / "cert.pem").write_bytes(ca + leaf)
    (tmp_path / "tls" / "key.pem").write_bytes(key)
    with pytest.raises(reloading.ReloadError) as e:
        reloading.load(path, running)
    assert e.value.key == "tls.cert"
    assert "matches certificate #2" in str(e.value)
    assert "the server's own certificate must come first" in str(e.value)


def test_a_key_of_another_certificate_fails_the_reload_as_it_fails_start_up(
    tmp_path: Path,
) -> None:
    """certbot's cert renewed but an old key copied beside it: start-up names
    privkey.pem; the reload said only "does not belong to the certificate"."""
    path = write_config(tmp_path)
    running = parse_config(path.read_text(), tmp_path)
    leaf, ca, _ = _issued_pair(running.hostname)
    (tmp_path / "tls" / "cert.pem").write_bytes(leaf + ca)  # key.pem: the old one
    with pytest.raises(reloading.ReloadError) as e:
        reloading.load(path, running)
    assert e.value.key == "tls.key"
    assert "is not the key of the certificate" in str(e.value)
    assert "privkey.pem" in str(e.value)
