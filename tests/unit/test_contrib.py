"""The contrib files: shipped in the package, printed by `smtpgate contrib`, the same
files as the repository's contrib/, and all agreeing with the production layout
`smtpgate init` writes (config in /etc/smtpgate, state in /var/lib/smtpgate, logs
in /var/log/smtpgate, the service user smtpgate)."""

from __future__ import annotations

import grp
import os
import re
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.cli.contrib_cmd import FILES, contrib_text
from smtpgate.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
PACKAGED = REPO / "src" / "smtpgate" / "contrib"


@pytest.mark.parametrize("name", sorted(FILES))
def test_contrib_prints_the_packaged_file(name: str) -> None:
    result = CliRunner().invoke(cli, ["contrib", name])
    assert result.exit_code == 0
    assert result.output == (PACKAGED / FILES[name][0]).read_text(encoding="utf-8")
    assert result.output == contrib_text(name)


def test_contrib_without_a_name_lists_them_with_their_places() -> None:
    result = CliRunner().invoke(cli, ["contrib"])
    assert result.exit_code == 0
    for name, (_, target) in FILES.items():
        assert re.search(rf"^{re.escape(name)} +{re.escape(target)}$", result.output, re.MULTILINE)
    assert CliRunner().invoke(cli, ["contrib", "nginx"]).exit_code == 2


def test_repository_contrib_is_the_packaged_directory() -> None:
    """One copy only: the repository's contrib/ must not drift from the package's."""
    packaged = sorted(p.relative_to(PACKAGED) for p in PACKAGED.rglob("*") if p.is_file())
    root = sorted(p.relative_to(REPO / "contrib") for p in (REPO / "contrib").rglob("*") if p.is_file())
    assert packaged == root
    assert {Path(f) for f, _ in FILES.values()} == set(packaged)
    for rel in packaged:
        assert (REPO / "contrib" / rel).read_bytes() == (PACKAGED / rel).read_bytes()


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in contrib_text("systemd").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """init's production layout, under a temporary root instead of /."""
    root = tmp_path_factory.mktemp("root")
    result = CliRunner().invoke(cli, [
        "init", "--dir", f"{root}/etc/smtpgate", "--state-dir", f"{root}/var/lib/smtpgate",
        "--log-dir", f"{root}/var/log/smtpgate", "--no-demo",
    ])
    assert result.exit_code == 0, result.output
    return root, tomllib.loads((root / "etc/smtpgate/smtpgate.toml").read_text())


def test_unit_matches_the_layout(production: tuple[Path, dict[str, object]]) -> None:
    root, cfg = production
    unit = unit_settings()
    assert unit["User"] == ["smtpgate"] and unit["Group"] == ["smtpgate"]
    assert unit["Environment"] == ["SMTPGATE_CONFIG=/etc/smtpgate/smtpgate.toml"]
    # The CLI's reload waits for the outcome and exits 1 on a refused reload, so
    # `systemctl reload` reports it (kill -HUP could not); the same program as serve.
    assert unit["ExecReload"] == ["/opt/smtpgate/.venv/bin/smtpgate reload"]
    assert unit["ExecStart"] == ["/opt/smtpgate/.venv/bin/smtpgate serve"]
    # Writable: exactly the state and log directories init made (ProtectSystem=strict).
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["StateDirectory"] == ["smtpgate"] and unit["LogsDirectory"] == ["smtpgate"]
    assert "ReadWritePaths" not in unit
    accounts = cfg["accounts"]
    assert isinstance(accounts, dict)
    state = Path(accounts["database"]).parent
    assert state == root / "var/lib/smtpgate"
    for section, key in (("queue", "spool"), ("delivery", "maildir"), ("guard", "database")):
        table = cfg[section]
        assert isinstance(table, dict)
        assert Path(table[key]).is_relative_to(state), (section, key)


