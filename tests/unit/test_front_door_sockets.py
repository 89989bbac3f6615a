"""`[[auth_listeners]]`: the config names the key, and the sockets are bound with
the permissions asked for, replacing only a socket file nobody listens on."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest

from smtpgate.config import parse_config
from smtpgate.errors import StartupError
from smtpgate.server.front_doors import bind_auth_sockets, close_auth_sockets

from .as_nobody import run_as_nobody
from .config_support import MINIMAL, config_dir, problems

BASE = MINIMAL


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return config_dir(tmp_path)


def door(**keys: str) -> str:
    return "[[auth_listeners]]\n" + "".join(f'{k} = "{v}"\n' for k, v in keys.items())




def test_auth_http_needs_an_upstream(base: Path) -> None:
    found = problems(BASE + door(protocol="auth_http", address="127.0.0.1:9143"), base)
    assert "auth_listeners.0.upstream" in found


def test_upstream_is_only_for_auth_http(base: Path) -> None:
    text = BASE + door(protocol="dovecot", address="127.0.0.1:9143", upstream="127.0.0.1:2587")
    assert "auth_listeners.0.upstream" in problems(text, base)


@pytest.mark.parametrize("upstream", ["localhost:2587", "mx.example.org:2587", "127.0.0.1:0"])
def test_upstream_must_be_an_ip_address_nginx_can_use(base: Path, upstream: str) -> None:
    # nginx reads Auth-Server with ngx_parse_addr: a host name there made every login
    # through nginx fail ("invalid server address", 451 4.3.2 to the client) while
    # config check said OK.
    text = BASE + door(protocol="auth_http", address="127.0.0.1:9143", upstream=upstream)
    assert "auth_listeners.0.upstream" in problems(text, base)


@pytest.mark.parametrize("upstream", ["127.0.0.1:2587", "[::1]:2587"])
def test_upstream_ip_addresses_are_accepted(base: Path, upstream: str) -> None:
    text = BASE + door(protocol="auth_http", address="127.0.0.1:9143", upstream=upstream)
    parse_config(text, base)


@pytest.mark.parametrize(
    ("keys", "bad"),
    [
        ({"protocol": "sasl", "address": "127.0.0.1:1"}, "auth_listeners.0.protocol"),
        ({"protocol": "dovecot", "address": "unix:relative/path"}, "auth_listeners.0.address"),
        ({"protocol": "dovecot", "address": "nowhere"}, "auth_listeners.0.address"),
        ({"protocol": "dovecot", "address": "unix:/x", "mode": "rw-rw----"}, "auth_listeners.0.mode"),
        ({"protocol": "dovecot", "address": "127.0.0.1:1", "user": "postfix"}, "auth_listeners.0.user"),
        ({"protocol": "dovecot", "address": "127.0.0.1:2587"}, "auth_listeners.0.address"),
    ],
)
def test_bad_front_door_names_the_key(base: Path, keys: dict[str, str], bad: str) -> None:
    assert bad in problems(BASE + door(**keys), base)


def test_unix_socket_gets_its_mode_and_a_stale_file_is_replaced(base: Path) -> None:
    path = base / "auth.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a file with nobody listening: what a killed server leaves
    cfg = parse_config(BASE + door(protocol="dovecot", address=f"unix:{path}", mode="0600"), base)
    socks = bind_auth_sockets(cfg)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
        # A second server must not steal a socket that is in use.
        with pytest.raises(StartupError) as e:
            bind_auth_sockets(cfg)
        assert e.value.key == "auth_listeners.0.address"
    finally:
        close_auth_sockets(cfg, socks)
    assert not path.exists()


def test_a_regular_file_is_never_removed(base: Path) -> None:
    path = base / "auth.sock"
    path.write_text("not a socket")
    cfg = parse_config(BASE + door(protocol="dovecot", address=f"unix:{path}"), base)
    with pytest.raises(StartupError):
        bind_auth_sockets(cfg)
    assert path.read_text() == "not a socket"


def _checked(text: str, base: Path) -> dict[str, tuple[str, str]]:
    from smtpgate.preflight import check_front_doors, loosenings

    cfg = parse_config(text, base)
    return {p.key: (p.severity, p.message) for p in check_front_doors(cfg) + loosenings(cfg)}


def test_config_check_finds_a_socket_serve_could_not_bind(base: Path) -> None:
    # config check said OK; serve then stopped with "cannot bind ...": the systemd
    # unit's ExecStartPre passed and the start failed.
    text = BASE + door(protocol="dovecot", address=f"unix:{base}/missing/auth")
    found = _checked(text, base)
    assert found["auth_listeners.0.address"][0] == "error"
    assert "missing" in found["auth_listeners.0.address"][1]
    text = BASE + door(protocol="dovecot", address=f"unix:{base}/auth",
                       group="no-such-group-here", user="no-such-user-here")
    found = _checked(text, base)
    assert found["auth_listeners.0.group"][0] == "error"
    assert found["auth_listeners.0.user"][0] == "error"
    assert not any(k.startswith("auth_listeners") for k in _checked(
        BASE + door(protocol="dovecot", address=f"unix:{base}/auth"), base))


def test_a_front_door_beyond_loopback_is_a_loosening(base: Path) -> None:
    found = _checked(BASE + door(protocol="dovecot", address="0.0.0.0:12345"), base)
    assert found["auth_listeners.0.address"][0] == "warning"
    for address in ("127.0.0.1:12345", "[::1]:12345"):
        assert "auth_listeners.0.address" not in _checked(
            BASE + door(protocol="dovecot", address=address), base)


def test_a_live_socket_nobody_may_connect_to_is_never_removed(base: Path) -> None:
    """Another service's socket in a directory smtpgate may write: a connect refused
    for permission (EACCES) says nothing about whether anyone listens; only a refused
    connection (ECONNREFUSED) marks a socket file a dead server left."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the server's side as another user")
    shared = Path(tempfile.mkdtemp(prefix="sgsock-", dir="/tmp"))
    try:
        shared.chmod(0o777)  # writable by all, not sticky: nobody may unlink in it
        path = shared / "auth"
        live = socket.socket(socket.AF_UNIX)
        live.bind(str(path))
        live.listen(1)
        path.chmod(0o600)  # the other service's, reachable only by its owner
        cfg = parse_config(BASE + door(protocol="dovecot", address=f"unix:{path}"), base)

        def bind() -> str:
            try:
                close_auth_sockets(cfg, bind_auth_sockets(cfg))
            except StartupError as e:
                return f"refused: {e.key}"
            return "bound"

        assert run_as_nobody(bind) == "refused: auth_listeners.0.address"
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # the other service still has its socket
        live.close()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_the_warning_says_what_a_policy_service_gives_away(base: Path) -> None:
    """A policy service checks no password: it said "check passwords in clear" of one
    too, when what whoever reaches it can do is spend any account's budget."""
    found = _checked(BASE + door(protocol="postfix_policy", address="0.0.0.0:10040"), base)
    message = found["auth_listeners.0.address"][1]
    assert "password" not in message and "hourly budget" in message, message
    found = _checked(BASE + door(protocol="postfix_policy", address=f"unix:{base}/policy",
                                 mode="0666"), base)
    message = found["auth_listeners.0.mode"][1]
    assert "password" not in message and "hourly budget" in message, message
    found = _checked(BASE + door(protocol="dovecot", address="0.0.0.0:12345"), base)
    assert "check passwords in clear" in found["auth_listeners.0.address"][1]


