"""Report figures from a known list of auth-log records."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from smtpgate.policy.report import Thresholds, build_report, read_records


def rec(t: str, ip: str, user: str, result: str, mech: str = "PLAIN", reason: str = "") -> dict[str, object]:
    return {"time": f"2026-01-01T{t}.000Z", "listener": "submission", "client_ip": ip, "client_port": 1,
            "tls": "TLSv1.3", "mechanism": mech, "username": user, "result": result,
            "reason": reason, "session": "s"}


RECORDS = [
    rec("00:00:00", "192.0.2.1", "old@x.org", "failure"),  # before --since
    rec("10:00:00", "192.0.2.1", "a@x.org", "success"),
    rec("10:00:01", "192.0.2.1", "a@x.org", "success", "SCRAM-SHA-256"),
    rec("10:00:02", "192.0.2.2", "b@x.org", "success", "LOGIN", "app password 'phone'"),
    rec("10:00:03", "192.0.2.2", "b@x.org", "success", "CRAM-MD5"),
    *[rec(f"10:01:0{i}", "198.51.100.7", "a@x.org", "failure", reason="bad password") for i in range(3)],
    *[rec(f"10:02:0{i}", "203.0.113.5", f"u{i}@x.org", "failure", reason="unknown user") for i in range(4)],
    rec("10:03:00", "203.0.113.5", "u9@x.org", "tempfail", reason="blocked: address blocked until x"),
    rec("10:03:01", "192.0.2.3", "c@x.org", "tempfail", reason="account database: disk I/O error"),
    rec("10:03:02", "192.0.2.3", "c@x.org", "cancelled", reason="client cancelled"),
    rec("10:03:03", "192.0.2.4", "", "failure", reason="PLAIN: invalid base64"),
]


def test_exact_figures() -> None:
    r = build_report(RECORDS, since=datetime(2026, 1, 1, 1, tzinfo=UTC),
                     thresholds=Thresholds(brute_force_failures=3, spray_accounts=4))
    assert r["totals"] == {"attempts": 15, "success": 4, "failure": 8, "blocked": 1,
                           "tempfail": 1, "cancelled": 1, "refused": 0}
    assert r["accounts"]["a@x.org"] == {"success": 2, "failure": 3, "blocked": 0}
    assert r["accounts"]["u9@x.org"] == {"success": 0, "failure": 0, "blocked": 1}
    assert "old@x.org" not in r["accounts"] and "" not in r["accounts"]
    assert r["mechanisms"] == {"CRAM-MD5": 1, "LOGIN": 1, "PLAIN": 1, "SCRAM-SHA-256": 1}
    assert r["legacy_mechanism_users"] == {"a@x.org": ["PLAIN"], "b@x.org": ["CRAM-MD5", "LOGIN"]}
    assert r["app_password_logins"] == {"b@x.org": {"phone": 1}}
    assert r["top_failing_addresses"] == [
        {"address": "203.0.113.5", "failures": 4, "accounts": 4},
        {"address": "198.51.100.7", "failures": 3, "accounts": 1},
        {"address": "192.0.2.4", "failures": 1, "accounts": 0},
    ]
    assert r["episodes"]["brute_force"] == [{
        "address": "198.51.100.7", "account": "a@x.org", "failures": 3,
        "first": "2026-01-01T10:01:00.000Z", "last": "2026-01-01T10:01:02.000Z",
    }]
    assert [(e["address"], e["accounts"]) for e in r["episodes"]["spraying"]] == [("203.0.113.5", 4)]
    assert r["first_record"] == "2026-01-01T10:00:00.000Z"


def test_read_records_skips_garbage(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.write_text(json.dumps(RECORDS[1]) + "\nnot json\n[1, 2]\n" + json.dumps(RECORDS[2]) + "\n")
    assert list(read_records([log, tmp_path / "missing.log"])) == RECORDS[1:3]


def test_read_records_reads_rotated_gzip_files(tmp_path: Path) -> None:
    """contrib/logrotate.d compresses rotated auth logs (auth.log.2.gz ...): the
    report must count their records, not skip every line of them as garbage."""
    import gzip

    rotated = tmp_path / "auth.log.2.gz"
    with gzip.open(rotated, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert list(read_records([rotated])) == RECORDS


def test_a_gzip_log_cut_short_gives_what_it_holds_and_says_so(tmp_path: Path) -> None:
    """A rotated log cut off mid-compression (a full disk during logrotate) ended the
    report in a traceback (EOFError); now its readable records count and the file
    is named as read only in part. The same for a file that is not gzip at all."""
    import gzip

    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in RECORDS * 50).encode())
    cut = tmp_path / "auth.log.3.gz"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    fake = tmp_path / "auth.log.4.gz"
    fake.write_text(json.dumps(RECORDS[0]) + "\n")
    problems: list[str] = []
    got = list(read_records([cut, fake], problems))
    assert 0 < len(got) < len(RECORDS) * 50
    assert all(r in RECORDS for r in got)
    assert [p.split(":")[0] for p in problems] == [str(cut), str(fake)]
    assert all("read only in part" in p for p in problems)


def test_a_record_without_a_zone_is_read_as_utc_not_a_traceback(tmp_path: Path) -> None:
    """`smtpgate report` ended in "TypeError: can't compare offset-naive and
    offset-aware datetimes" at the first such line (another tool's, a hand-made test)."""
    from click.testing import CliRunner

    from smtpgate.cli.main import cli

    from .cli_support import write_config

    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[auth]\nlog_file = "auth.log"\n')
    now = datetime.now(UTC)
    lines = [json.dumps({**rec("00:00:00", "192.0.2.9", "a@x.org", "failure"),
                         "time": now.replace(tzinfo=None).isoformat()}),
             json.dumps({**rec("00:00:00", "192.0.2.9", "a@x.org", "failure"),
                         "time": "2020-01-01T00:00:00"})]
    (tmp_path / "auth.log").write_text("\n".join(lines) + "\n")
    for args in ([], ["--json"]):
        result = CliRunner().invoke(cli, ["report", *args, "--config", str(config)])
        assert result.exit_code == 0, result.output
    assert json.loads(result.output)["totals"]["failure"] == 1  # the 2020 one is too old