def test_a_configuration_error_stops_the_unit_instead_of_restarting_it() -> None:
    # The unit ran `config check` as ExecStartPre: its exit status 1 for an error is
    # not in RestartPreventExitStatus, and Restart= applies to ExecStartPre too, so a
    # broken config was started again and again until systemd's start limit. serve
    # runs the same checks and exits 2 for them, which the unit does not restart.
    unit = unit_settings()
    assert unit["Restart"] == ["on-failure"]
    assert "2" in unit["RestartPreventExitStatus"][0].split()
    for pre in unit.get("ExecStartPre", []):
        assert "config check" not in pre, pre
    assert unit["ExecStart"] == ["/opt/smtpgate/.venv/bin/smtpgate serve"]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` (Debian's systemd, as on the machines the unit is
    for): a misspelt directive or a bad value is only a warning in the journal when
    the unit loads, and the setting silently does not apply. The program's path is
    replaced, since the layout's venv is not on this machine."""
    unit = (PACKAGED / FILES["systemd"][0]).read_text(encoding="utf-8")
    assert "/opt/smtpgate/.venv/bin/smtpgate serve" in unit
    path = tmp_path / "smtpgate.service"
    path.write_text(unit.replace("/opt/smtpgate/.venv/bin/smtpgate ", "/bin/true "))
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done


def test_fail2ban_jail_and_logrotate_read_the_auth_log_init_configures(
    production: tuple[Path, dict[str, object]],
) -> None:
    root, cfg = production
    auth = cfg["auth"]
    assert isinstance(auth, dict)
    log_file = "/" + str(Path(auth["log_file"]).relative_to(root))
    assert log_file == "/var/log/smtpgate/auth.log"
    jail = {
        k.strip(): v.strip()
        for k, _, v in (ln.partition("=") for ln in contrib_text("fail2ban-jail").splitlines())
        if v and not k.startswith("#")
    }
    assert jail["logpath"] == log_file and jail["filter"] == "smtpgate"
    assert "filter.d/smtpgate.conf" in FILES["fail2ban-filter"][1]
    rotate = contrib_text("logrotate")
    (pattern,) = re.findall(r"^(/\S+) \{$", rotate, re.MULTILINE)
    assert Path(log_file).match(pattern)
    # After the rename the server must reopen the file (docs/operations.md).
    assert re.search(r"postrotate\n\s+systemctl kill --signal=USR1 --kill-who=main smtpgate", rotate)


def test_certbot_hook_installs_into_the_files_tls_names(
    production: tuple[Path, dict[str, object]],
) -> None:
    _root, cfg = production
    tls = cfg["tls"]
    assert isinstance(tls, dict)
    hook = contrib_text("certbot-hook")
    tls_dir = re.search(r"^TLS_DIR=\$\{SMTPGATE_TLS_DIR:-(\S+)\}$", hook, re.MULTILINE)
    assert tls_dir is not None
    assert Path(tls_dir.group(1)) / "cert.pem" == Path("/etc/smtpgate") / tls["cert"]
    assert Path(tls_dir.group(1)) / "key.pem" == Path("/etc/smtpgate") / tls["key"]
    assert "systemctl reload" in hook or "try-reload-or-restart" in hook


def test_certbot_hook_copies_the_renewed_pair_and_reloads(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.write_text(contrib_text("certbot-hook"))
    hook.chmod(0o755)
    domain = re.search(r"^DOMAIN=(\S+)$", contrib_text("certbot-hook"), re.MULTILINE)
    assert domain is not None
    lineage = tmp_path / "live" / domain.group(1)
    lineage.mkdir(parents=True)
    (lineage / "fullchain.pem").write_text("CHAIN\n")
    (lineage / "privkey.pem").write_text("KEY\n")
    (lineage / "privkey.pem").chmod(0o600)
    tls = tmp_path / "tls"
    tls.mkdir()
    marker = tmp_path / "reloaded"
    env = {
        **os.environ,
        "SMTPGATE_TLS_DIR": str(tls),
        "SMTPGATE_GROUP": grp.getgrgid(os.getegid()).gr_name,
        "SMTPGATE_RELOAD": f"touch {marker}",
    }
    # Another certificate's renewal: nothing happens.
    other = tmp_path / "live" / "www.example.org"
    other.mkdir()
    subprocess.run([str(hook)], env={**env, "RENEWED_LINEAGE": str(other)}, check=True)
    assert not list(tls.iterdir()) and not marker.exists()
    subprocess.run([str(hook)], env={**env, "RENEWED_LINEAGE": str(lineage)}, check=True)
    assert (tls / "cert.pem").read_text() == "CHAIN\n"
    assert (tls / "key.pem").read_text() == "KEY\n"
    assert stat.S_IMODE((tls / "key.pem").stat().st_mode) == 0o640
    assert stat.S_IMODE((tls / "cert.pem").stat().st_mode) == 0o644
    assert sorted(p.name for p in tls.iterdir()) == ["cert.pem", "key.pem"]
    assert marker.exists()


def test_operations_doc_shows_the_logrotate_file_as_shipped() -> None:
    doc = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"^```\n(/var/log/smtpgate/.*?)^```", doc, re.MULTILINE | re.DOTALL)
    shipped = [ln for ln in contrib_text("logrotate").splitlines() if not ln.startswith("#")]
    assert block.splitlines() == shipped


def test_the_dashboard_counts_the_guards_shared_blocks_once_per_cluster() -> None:
    """``smtpgate_guard_blocks_active`` and ``smtpgate_guard_accounts_locked`` are read
    from the guard state at each scrape: with the state in Redis every node reports the
    cluster's blocks (docs/scale-out.md). The dashboard summed them over the scraped
    nodes, so two nodes showed each lockout twice; ``max`` is the cluster's count, and
    one node's as before."""
    import json

    exprs = [t["expr"] for p in json.loads(contrib_text("grafana"))["panels"]
             for t in p.get("targets", [])]
    shared = [e for e in exprs
              if re.search(r"\bsmtpgate_guard_(blocks_active|accounts_locked)\b", e)]
    assert shared, exprs
    assert all(e.startswith("max") for e in shared), shared