def test_a_socket_others_may_reach_or_replace_is_warned_about(base: Path) -> None:
    """Whoever can connect may check passwords for any address it names; whoever may
    write in the socket's directory may put a socket of their own there while
    smtpgate is down, and the MTA would take that one's OK for any password."""
    open_dir = base / "shared"
    open_dir.mkdir()
    open_dir.chmod(0o1777)  # as /tmp
    found = _checked(BASE + door(protocol="dovecot", address=f"unix:{open_dir}/auth"), base)
    severity, message = found["auth_listeners.0.address"]
    assert severity == "warning" and "others may write" in message
    found = _checked(BASE + door(protocol="dovecot", address=f"unix:{base}/auth",
                                 mode="0666"), base)
    severity, message = found["auth_listeners.0.mode"]
    assert severity == "warning" and "every local user" in message
    assert not any(k.startswith("auth_listeners") for k in _checked(
        BASE + door(protocol="dovecot", address=f"unix:{base}/auth", mode="0660"), base))


def test_an_upstream_listener_nginx_cannot_use_is_a_warning(base: Path) -> None:
    """nginx hands each session it authenticated to ``upstream`` with XCLIENT; a
    listener of this server that refuses it (no xclient_trusted, or not nginx's
    loopback address) or never greets plain SMTP (implicit TLS) made every login a
    success in the auth log and nginx's 451 to the client, with config check OK."""
    def found(listener: str, upstream: str) -> tuple[str, str] | None:
        text = (MINIMAL.replace('address = "127.0.0.1:2587"\ntls = "starttls"\n', listener)
                + door(protocol="auth_http", address="127.0.0.1:9143", upstream=upstream))
        return _checked(text, base).get("auth_listeners.0.upstream")

    plain = 'address = "127.0.0.1:2587"\ntls = "starttls"\n'
    refused = found(plain, "127.0.0.1:2587")
    assert refused is not None and refused[0] == "warning"
    assert "xclient_trusted is empty" in refused[1] and "listeners.0" in refused[1]
    other = found(plain + 'xclient_trusted = ["10.0.0.0/8"]\n', "127.0.0.1:2587")
    assert other is not None and "does not hold 127.0.0.1" in other[1]
    wildcard = found('address = "0.0.0.0:2587"\ntls = "starttls"\n', "127.0.0.1:2587")
    assert wildcard is not None and wildcard[0] == "warning"
    implicit = found('address = "127.0.0.1:2587"\ntls = "implicit"\n'
                     'xclient_trusted = ["127.0.0.1/32"]\n', "127.0.0.1:2587")
    assert implicit is not None and "implicit" in implicit[1]
    # The documented set-up, another port, and another host: nothing to say.
    trusting = plain + 'xclient_trusted = ["127.0.0.1/32"]\n'
    assert found(trusting, "127.0.0.1:2587") is None
    assert found(plain, "127.0.0.1:2588") is None
    assert found(plain, "10.0.0.5:2587") is None
    six = 'address = "[::1]:2587"\ntls = "starttls"\nxclient_trusted = ["::1/128"]\n'
    assert found(six, "[::1]:2587") is None


