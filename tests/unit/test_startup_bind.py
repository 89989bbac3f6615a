"""The parent's check that the listeners' addresses are free (issue 16): with
workers it binds without listening, so no connection is accepted by a socket
nobody serves; a busy address is still found."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from smtpgate.config import Config, ListenerConfig, parse_config
from smtpgate.errors import StartupError
from smtpgate.server import app
from smtpgate.tls.certs import write_self_signed


def _config(tmp_path: Path, port: int, workers: int) -> Config:
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "localhost")
    text = (
        f'[[listeners]]\nname = "submission"\naddress = "127.0.0.1:{port}"\ntls = "starttls"\n'
        f'[tls]\ncert = "cert.pem"\nkey = "key.pem"\n[server]\nworkers = {workers}\n'
    )
    return parse_config(text, tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_bind_without_listen_refuses_connections(tmp_path: Path) -> None:
    port = _free_port()
    socks = app.bind_sockets(_config(tmp_path, port, 2), listen=False)
    try:
        assert socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
        with socket.socket() as c:
            c.bind(("127.0.0.2", 0))  # never the port itself: no self-connect
            assert c.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
    finally:
        for s in socks:
            s.close()


def test_a_bind_without_listen_still_finds_a_busy_address(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        with pytest.raises(StartupError, match="cannot bind"):
            app.bind_sockets(_config(tmp_path, port, 2), listen=False)


@pytest.mark.parametrize(("workers", "listens"), [(2, False), (1, True)])
def test_run_listens_itself_only_when_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, listens: bool
) -> None:
    calls: list[dict[str, object]] = []

    def recorder(cfg: Config, **kwargs: object) -> list[socket.socket]:
        calls.append(kwargs)
        raise StartupError("listeners.0.address", "stop here")

    monkeypatch.setattr(app, "bind_sockets", recorder)
    with pytest.raises(StartupError, match="stop here"):
        app.run(_config(tmp_path, _free_port(), workers))
    assert calls == [{"listen": listens}]


@pytest.mark.parametrize("reuse_port", [False, True])
@pytest.mark.parametrize("second", ["localhost:{port}", "0.0.0.0:{port}", "127.0.0.1:0{port}"])
def test_two_listeners_on_one_port_are_refused_where_the_kernel_lets_both_bind(
    tmp_path: Path, reuse_port: bool, second: str
) -> None:
    """The parent's check binds without listening (SO_REUSEADDR lets a second socket
    bind then) and the workers bind with SO_REUSEPORT: neither fails in the kernel,
    and a STARTTLS and an implicit-TLS listener would share the port's connections."""
    port = _free_port()
    cfg = _config(tmp_path, port, 2)
    other = ListenerConfig(name="submissions", address=second.format(port=port), tls="implicit")
    cfg = cfg.model_copy(update={"listeners": [*cfg.listeners, other]})
    with pytest.raises(StartupError, match="both bind port") as raised:
        app.bind_sockets(cfg, listen=False, reuse_port=reuse_port)
    assert raised.value.key == "listeners.1.address"