def test_times_with_other_offsets_are_ordered_as_times() -> None:
    """First and last times (of the report and of each episode) were the least and
    greatest strings: 11:30+02:00 (09:30 UTC) came after 10:00Z, so an episode's
    'first' was its latest failure and 'last' an earlier one."""
    def failure(stamp: str) -> dict[str, object]:
        return {"time": stamp, "client_ip": "198.51.100.7", "username": "a@x.org",
                "mechanism": "PLAIN", "result": "failure", "reason": "bad password"}

    records = [failure("2026-01-01T10:00:00.000Z"),
               failure("2026-01-01T11:30:00.000+02:00"),   # 09:30 UTC: the first
               failure("2026-01-01T05:15:00.000-05:00")]   # 10:15 UTC: the last
    r = build_report(records, since=None,
                     thresholds=Thresholds(brute_force_failures=3, spray_accounts=1))
    assert (r["first_record"], r["last_record"]) == (
        "2026-01-01T11:30:00.000+02:00", "2026-01-01T05:15:00.000-05:00")
    [brute] = r["episodes"]["brute_force"]
    [spray] = r["episodes"]["spraying"]
    for episode in (brute, spray):
        assert (episode["first"], episode["last"]) == (
            "2026-01-01T11:30:00.000+02:00", "2026-01-01T05:15:00.000-05:00")