def test_trusted_proxies_without_proxy_protocol_is_a_warning(base: Path) -> None:
    """``trusted_proxies`` alone reads like an allowlist of who may connect, and did
    nothing: a door meant for one MTA host took anyone's connections, config check OK."""
    text = BASE + door(protocol="dovecot", address="127.0.0.1:12345") + (
        'trusted_proxies = ["10.0.0.5/32"]\n')
    found = _checked(text, base)["auth_listeners.0.trusted_proxies"]
    assert found[0] == "warning" and "proxy_protocol = true" in found[1]
    listener = MINIMAL.replace('tls = "starttls"\n', 'tls = "starttls"\n'
                               'trusted_proxies = ["10.0.0.5/32"]\n')
    from smtpgate.preflight import check_listeners
    keys = {p.key: p.severity for p in check_listeners(parse_config(listener, base))}
    assert keys["listeners.0.trusted_proxies"] == "warning"
    proxied = BASE + door(protocol="dovecot", address="127.0.0.1:12345") + (
        'trusted_proxies = ["10.0.0.5/32"]\nproxy_protocol = true\n')
    assert "auth_listeners.0.trusted_proxies" not in _checked(proxied, base)
    assert not any(k.endswith("trusted_proxies") for k in _checked(BASE, base))


@pytest.mark.parametrize("field", ["group", "user"])
def test_a_socket_owner_smtpgate_may_not_give_is_named_by_check_and_by_serve(
        base: Path, field: str) -> None:
    """Not root, smtpgate gives its socket only to a group it is a member of, never to
    another user (the systemd unit runs it as ``smtpgate``). With ``group`` set to
    another group, config check said OK and serve stopped at the bind naming
    ``auth_listeners.0.user``, a key the file did not even have."""
    import grp

    sockets = Path(tempfile.mkdtemp(prefix="sgown-", dir="/tmp"))
    try:
        if os.geteuid() == 0:
            os.chown(sockets, 65534, 65534)  # nobody's directory: the bind itself works
        owner = grp.getgrgid(0).gr_name if field == "group" else "root"
        cfg = parse_config(BASE + door(protocol="dovecot", address=f"unix:{sockets}/auth",
                                       **{field: owner}), base)
        from smtpgate.preflight import check_front_doors

        def check_and_bind() -> list[str]:
            found = [f"{p.severity} {p.key}" for p in check_front_doors(cfg)]
            try:
                close_auth_sockets(cfg, bind_auth_sockets(cfg))
            except StartupError as e:
                return [*found, f"serve {e.key}"]
            return [*found, "serve bound"]  # pragma: no cover - the defect

        assert run_as_nobody(check_and_bind) == [
            f"error auth_listeners.0.{field}", f"serve auth_listeners.0.{field}"]
        assert not (sockets / "auth").exists()
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
