"""A spool file system short of space: MAIL is answered 452 4.3.1 before the client
sends its message (queue.min_free_space, queue/space.py), as a default install runs."""

from __future__ import annotations

import os
import smtplib
import time
from pathlib import Path

from .conftest import PASSWORD, USER, make_server


def test_mail_is_452_4_3_1_while_the_spool_has_less_than_the_reserve_free(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "srv")
    st = os.statvfs(tmp_path)
    # More than the real file system has free: the server must find it short.
    reserve = st.f_bavail * st.f_frsize + 10**12
    text = srv.config.read_text()
    assert "[queue]\n" in text
    srv.config.write_text(text.replace("[queue]\n", f"[queue]\nmin_free_space = {reserve}\n", 1))
    srv.add_user(USER, PASSWORD)
    srv.start()
    try:
        with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, timeout=20,
                              context=srv.client_context()) as s:
            s.login(USER, PASSWORD)
            code, text_b = s.mail(USER)
            assert (code, text_b) == (452, b"4.3.1 Insufficient system storage")
            code, _ = s.mail(USER, ["SIZE=1000"])
            assert code == 452
            # The session goes on: the client keeps its message and may try later.
            assert s.noop()[0] == 250
        deadline = time.monotonic() + 10
        while "queue.min_free_space" not in srv.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = srv.log_text()
        assert "under the" in log and "kept in reserve (queue.min_free_space)" in log
        assert list((srv.root / "spool" / "queue").glob("*.msg")) == []
    finally:
        assert srv.stop() == 0


def test_with_room_a_declared_size_over_the_free_space_is_still_refused(tmp_path: Path) -> None:
    # A reserve of 1 MB and a size limit larger than the disk: a SIZE the disk
    # could not hold is refused up front (RFC 1870 §6.2), a normal message goes through.
    srv = make_server(tmp_path / "srv")
    text = srv.config.read_text()
    assert "[limits]" not in text and "[queue]\n" in text
    text = text.replace("[queue]\n", "[queue]\nmin_free_space = 1000000\n", 1)
    srv.config.write_text(text + "\n[limits]\nmax_message_size = 10000000000000\n")
    srv.add_user(USER, PASSWORD)
    srv.start()
    try:
        st = os.statvfs(tmp_path)
        free = st.f_bavail * st.f_frsize
        with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, timeout=20,
                              context=srv.client_context()) as s:
            s.login(USER, PASSWORD)
            assert s.mail(USER, [f"SIZE={free + 10**11}"])[0] == 452
            assert s.rset()[0] == 250
            assert s.sendmail(USER, ["bob@example.net"],
                              f"From: {USER}\r\nSubject: room\r\n\r\nhi\r\n") == {}
    finally:
        assert srv.stop() == 0