def test_names_from_the_auth_log_are_shown_as_sent_and_harmless(tmp_path: Path) -> None:
    """The auth log keeps a name as the client sent it (auth/authlog.py): the
    report shows ``a\\b@x.org`` with its one backslash, an ESC as ``\\x1b``, and
    ``[red]`` as text, not Rich markup."""
    from click.testing import CliRunner

    from smtpgate.cli.main import cli

    from .cli_support import write_config

    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[auth]\nlog_file = "auth.log"\n')
    stamp = datetime.now(UTC).isoformat()
    names = ["a\\b@x.org", "e\x1b[2J@x.org", "[red]r@x.org"]
    (tmp_path / "auth.log").write_text("".join(
        json.dumps({**rec("00:00:00", "192.0.2.9", n, "failure"), "time": stamp}) + "\n"
        for n in names))
    result = CliRunner().invoke(cli, ["report", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert " a\\b@x.org " in result.output and "a\\\\b" not in result.output
    assert "\x1b" not in result.output and "e\\x1b[2J@x.org" in result.output
    assert "[red]r@x.org" in result.output


def test_spellings_of_one_account_are_one_account_not_a_spray() -> None:
    """Ten wrong passwords from one address for ``demo@localhost`` typed in ten
    capitalisations, which the guard counts as one account and locks, were ten
    accounts of one failure each: a spraying episode, no brute force, ten rows."""
    names = ["demo@localhost", "Demo@localhost", "DEMO@localhost", "dEmo@localhost",
             "deMo@localhost", "demO@localhost", "DEmo@localhost", "DeMo@localhost",
             "demo@LOCALHOST", "demo@Localhost"]
    records = [rec(f"10:00:0{i}", "192.0.2.9", n, "failure", reason="bad password")
               for i, n in enumerate(names)]
    records.append(rec("10:00:10", "192.0.2.9", "DEMO@LOCALHOST", "tempfail",
                       reason="blocked: account locked"))
    records.append({**rec("10:00:11", "192.0.2.8", "admin:Root", "failure"),
                    "listener": "admin", "front_door": "web_admin"})  # as given
    r = build_report(records, since=None,
                     thresholds=Thresholds(brute_force_failures=10, spray_accounts=10))
    assert r["accounts"] == {"demo@localhost": {"success": 0, "failure": 10, "blocked": 1},
                             "admin:Root": {"success": 0, "failure": 1, "blocked": 0}}
    assert [(e["address"], e["account"], e["failures"])
            for e in r["episodes"]["brute_force"]] == [("192.0.2.9", "demo@localhost", 10)]
    assert r["episodes"]["spraying"] == []
    assert r["top_failing_addresses"][0] == {"address": "192.0.2.9", "failures": 10,
                                             "accounts": 1}
    # The web admin's overview counts its spraying episodes as the report does.
    from smtpgate.web import authlog_view

    attempts = [authlog_view.Attempt(datetime(2026, 1, 1, 10, tzinfo=UTC), "s", "192.0.2.9",
                                     "TLSv1.3", "PLAIN", n, "failure", "", "smtp")
                for n in names]
    assert authlog_view.spraying(attempts, datetime(2026, 1, 1, tzinfo=UTC), 10) == []


def test_saslprep_spellings_of_one_account_are_one_account_as_the_guard_counts_them() -> None:
    """``bob@example.org`` with a zero-width space, a soft hyphen, in full-width
    letters or with a full-width domain logs in to bob (SASLprep), and the guard
    counts and locks them as bob; the report made each a name of its own (seen
    against smtpgate serve: five rows, no brute-force episode against the account
    the guard had locked, and a spraying episode of five "accounts")."""
    names = ["bob@example.org\u200b", "bob\u00ad@example.org", "\uff42\uff4f\uff42@example.org",
             "bob@\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.org", "BOB@example.org"]
    records = [rec(f"10:00:{i:02}", "192.0.2.9", names[i % len(names)], "failure",
                   reason="bad password") for i in range(10)]
    r = build_report(records, since=None,
                     thresholds=Thresholds(brute_force_failures=10, spray_accounts=5))
    assert r["accounts"] == {"bob@example.org": {"success": 0, "failure": 10, "blocked": 0}}
    assert [(e["address"], e["account"], e["failures"])
            for e in r["episodes"]["brute_force"]] == [("192.0.2.9", "bob@example.org", 10)]
    assert r["episodes"]["spraying"] == []


def test_a_mail_login_named_admin_is_no_web_admin_account() -> None:
    """Guesses at SMTP AUTH as ``admin:root`` (which the guard counts against the
    address only) were the web admin ``root``'s failures in the report: a brute-force
    episode on the admin page, from an address that never reached it."""
    records = [rec(f"10:00:0{i}", "192.0.2.9", "admin:root", "failure") for i in range(3)]
    records.append({**rec("10:01:00", "127.0.0.1", "admin:root", "failure"),
                    "listener": "admin", "front_door": "web_admin"})
    r = build_report(records, since=None,
                     thresholds=Thresholds(brute_force_failures=3, spray_accounts=10))
    assert r["accounts"] == {"admin:root": {"success": 0, "failure": 1, "blocked": 0}}
    assert r["episodes"]["brute_force"] == []
    assert r["top_failing_addresses"][0] == {"address": "192.0.2.9", "failures": 3,
                                             "accounts": 0}


def test_scram_probes_the_guard_counts_are_failures_of_the_address() -> None:
    """Salts read from ten names by one address, no proof: the guard blocked the
    address for spraying, and the report showed no failing address and no episode,
    only ten ``cancelled``."""
    suffix = "client cancelled (after the salt, without a proof: counted)"
    records = [rec(f"10:00:0{i}", "192.0.2.9", f"u{i}@x.org", "cancelled", "SCRAM-SHA-256",
                   suffix) for i in range(10)]
    records.append(rec("10:01:00", "192.0.2.8", "a@x.org", "cancelled", "LOGIN",
                       "client cancelled"))  # not counted by the guard
    r = build_report(records, since=None,
                     thresholds=Thresholds(brute_force_failures=1, spray_accounts=10))
    assert r["totals"]["cancelled"] == 11 and r["totals"]["failure"] == 0
    assert r["top_failing_addresses"] == [{"address": "192.0.2.9", "failures": 10,
                                           "accounts": 10}]
    assert [(e["address"], e["accounts"]) for e in r["episodes"]["spraying"]] == [
        ("192.0.2.9", 10)]
    assert r["episodes"]["brute_force"] == []  # nothing was guessed
    from smtpgate.web import authlog_view

    attempts = [authlog_view.Attempt(datetime(2026, 1, 1, 10, tzinfo=UTC), "s", str(x["client_ip"]),
                                     "TLSv1.3", str(x["mechanism"]), str(x["username"]),
                                     "cancelled", str(x["reason"]), "smtp")
                for x in records]
    assert [(s.address, s.accounts) for s in authlog_view.spraying(
        attempts, datetime(2026, 1, 1, tzinfo=UTC), 10)] == [("192.0.2.9", 10)]


def test_auth_refused_before_a_password_is_counted_apart_not_as_failures() -> None:
    """A scanner's AUTH in clear, with an unknown mechanism or malformed (result
    ``refused``, no password tried) is a line and a table of its own, never a
    failure, a failing address or an episode (until 2026-12 no such record was
    written; the report would have dropped them from every figure but attempts)."""
    records = [rec(f"10:00:0{i}", "192.0.2.9", "", "refused", reason="AUTH before STARTTLS")
               for i in range(5)]
    records += [
        rec("10:01:00", "192.0.2.9", "", "refused", "CRAM-MD5", "mechanism not offered"),
        rec("10:01:01", "192.0.2.9", "", "refused",
            reason="AUTH before STARTTLS: authentication line too long"),
        rec("10:01:02", "192.0.2.8", "a@x.org", "refused", reason="already authenticated"),
        rec("10:01:03", "192.0.2.8", "a@x.org", "success"),
    ]
    r = build_report(records, since=None,
                     thresholds=Thresholds(brute_force_failures=1, spray_accounts=1))
    assert r["totals"] == {"attempts": 9, "success": 1, "failure": 0, "blocked": 0,
                           "tempfail": 0, "cancelled": 0, "refused": 8}
    assert r["top_refused_addresses"] == [
        {"address": "192.0.2.9", "refused": 7,
         "reasons": {"AUTH before STARTTLS": 6, "mechanism not offered": 1}},
        {"address": "192.0.2.8", "refused": 1, "reasons": {"already authenticated": 1}},
    ]
    assert r["top_failing_addresses"] == []
    assert r["episodes"] == {"brute_force": [], "spraying": []}
    assert r["accounts"] == {"a@x.org": {"success": 1, "failure": 0, "blocked": 0}}
