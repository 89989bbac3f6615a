"""git send-email (Debian git-email: Perl Net::SMTP with Authen::SASL) sends a
patch through a stock smtpgate, as a kernel or project contributor does.

Its settings as people write them in .gitconfig: ``smtpEncryption = tls``
(STARTTLS on 587) or ``ssl`` (implicit TLS on 465), ``smtpServerPort``,
``smtpUser``/``smtpPass``, ``smtpSslCertPath`` for a private CA, and optionally
``smtpAuth``. Without ``smtpAuth`` Authen::SASL picks from the EHLO list; it has
no SCRAM, so it takes PLAIN.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PASSWORD, USER, Server, require_tool
from .mail_client_checks import (
    BODY_FIRST,
    DOT_LINE,
    LONG_LINE,
    SUBJECT,
    AuthLog,
    check_intact,
    delivered_with,
    marker,
    stock_server,
)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from stock_server(tmp_path_factory.mktemp("git-send-email") / "srv")


def git_env(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin",
            "LC_ALL": "C.UTF-8"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=git_env(repo), timeout=60).stdout


def patch(tmp_path: Path, mark: str) -> Path:
    """One commit's patch (format-patch) whose message is the test's UTF-8 body:
    git send-email encodes the long line itself (quoted-printable)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.name", "Alice Ärger")
    git(repo, "config", "user.email", USER)
    (repo / "README").write_text("Grüße\n")
    git(repo, "add", "README")
    git(repo, "commit", "-q", "-m", "start")
    (repo / "README").write_text("Grüße\nünïcödé ☃\n")
    git(repo, "commit", "-q", "-a", "-m",
        f"{SUBJECT} {mark}\n\n{BODY_FIRST}\n{LONG_LINE}\n{DOT_LINE}\nend\n")
    out = git(repo, "format-patch", "-1", "-o", str(tmp_path / "out"))
    return Path(out.strip())


def send_email(server: Server, tmp_path: Path, mark: str, encryption: str,
               *options: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    port = server.submission if encryption == "tls" else server.submissions
    repo_patch = patch(tmp_path, mark)
    return subprocess.run(
        ["git", "-C", str(tmp_path / "repo"), "send-email", "--confirm=never", "--suppress-cc=all", "--quiet",
         "--smtp-server=localhost", f"--smtp-server-port={port}",
         f"--smtp-encryption={encryption}", f"--smtp-ssl-cert-path={server.ca}",
         f"--smtp-user={USER}", f"--smtp-pass={password}", "--smtp-domain=client.test",
         "--to=bob@example.net", *options, str(repo_patch)],
        capture_output=True, text=True, env=git_env(tmp_path / "repo"), timeout=60, check=False,
    )


def require_send_email() -> None:
    """git send-email is Debian's git-email package (with Authen::SASL and
    IO::Socket::SSL); a missing one is git's 'not a git command'."""
    require_tool("git")
    if not Path("/usr/lib/git-core/git-send-email").exists():
        require_tool("git-send-email")


@pytest.mark.parametrize("encryption", ["tls", "ssl"])
@pytest.mark.parametrize("auth", [None, "PLAIN", "LOGIN"])
def test_git_send_email_sends_a_patch(server: Server, tmp_path: Path, encryption: str,
                                      auth: str | None) -> None:
    require_send_email()
    mark, log = marker(), AuthLog(server)
    proc = send_email(server, tmp_path, mark, encryption,
                      *([f"--smtp-auth={auth}"] if auth else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    msg = check_intact(server, mark)
    assert str(msg["Subject"]).startswith("[PATCH]")
    assert str(msg["From"]) == f"Alice Ärger <{USER}>"
    assert "+ünïcödé ☃" in str(msg.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert log.mechanisms() == [auth or "PLAIN"]


@pytest.mark.parametrize("encryption", ["tls", "ssl"])
def test_git_send_email_wrong_password(server: Server, tmp_path: Path, encryption: str) -> None:
    require_send_email()
    mark, log = marker(), AuthLog(server)
    proc = send_email(server, tmp_path, mark, encryption, password="not the password")
    assert proc.returncode != 0
    # git prints the server's reply text as its error: the code and the reason.
    assert "5.7.8 Authentication credentials invalid" in proc.stderr, proc.stderr
    assert log.mechanisms("failure") == ["PLAIN"]
    assert not delivered_with(server, mark)


def test_git_send_email_mechanism_the_server_does_not_offer(server: Server,
                                                            tmp_path: Path) -> None:
    """``smtpAuth = CRAM-MD5`` (not offered by init's config): Net::SMTP 3.14 sends
    it anyway, whatever the EHLO list says (with a list, Authen::SASL picks its
    favourite from it, again unchecked); the refusal is RFC 4954's 504 and git
    shows it."""
    require_send_email()
    proc = send_email(server, tmp_path, marker(), "tls", "--smtp-auth=CRAM-MD5")
    assert proc.returncode != 0
    assert "5.5.4 Unrecognized authentication mechanism" in proc.stderr, proc.stderr
