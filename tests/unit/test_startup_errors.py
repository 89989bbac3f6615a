"""Start-up errors are typed: library code raises `StartupError(key, message, hint)`,
the supervisor maps it, and only ``serve`` turns it into a line and exit status 2."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.config import Config, parse_config
from smtpgate.errors import StartupError
from smtpgate.queue.factory import DeliverySetupError, make_deliverer
from smtpgate.server.app import bind_sockets, check_before_binding
from smtpgate.server.supervisor import (
    EXIT_CONFIG,
    EXIT_STARTUP,
    ChildSpec,
    Launch,
    StatusWriter,
    Supervisor,
)
from smtpgate.tls.certs import write_self_signed


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors.append(record.getMessage())


@pytest.fixture
def records() -> Iterator[Records]:
    logger = logging.getLogger("smtpgate")
    handler = Records()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _config(tmp_path: Path, extra: str = "", address: str = "127.0.0.1:0") -> Config:
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "localhost")
    text = (
        f'[[listeners]]\nname = "submission"\naddress = "{address}"\ntls = "starttls"\n'
        '[tls]\ncert = "cert.pem"\nkey = "key.pem"\n' + extra
    )
    return parse_config(text, tmp_path)


def test_the_line_names_the_key_the_problem_and_the_fix() -> None:
    e = StartupError("tls.key", "permission denied", "chmod 0640 it")
    assert str(e) == "tls.key: permission denied; chmod 0640 it"
    assert str(StartupError("server.pid_file", "cannot write x")) == "server.pid_file: cannot write x"


def test_a_delivery_set_up_error_is_a_startup_error_with_its_key(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        '[delivery]\nmode = "relay"\nrelay_host = "127.0.0.1"\nrelay_user = "u"\n'
        'relay_password_file = "empty"\n',
    )
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(StartupError) as err:
        make_deliverer(cfg)
    assert isinstance(err.value, DeliverySetupError)
    assert err.value.key == "delivery.relay_password_file"
    assert err.value.hint
    with pytest.raises(StartupError) as err:
        check_before_binding(cfg)
    assert err.value.key == "delivery.relay_password_file"


def test_a_busy_address_is_a_startup_error_naming_the_listener_key(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        cfg = _config(tmp_path, address=f"127.0.0.1:{port}")
        with pytest.raises(StartupError) as err:
            bind_sockets(cfg)
    finally:
        holder.close()
    assert err.value.key == "listeners.0.address"
    assert "cannot bind" in err.value.message and "Address already in use" in err.value.message
    assert "another server" in err.value.hint


def _fails_to_bind() -> Launch:
    raise StartupError("listeners.0.address", "listener 'submission' cannot bind 127.0.0.1:1")


def test_a_worker_that_cannot_bind_is_a_failed_start_not_a_crash(records: Records) -> None:
    """Before: `prepare` raising StartupError escaped `Supervisor.run` as a traceback."""
    code = Supervisor([ChildSpec("worker 1", "worker", _fails_to_bind)]).run()
    assert code == EXIT_STARTUP
    assert records.errors == [
        "cannot start worker 1: listeners.0.address: listener 'submission' cannot bind 127.0.0.1:1"
    ]


def test_a_restart_that_cannot_bind_counts_as_a_failure(records: Records) -> None:
    starts = 0

    def serves_then_dies(status: StatusWriter) -> int:
        status.ready()
        time.sleep(0.05)
        return 7

    def prepare() -> Launch:
        nonlocal starts
        starts += 1
        if starts > 1:
            return _fails_to_bind()
        return Launch(serves_then_dies)

    sup = Supervisor([ChildSpec("worker 1", "worker", prepare)], backoff_initial=0.01,
                     backoff_max=0.02, give_up_failures=3, give_up_window=60)
    assert sup.run() == EXIT_STARTUP
    assert starts == 3
    assert sum(m.startswith("cannot start worker 1: listeners.0.address") for m in records.errors) == 2
    assert records.errors[-1].startswith("giving up: 3 process failures")


def test_a_child_failing_with_a_startup_error_ends_the_server_with_status_2(
    records: Records,
) -> None:
    def body(status: StatusWriter) -> int:
        raise StartupError("accounts.database", "written by a newer smtpgate", "upgrade")

    code = Supervisor([ChildSpec("worker 1", "worker", lambda: Launch(body))]).run()
    assert code == EXIT_CONFIG
    assert len(records.errors) == 1
    assert records.errors[0].startswith("cannot start: worker 1 (pid ")
    assert "exited with status 2: accounts.database: written by a newer smtpgate; upgrade" in (
        records.errors[0]
    )


def test_the_systemd_unit_does_not_restart_on_a_config_error() -> None:
    unit = (Path(__file__).resolve().parents[2] / "contrib" / "smtpgate.service").read_text()
    assert f"\nRestartPreventExitStatus={EXIT_CONFIG}\n" in unit
    assert "\nRestart=on-failure\n" in unit


def test_the_systemd_unit_waits_longer_than_serve_itself_on_stop() -> None:
    """Before: TimeoutStopSec=30, while serve waits shutdown_grace (10 s) and then
    30 s more before killing a child that has not stopped, naming it in its log;
    systemd killed everything first, without saying which child hung."""
    import re

    from smtpgate.config import ServerConfig

    unit = (Path(__file__).resolve().parents[2] / "contrib" / "smtpgate.service").read_text()
    m = re.search(r"\nTimeoutStopSec=(\d+)\n", unit)
    assert m is not None
    assert int(m.group(1)) > ServerConfig().shutdown_grace + 30
