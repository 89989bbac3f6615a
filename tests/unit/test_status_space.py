"""The spool disk line of `smtpgate status` (cli/status_cmd.py)."""

from __future__ import annotations

from smtpgate.cli.status_cmd import _space


def test_the_line_says_when_mail_is_being_refused_for_want_of_space() -> None:
    assert _space(61_234_000_000, 52_500_000) == (
        "61234 MB free, 52 MB kept in reserve (queue.min_free_space)")
    assert _space(40_000_000, 52_500_000).endswith(
        ": MAIL is answered 452 4.3.1 until there is room")
    assert _space(0, 0) == "0 MB free, 0 MB kept in reserve (queue.min_free_space)"  # no check
    assert _space(None, 52_500_000).startswith("free space unreadable")
