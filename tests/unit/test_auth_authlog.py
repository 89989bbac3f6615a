"""Auth log: record fields, one JSON line per write, control-character neutralisation."""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from pathlib import Path

import pytest

from smtpgate.auth.authlog import MAX_FIELD_CHARS, AuthLog, neutralize


def fixed_clock() -> str:
    return "2030-01-02T03:04:05.678Z"


def write_one(log: AuthLog, **over: object) -> None:
    fields: dict[str, object] = {
        "listener": "submission",
        "client_ip": "192.0.2.7",
        "client_port": 50123,
        "tls": "TLSv1.3",
        "mechanism": "PLAIN",
        "username": "alice@example.org",
        "result": "failure",
        "reason": "bad password",
        "session": "s-1",
    }
    fields.update(over)
    log.write(log.make_record(**fields))  # type: ignore[arg-type]


def test_record_fields(tmp_path: Path) -> None:
    path = tmp_path / "auth.log"
    log = AuthLog(path, clock=fixed_clock)
    try:
        write_one(log)
        write_one(log, tls=None, result="success", reason="")
    finally:
        log.close()
    lines = path.read_text("utf-8").splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first == {
        "time": "2030-01-02T03:04:05.678Z",
        "listener": "submission",
        "client_ip": "192.0.2.7",
        "client_port": 50123,
        "tls": "TLSv1.3",
        "mechanism": "PLAIN",
        "username": "alice@example.org",
        "result": "failure",
        "reason": "bad password",
        "session": "s-1",
        "front_door": "smtp",
    }
    assert json.loads(lines[1])["tls"] is None


def test_default_time_is_iso8601_utc(tmp_path: Path) -> None:
    path = tmp_path / "auth.log"
    log = AuthLog(path)
    try:
        write_one(log)
    finally:
        log.close()
    stamp = json.loads(path.read_text("utf-8"))["time"]
    assert stamp.endswith("Z") and stamp[10] == "T"


def test_control_characters_neutralised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """JSON's own escapes, once: the value read back is the one the client sent,
    and no character that forges a line or drives a terminal is in the file."""
    path = tmp_path / "auth.log"
    log = AuthLog(path, clock=fixed_clock)
    evil = ("eve\r\n2030-01-01 auth success user=admin\x1b[31m\x00\x7f\x85\u2028\u202e\\"
            "\U000e0041\ud800")
    try:
        with caplog.at_level(logging.INFO, logger="smtpgate.auth"):
            write_one(log, username=evil, mechanism="PL\nAIN", reason="r\tx")
    finally:
        log.close()
    raw = path.read_bytes()
    assert raw.count(b"\n") == 1  # one record, one line
    text = raw.decode("utf-8")
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs")
               for c in text[:-1])
    rec = json.loads(raw)
    assert rec["username"] == evil
    assert rec["mechanism"] == "PL\nAIN"
    assert rec["reason"] == "r\tx"
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "smtpgate.auth"]
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs") for c in logged)
    assert logged.startswith("auth failure listener=submission client=192.0.2.7:50123")
    assert " mech=PL\\x0aAIN " in logged  # unquoted there: neutralised
    quoted = logged.split(" user=", 1)[1].split(" reason=", 1)[0]
    assert json.loads(quoted) == evil


