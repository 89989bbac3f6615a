"""The README's first screens, followed literally: `smtpgate init` prints a command that
sends a test message and that exact command works; `make run` announces the
addresses the config names; each send command of the README works as written (only
the demo password and the port are filled in) and prints what the README says; the
"Add a user" commands run; the doc index points where the topics are."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtpgate.tls.certs import write_self_signed

from .conftest import BIN, SMTPGATE, Server, free_port, require_tool

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_init_prints_a_working_test_command(tmp_path: Path) -> None:
    root = tmp_path / "var"
    sub, subs = free_port(), free_port()
    out = subprocess.run(
        [SMTPGATE, "init", "--dir", str(root), "--submission", f"127.0.0.1:{sub}",
         "--submissions", f"127.0.0.1:{subs}"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert "demo account: demo@localhost" in out
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("echo '"))
    # init refuses to overwrite an existing config
    again = subprocess.run(
        [SMTPGATE, "init", "--dir", str(root)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    server = Server(root, sub, subs, env=dict(os.environ))
    server.start()
    try:
        sent = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=60, check=False
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "== result: success" in sent.stdout
        files = server.wait_for_mail(1)
        assert b"with ESMTPSA" in files[0].read_bytes()
        # The default install's web admin and metrics, where init's output says.
        assert "web admin:   http://127.0.0.1:9480/" in out
        assert "metrics:     http://127.0.0.1:9465/metrics" in out
        login_page = _get("http://127.0.0.1:9480/login")
        assert 'name="code"' in login_page and "smtpgate admin add" in login_page, login_page
        scrape = _get("http://127.0.0.1:9465/metrics")
        assert 'smtpgate_messages_accepted_total{listener="submission"} 1.0' in scrape, scrape
    finally:
        server.stop()


def _get(url: str) -> str:
    """The body of a GET, retried while the endpoint starts (it may come after SMTP)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body: str = response.read().decode()
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def sh_blocks(title: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", section(title), re.MULTILINE | re.DOTALL)


@dataclass
class Clone:
    """A directory as `make run` leaves it: var/ from init, .venv the installed venv."""

    path: Path
    server: Server
    password: str

    def run(self, block: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """A README block as written, with the demo password and this server's port."""
        script = block.replace("'PASSWORD'", f"'{self.password}'").replace(
            "2587", str(self.server.submission)
        )
        env = {k: v for k, v in os.environ.items() if k != "SMTPGATE_CONFIG"}
        return subprocess.run(
            ["bash", "-e", "-c", script], cwd=self.path, input=stdin, capture_output=True,
            text=True, timeout=120, check=False, env=env,
        )


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Clone]:
    path = tmp_path / "smtpgate"
    path.mkdir()
    (path / ".venv").symlink_to(BIN.parent)
    sub, subs = free_port(), free_port()
    out = subprocess.run(
        [SMTPGATE, "init", "--dir", "var", "--submission", f"127.0.0.1:{sub}",
         "--submissions", f"127.0.0.1:{subs}"],
        cwd=path, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    password = re.search(r"password: (\S+)", out)
    assert password is not None
    server = Server(path / "var", sub, subs, env=dict(os.environ))
    server.start()
    yield Clone(path, server, password.group(1))
    server.stop()


def test_readme_send_commands_work_as_written(clone: Clone) -> None:
    blocks = sh_blocks("From nothing to a sent message")
    tester = next(b for b in blocks if "smtpgate test" in b)
    python = next(b for b in blocks if "smtplib" in b)

    sent = clone.run(tester)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    quoted = re.search(r"its last line is\s+`([^`]+)`", section("From nothing to a sent message"))
    assert quoted is not None, "the README quotes the tester's last line"
    assert sent.stdout.rstrip("\n").splitlines()[-1] == quoted.group(1)

    # The Python snippet: no input() from the heredoc it is itself read from.
    sent = clone.run(python)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    files = clone.server.wait_for_mail(2)
    assert b"Subject: hi" in b"".join(f.read_bytes() for f in files)
    listed = clone.run("ls var/mail/new/")
    assert {f.name for f in files} == set(listed.stdout.split())
    assert all(b"with ESMTPSA" in f.read_bytes() for f in files)


def test_readme_swaks_command_verifies_the_certificate(clone: Clone, tmp_path: Path) -> None:
    require_tool("swaks")
    (swaks,) = (b for b in sh_blocks("From nothing to a sent message") if b.startswith("swaks"))
    sent = clone.run(swaks)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    clone.server.wait_for_mail(1)
    # Against a CA that did not sign the server's certificate, the same command must
    # refuse to go on: without --tls-verify it would have sent the password anyway.
    write_self_signed(tmp_path / "other.pem", tmp_path / "other.key", "localhost")
    refused = clone.run(swaks.replace("var/tls/cert.pem", str(tmp_path / "other.pem")))
    assert refused.returncode != 0
    assert "AUTH" not in "".join(
        ln for ln in refused.stdout.splitlines() if ln.lstrip().startswith("->")
    )
    time.sleep(0.5)
    assert len(clone.server.delivered()) == 1


def test_readme_add_a_user_commands_run(clone: Clone) -> None:
    (block,) = sh_blocks("Add a user")
    done = clone.run(block, stdin="correct horse battery staple\n" * 2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "removed account alice@example.org" in done.stdout


def test_make_run_announces_the_listeners_of_the_config(tmp_path: Path) -> None:
    """Not 2587/2465 whatever the config says: the addresses come from the config."""
    var = tmp_path / "var"
    sub, subs = free_port(), free_port()
    subprocess.run(
        [SMTPGATE, "init", "--dir", str(var), "--submission", f"127.0.0.1:{sub}",
         "--submissions", f"127.0.0.1:{subs}"],
        capture_output=True, check=True, timeout=60,
    )
    venv = BIN.parent
    out_path = tmp_path / "make.out"
    with open(out_path, "wb") as out:
        # -o: the venv is installed already; do not let make reinstall it.
        make = subprocess.Popen(
            ["make", "--no-print-directory", "-o", f"{venv}/.installed", "run",
             f"VENV={venv}", f"VAR={var}"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    probe = Server(var, sub, subs, env={})
    try:
        deadline = time.monotonic() + 60
        while not probe._greets(sub, False):
            assert make.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.1)
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(timeout=30)
    text = out_path.read_text()
    assert f"  submission 127.0.0.1:{sub} starttls\n" in text
    assert f"  submissions 127.0.0.1:{subs} implicit\n" in text
    assert f"--server 127.0.0.1:{sub} --starttls" in text
    # Not the defaults init writes (a pid such as 22465 may well hold the digits).
    assert ":2587" not in text and ":2465" not in text


def test_doc_index_points_where_the_topics_are() -> None:
    index = section("Documentation")
    links = dict(re.findall(r"^- \[[^]]+\]\(([^)]+)\): (.*)$", index, re.MULTILINE))
    for target in links:
        assert (REPO / target).is_file(), target
    listed = {Path(t).name for t in links if t.startswith("docs/")}
    assert listed == {p.name for p in (REPO / "docs").glob("*.md")}
    for topic, heading in (
        ("app passwords", "### App passwords"),
        ("conditional access", "## Conditional access"),
        ("sender ownership", "## Sender ownership"),
        ("upgrades and backups", "## Upgrades and backups"),
        ("log rotation", "### Log rotation"),
        ("certificate renewal", "### Certificate renewal"),
    ):
        (page,) = [t for t, what in links.items() if topic in what.lower()]
        assert heading in (REPO / page).read_text(encoding="utf-8"), (topic, page)