def test_a_backslash_in_a_login_name_is_escaped_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``a\\b@localhost`` (a valid local part) is ``"a\\\\b@localhost"`` in the JSON
    line and in the server log's quoted user=, read back as the name itself: it was
    escaped by ``neutralize`` and then by JSON, two backslashes where one was sent."""
    path = tmp_path / "auth.log"
    log = AuthLog(path, clock=fixed_clock)
    try:
        with caplog.at_level(logging.INFO, logger="smtpgate.auth"):
            write_one(log, username="a\\b@localhost", reason='says "no\\"')
    finally:
        log.close()
    raw = path.read_text("utf-8")
    assert '"username": "a\\\\b@localhost"' in raw
    assert json.loads(raw)["username"] == "a\\b@localhost"
    assert json.loads(raw)["reason"] == 'says "no\\"'
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "smtpgate.auth"]
    assert ' user="a\\\\b@localhost" reason="says \\"no\\\\\\"" ' in logged


def test_neutralize_truncates_long_values() -> None:
    out = neutralize("a" * 10_000)
    assert out == "a" * MAX_FIELD_CHARS + "…"
    assert neutralize("plain ascii ü 漢字") == "plain ascii ü 漢字"
    assert neutralize("\ud800") == "\\ud800"


def test_unknown_result_is_a_bug(tmp_path: Path) -> None:
    log = AuthLog(None)
    with pytest.raises(ValueError):
        write_one(log, result="ok")


def test_logger_levels(caplog: pytest.LogCaptureFixture) -> None:
    log = AuthLog(None)
    with caplog.at_level(logging.INFO, logger="smtpgate.auth"):
        write_one(log, result="success")
        write_one(log, result="tempfail")
        write_one(log, result="cancelled")
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.INFO, logging.WARNING, logging.INFO]


def test_shared_file_appends_whole_lines(tmp_path: Path) -> None:
    """Two writers (as two processes would) append without clobbering each other."""
    path = tmp_path / "auth.log"
    a, b = AuthLog(path), AuthLog(path)
    try:
        for i in range(50):
            write_one(a, session=f"a{i}", username="x" * 300)
            write_one(b, session=f"b{i}")
    finally:
        a.close()
        b.close()
    sessions = [json.loads(line)["session"] for line in path.read_text("utf-8").splitlines()]
    assert len(sessions) == 100 and len(set(sessions)) == 100


def test_write_error_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = AuthLog(tmp_path / "auth.log")
    assert log._fd is not None
    os.close(log._fd)
    log._fd = os.open(os.devnull, os.O_RDONLY)  # writes now fail with EBADF
    try:
        with caplog.at_level(logging.ERROR, logger="smtpgate.auth"):
            write_one(log)
            write_one(log)
    finally:
        log.close()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # reported once, not per record


def test_reopen_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "auth.log"
    log = AuthLog(path)
    try:
        write_one(log, session="before")
        path.rename(tmp_path / "auth.log.1")
        log.reopen()
        write_one(log, session="after")
    finally:
        log.close()
        log.close()
    assert json.loads(path.read_text("utf-8"))["session"] == "after"


def test_every_ascii_character_is_escaped_exactly_when_its_category_says_so() -> None:
    """The printable-ASCII shortcut (no per-character look-up) changes no output."""
    for o in range(128):
        c = chr(o)
        escaped = c == "\\" or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")
        assert (neutralize(f"a{c}b") != f"a{c}b") == escaped, repr(c)
        assert neutralize(f"a{c}b").isprintable()


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """The next os.write of the auth log takes ``room`` bytes, then fails as a full
    disk does: a short write if any byte fitted, ENOSPC if none."""
    real_write = os.write
    left = [room]

    def write(fd: int, data: bytes) -> int:
        if left[0] <= 0:
            raise OSError(28, "No space left on device")
        n = real_write(fd, data[: left[0]])
        left[0] -= n
        return n

    monkeypatch.setattr("smtpgate.auth.authlog.os.write", write)


def test_record_cut_short_by_a_full_disk_leaves_no_broken_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record the disk took only in part is cut off again: the next record, from
    this process or another, is a line of its own (it used to be glued to the half
    record, and both were lost to every reader of the JSON lines)."""
    path = tmp_path / "auth.log"
    a, b = AuthLog(path), AuthLog(path)
    try:
        write_one(a, session="before")
        with monkeypatch.context() as m:
            _disk_full_after(m, 40)
            write_one(a, session="cut")
            write_one(b, session="refused")
        write_one(b, session="after-b")
        write_one(a, session="after-a")
    finally:
        a.close()
        b.close()
    lines = [line for line in path.read_text("utf-8").splitlines() if line]
    assert [json.loads(line)["session"] for line in lines] == ["before", "after-b", "after-a"]


def test_half_record_of_another_writer_is_ended_by_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the half record cannot be cut off (another process wrote it, and only
    its own writer may truncate), the next record of a writer that saw the disk full
    starts on a new line."""
    path = tmp_path / "auth.log"
    log = AuthLog(path)
    try:
        with monkeypatch.context() as m:
            _disk_full_after(m, 0)
            write_one(log, session="refused")
        with path.open("ab") as other:  # another process's record, cut short
            other.write(b'{"time": "2030-01-02T03:04:05.678Z", "list')
        write_one(log, session="after")
    finally:
        log.close()
    last = path.read_text("utf-8").splitlines()[-1]
    assert json.loads(last)["session"] == "after"


@pytest.mark.parametrize(("address", "shown"), [
    ("2001:db8::7", "client=[2001:db8::7]:8080 "),
    ("192.0.2.7", "client=192.0.2.7:8080 "),
])
def test_the_readable_line_brackets_an_ipv6_client_address(
        address: str, shown: str, caplog: pytest.LogCaptureFixture) -> None:
    """Found by the h27authlog review: ``client=2001:db8::7:8080`` on stderr (the
    journal) is one valid IPv6 address; the port was not to be told apart."""
    caplog.set_level(logging.INFO, logger="smtpgate.auth")
    write_one(AuthLog(None, clock=fixed_clock), client_ip=address, client_port=8080)
    assert shown in caplog.records[-1].getMessage()
