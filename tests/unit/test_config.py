"""Config validation names the key; the reference page is generated and never stale."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpgate.cli.main import cli
from smtpgate.config import parse_config, render_reference

from .config_support import MINIMAL, config_dir, problems

ROOT = Path(__file__).resolve().parents[2]

GOOD = MINIMAL


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return config_dir(tmp_path)


def test_good_config_parses(base: Path) -> None:
    cfg = parse_config(GOOD, base)
    assert cfg.listeners[0].host_port == ("127.0.0.1", 2587)
    assert cfg.path(cfg.tls.cert) == base / "c.pem"


def test_unknown_key_is_named_with_the_nearest_key(base: Path) -> None:
    assert problems(GOOD + "\n[limits]\nmax_mesage_size = 5\n", base) == {
        "limits.max_mesage_size": "unknown key `max_mesage_size` in [limits]; "
        "did you mean `max_message_size`?"
    }


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ('hostnam = "x"\n', "hostnam",
         "unknown key `hostnam` at the top level; did you mean `hostname`?"),
        ("[server]\nhostnam = 1\n", "server.hostnam",
         "unknown key `hostnam` in [server]; did you mean `hostname` at the top level?"),
        ("[limits]\nworkers = 2\n", "limits.workers",
         "unknown key `workers` in [limits]; it belongs in [server]"),
        ("[limit]\nworkers = 2\n", "limit",
         "unknown key `limit` at the top level; did you mean `limits`?"),
        ("[guard]\nzzzz = 1\n", "guard.zzzz", "unknown key `zzzz` in [guard]"),
        # Two letters swapped in a short name (difflib's ratio 0.67: no suggestion
        # until the h28readme review).
        ('[tsl]\nmin_version = "1.3"\n', "tsl",
         "unknown key `tsl` at the top level; did you mean `tls`?"),
        ("[smpt]\nreceived_login = true\n", "smpt",
         "unknown key `smpt` at the top level; did you mean `smtp`?"),
    ],
)
def test_unknown_key_suggestions(base: Path, extra: str, key: str, message: str) -> None:
    text = extra + GOOD if extra.startswith("hostnam") else GOOD + extra
    assert problems(text, base) == {key: message}


def test_unknown_key_in_a_listener_names_the_listener(base: Path) -> None:
    p = problems(GOOD.replace('tls = "starttls"', 'tls = "starttls"\nnmae = "x"'), base)
    assert p == {
        "listeners.0.nmae": "unknown key `nmae` in [[listeners]] #1; did you mean `name`?"
    }


@pytest.mark.parametrize(
    "bad", ["bad host!", "127.0.0.1", "a..b", "mail.example.org.", "-a.example", "a-.example",
            "under_score.example", "x" * 64 + ".example", ("a" * 60 + ".") * 5 + "org", ""],
)
def test_hostname_must_be_a_dns_host_name(base: Path, bad: str) -> None:
    p = problems(GOOD.replace("mx.example.org", bad), base)
    assert list(p) == ["hostname"]
    assert "is not a host name" in p["hostname"]


@pytest.mark.parametrize("good", ["localhost", "mail.example.org", "1and1.example", "MX-1.Example"])
def test_hostname_accepts_rfc1123_names(base: Path, good: str) -> None:
    assert parse_config(GOOD.replace("mx.example.org", good), base).hostname == good


def test_init_refuses_a_bad_hostname_before_writing_anything(tmp_path: Path) -> None:
    target = tmp_path / "gate"
    r = CliRunner().invoke(cli, ["init", "--dir", str(target), "--hostname", "bad host!"])
    assert r.exit_code == 2
    assert "'bad host!' is not a host name" in r.output
    assert not target.exists()


def test_bad_value_is_named(base: Path) -> None:
    p = problems(GOOD.replace('"starttls"', '"sometimes"'), base)
    assert list(p) == ["listeners.0.tls"]


def test_bad_address_and_missing_cert_are_named(tmp_path: Path) -> None:
    p = problems(GOOD.replace("127.0.0.1:2587", "nowhere"), tmp_path)
    assert "listeners.0.address" in p
    p = problems(GOOD, tmp_path)
    assert set(p) == {"tls.cert", "tls.key"}


def test_unknown_mechanism_is_named(base: Path) -> None:
    p = problems(GOOD + '\n[auth]\nmechanisms = ["PLAIN", "DIGEST-MD5"]\n', base)
    assert list(p) == ["auth.mechanisms"]


def test_relay_needs_host(base: Path) -> None:
    p = problems(GOOD + '\n[delivery]\nmode = "relay"\n', base)
    assert "delivery.relay_host" in p


def test_invalid_toml(base: Path) -> None:
    assert "(file)" in problems("hostname = ", base)


@pytest.mark.parametrize("command", [["config", "check"], ["config", "check", "--json"],
                                     ["config", "show"], ["user", "list"], ["reload"]])
def test_a_config_file_that_is_not_utf8_is_one_error_not_a_traceback(
    base: Path, command: list[str]
) -> None:
    cfg = base / "smtpgate.toml"
    cfg.write_bytes(GOOD.encode() + b'\n[smtp]\nbanner = "caf\xe9"\n')  # saved as Latin-1
    r = CliRunner().invoke(cli, [*command, "--config", str(cfg)])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "is not UTF-8 text (byte 0xe9" in r.output


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[queue]\nspool = ""', "queue.spool"),
        ('[delivery]\nmaildir = ""', "delivery.maildir"),
        ('[accounts]\ndatabase = ""', "accounts.database"),
        ('[guard]\ndatabase = ""', "guard.database"),
    ],
)
def test_an_empty_path_is_an_error_not_the_config_directory(
    base: Path, extra: str, key: str
) -> None:
    """Path("") is "."; `spool = ""` made the config file's directory the spool."""
    p = problems(GOOD + "\n" + extra + "\n", base)
    assert "is empty; give a path" in p[key]


def test_an_empty_optional_path_is_its_default(base: Path) -> None:
    cfg = parse_config(GOOD + '\n[server]\npid_file = ""\nlog_file = ""\n', base)
    assert cfg.server.pid_file is None and cfg.server.log_file is None


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("smtp.example.org:587", "holds a port; put it in relay_port: relay_host = 'smtp.example.org', relay_port = 587"),
        ("[smtp.example.org]", "drop the brackets"),
        ("smtp://smtp.example.org", "is a URL; give the host name alone, e.g. 'smtp.example.org'"),
    ],
)
def test_relay_host_with_a_port_brackets_or_a_scheme_is_named(
    base: Path, host: str, why: str
) -> None:
    """Used as written, each made every message defer: the name does not resolve."""
    p = problems(GOOD + f'\n[delivery]\nmode = "relay"\nrelay_host = "{host}"\n', base)
    assert why in p["delivery.relay_host"]


@pytest.mark.parametrize("name", ["Bcc:", "x originating ip", "", "bcc\\n"])
def test_a_drop_field_that_is_no_header_field_name_is_named(base: Path, name: str) -> None:
    p = problems(GOOD + f'\n[delivery]\ndrop_fields = ["bcc", "{name}"]\n', base)
    assert "is not a header field name" in p["delivery.drop_fields"]


def test_drop_fields_default_and_empty(base: Path) -> None:
    assert parse_config(GOOD, base).delivery.drop_fields == [
        "bcc", "resent-bcc", "return-path", "content-length"]
    assert parse_config(GOOD + "\n[delivery]\ndrop_fields = []\n", base).delivery.drop_fields == []


@pytest.mark.parametrize("host", ["smtp.example.org", "192.0.2.1", "2001:db8::1", "relay_1"])
def test_relay_host_names_and_addresses_pass(base: Path, host: str) -> None:
    cfg = parse_config(GOOD + f'\n[delivery]\nmode = "relay"\nrelay_host = "{host}"\n', base)
    assert cfg.delivery.relay_host == host


@pytest.mark.parametrize(
    ("extra", "key", "why"),
    [
        ("[guard]\nlockout_duration = inf", "guard.lockout_duration", "finite"),
        ("[guard]\nblock_duration = 1e300", "guard.block_duration", "longer than 100 years"),
        ("handshake_timeout = inf", "tls.handshake_timeout", "finite"),  # in [tls], the last table
        ("[passwords]\nmax_age_days = 1e9", "passwords.max_age_days", "36500 days"),
    ],
)
def test_a_duration_that_never_ends_is_refused(base: Path, extra: str, key: str, why: str) -> None:
    """TOML has inf: lockout_duration = inf passed, and `smtpgate guard list` then
    died on the lockout's end (OverflowError), as user list did on a password
    expiring past year 9999."""
    p = problems(GOOD + extra + "\n", base)
    assert why in p[key]


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("[passwords]\nmax_age_days = true", "passwords.max_age_days"),  # float
        ("[limits]\nmessages_per_hour = true", "limits.messages_per_hour"),  # int
        ("[guard]\npenalty_max = false", "guard.penalty_max"),
        ("[queue]\nmin_free_space = true", "queue.min_free_space"),  # int | None
        ("[server]\nworkers = true", "server.workers"),
    ],
)
def test_a_boolean_given_for_a_number_is_named(base: Path, extra: str, key: str) -> None:
    """pydantic's lax mode read TOML's true as 1: max_age_days = true made every
    password stop a day after its change, with config check saying OK."""
    p = problems(GOOD + extra + "\n", base)
    assert "a boolean: give a number" in p[key], p


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (MINIMAL.replace('cert = "c.pem"', 'cert = "c.pem\\u0000"'), "tls.cert"),
        (MINIMAL + '[accounts]\ndatabase = "a\\u0000.sqlite"\n', "accounts.database"),
        (MINIMAL + '[server]\nuser = "smtp\\u0000gate"\n', "server.user"),
    ],
)
def test_a_nul_in_a_path_or_name_is_named_not_raised(base: Path, text: str, key: str) -> None:
    """tls.cert with a \\u0000 ended every command in a ValueError traceback (embedded
    null byte); accounts.database passed config check and broke user list."""
    p = problems(text, base)
    assert "NUL character" in p[key], p


@pytest.mark.parametrize("banner", ["ESMTP\\r\\n250 fake", "ESMTP\\nhello", "ESMTP\\u0000"])
def test_a_banner_of_more_than_one_line_is_named(base: Path, banner: str) -> None:
    """The banner went into the 220 as it was: CR LF in it sent '250 fake' as a line
    of its own, which a client reads as the reply to its EHLO."""
    p = problems(GOOD + f'[smtp]\nbanner = "{banner}"\n', base)
    assert "smtp.banner" in p, p


def test_a_one_line_banner_passes(base: Path) -> None:
    cfg = parse_config(GOOD + '[smtp]\nbanner = "ESMTP smtpgate\\tready (Société)"\n', base)
    assert cfg.smtp.banner == "ESMTP smtpgate\tready (Société)"


_ISSUER = '[[auth.oauth_issuers]]\nissuer = "https://id.example.org"\naudience = ["smtp"]\n'


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ('[delivery]\nmode = "lmtp"', "delivery.lmtp_address", "needs lmtp_address"),
        ('[server]\ngroup = "nogroup"', "server.user", "group is set without user"),
        ('[accounts]\nbackend = "postgresql"', "accounts.postgresql.dsn", "needs"),
        ('[accounts]\nbackend = "ldap"\n[accounts.ldap]\nurl = "ldaps://ldap.example.org"',
         "accounts.ldap.base_dn", "base_dn"),
        ('[accounts.ldap]\nurl = "ldap://ldap.example.org"\nbase_dn = "dc=x"',
         "accounts.ldap.url", "cleartext"),
        ('[accounts.ldap]\nurl = "ldaps://ldap.example.org"\nbind_dn = "cn=svc"',
         "accounts.ldap.bind_password_file", "bind_dn needs"),
        (_ISSUER + 'jwks_url = "http://id.example.org/jwks"', "auth.oauth_issuers.0.jwks_url",
         "https://"),
        (_ISSUER, "auth.oauth_issuers.0.jwks_url", "set jwks_url, jwks_file or"),
        (_ISSUER + 'jwks_file = "j.json"\ndomains = ["a@b"]', "auth.oauth_issuers.0.domains",
         "is not a domain"),
        (('[[listeners]]\nname = "x"\naddress = "127.0.0.1:2465"\ntls = "implicit"\n'
          'client_certificates = "optional"'), "listeners.1.client_ca", "needs client_ca"),
        (('[delivery]\nmode = "relay"\nrelay_host = "mx.example.net"\nrelay_user = "me"\n'
          'relay_auth_mechanism = "XOAUTH2"'), "delivery.relay_token_file",
         "needs relay_token_file"),
    ],
)
def test_a_tables_own_check_names_the_key_to_change(
    base: Path, extra: str, key: str, words: str
) -> None:
    """These checks span keys of one table and were reported under the table
    (`delivery: mode 'lmtp' needs lmtp_address`, `server: group is set without user`),
    also as the key of config check --json; they name the key to set now."""
    p = problems(GOOD + extra + "\n", base)
    assert words in p.get(key, ""), p


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("argon2_memory_kib = 4294967296", "accounts.argon2_memory_kib"),
        ("argon2_time_cost = 4294967296", "accounts.argon2_time_cost"),
        ("argon2_parallelism = 16777216", "accounts.argon2_parallelism"),
        ("argon2_parallelism = 10000", "accounts.argon2_memory_kib"),  # 8 KiB per lane
        ("scram_iterations = 100000000000000000000", "accounts.scram_iterations"),
    ],
)
def test_hashing_costs_the_hash_functions_refuse_are_named(
    base: Path, extra: str, key: str
) -> None:
    """Each passed config check, and `user add` then ended in a traceback (Argon2's
    OverflowError or 'Memory cost is too small', PBKDF2's OverflowError)."""
    p = problems(GOOD + f"[accounts]\n{extra}\n", base)
    assert key in p, p


def test_numbers_and_booleans_where_they_belong_still_pass(base: Path) -> None:
    cfg = parse_config(GOOD + "[limits]\ncommand_timeout = 10\n"
                       "[smtp]\nreceived_header = false\n", base)
    assert cfg.limits.command_timeout == 10.0 and cfg.smtp.received_header is False


def test_a_certificate_path_that_is_a_directory_says_so(base: Path) -> None:
    """key = "tls" (the directory, not tls/key.pem) was "file not found: .../tls"."""
    (base / "tls").mkdir()
    p = problems(GOOD.replace('key = "k.pem"', 'key = "tls"'), base)
    assert p["tls.key"] == f"{base / 'tls'} is a directory, not a PEM file"


def test_a_certificate_path_too_long_to_look_at_is_named_not_raised(base: Path) -> None:
    """Found by the config fuzzer: ``Path.is_dir`` raised OSError (ENAMETOOLONG)."""
    p = problems(GOOD.replace('key = "k.pem"', f'key = "{"k" * 300}.pem"'), base)
    assert p["tls.key"].startswith("cannot read ") and "File name too long" in p["tls.key"]


def test_a_list_of_tables_written_with_single_brackets_says_to_double_them(base: Path) -> None:
    """[listeners] for [[listeners]] was "Input should be a valid list"."""
    p = problems(GOOD.replace("[[listeners]]", "[listeners]"), base)
    assert p["listeners"].startswith("write [[listeners]] (double brackets)")
    p = problems(GOOD + '[delivery.routes]\ndomain = "a.org"\nnext_hop = "b:25"\n', base)
    assert p["delivery.routes"].startswith("write [[delivery.routes]] (double brackets)")


def real_certificate(base: Path) -> None:
    from smtpgate.tls.certs import write_self_signed

    write_self_signed(base / "c.pem", base / "k.pem", "mx.example.org")


def test_config_check_cli(base: Path) -> None:
    real_certificate(base)
    cfg = base / "smtpgate.toml"
    cfg.write_text(GOOD)
    r = CliRunner().invoke(cli, ["config", "check", "--config", str(cfg)])
    assert r.exit_code == 0 and "OK" in r.output
    cfg.write_text(GOOD + "\nbogus = 1\n")
    r = CliRunner().invoke(cli, ["config", "check", "--config", str(cfg)])
    assert r.exit_code == 1
    assert "tls.bogus: unknown key `bogus` in [tls]" in r.output


def test_config_from_environment(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_certificate(base)
    cfg = base / "smtpgate.toml"
    cfg.write_text(GOOD)
    monkeypatch.setenv("SMTPGATE_CONFIG", str(cfg))
    r = CliRunner().invoke(cli, ["config", "check"])
    assert r.exit_code == 0, r.output


def test_reference_page_is_current() -> None:
    page = ROOT / "docs" / "configuration.md"
    assert page.read_text() == render_reference(), "run: smtpgate config docs > docs/configuration.md"


def _schema_tables() -> dict[str, set[str]]:
    """Every table of the schema as the reference page heads it, with its keys."""

    from pydantic import BaseModel

    from smtpgate.config import Config
    from tests.unit.test_docs_keys import _model_of as model_of

    out: dict[str, set[str]] = {}

    def walk(model: type[BaseModel], heading: str, prefix: str) -> None:
        keys = out.setdefault(heading, set())
        for name, field in model.model_fields.items():
            inner = model_of(field.annotation)
            if name == "base_dir":
                continue
            if inner is None or inner[1]:
                keys.add(prefix + name)
            if inner is None:
                continue
            dotted = f"{prefix}{name}" if heading != "Top level" else name
            if inner[1]:
                walk(inner[0], f"`[[{dotted}]]`", "")
            else:
                walk(inner[0], f"`[{dotted}]`", f"{dotted}.")

    walk(Config, "Top level", "")
    return out


def test_reference_page_lists_every_key_of_every_table() -> None:
    """Lists of tables too ([[auth_listeners]], [[auth.oauth_issuers]],
    [[delivery.routes]]), whose keys the page once left out."""
    import re

    page = (ROOT / "docs" / "configuration.md").read_text()
    sections: dict[str, set[str]] = {}
    heading = ""
    for line in page.splitlines():
        if m := re.match(r"#{2,3} (.+)$", line):
            heading = m.group(1)
        elif m := re.match(r"\| `([^`]+)` \|", line):
            sections.setdefault(heading, set()).add(m.group(1))
    expected = _schema_tables()
    assert {"`[[auth_listeners]]`", "`[[auth.oauth_issuers]]`", "`[[delivery.routes]]`",
            "`[accounts.ldap]`"} <= set(expected)
    assert sections == expected


def test_state_machine_page_is_current() -> None:
    from smtpgate.smtp.states import render_markdown

    assert (ROOT / "docs" / "state-machine.md").read_text() == render_markdown()


def test_worker_cpu_affinity_is_auto_or_off_and_names_itself_otherwise(base: Path) -> None:
    assert parse_config(GOOD, base).server.worker_cpu_affinity == "auto"
    off = parse_config(GOOD + '[server]\nworker_cpu_affinity = "off"\n', base)
    assert off.server.worker_cpu_affinity == "off"
    assert list(problems(GOOD + '[server]\nworker_cpu_affinity = "yes"\n', base)) == [
        "server.worker_cpu_affinity"]


def test_sqlite_reads_on_loop_is_on_by_default_and_a_boolean(base: Path) -> None:
    assert parse_config(GOOD, base).server.sqlite_reads_on_loop is True
    off = parse_config(GOOD + "[server]\nsqlite_reads_on_loop = false\n", base)
    assert off.server.sqlite_reads_on_loop is False
    assert list(problems(GOOD + '[server]\nsqlite_reads_on_loop = "sometimes"\n', base)) == [
        "server.sqlite_reads_on_loop"]


def test_queue_min_free_space_defaults_to_one_and_a_half_messages_and_is_named_when_bad(
        base: Path) -> None:
    cfg = parse_config(GOOD, base)
    assert cfg.queue.free_space_reserve(cfg.limits.max_message_size) == 52_500_000
    cfg = parse_config(GOOD + "\n[queue]\nmin_free_space = 0\n", base)
    assert cfg.queue.free_space_reserve(35_000_000) == 0
    cfg = parse_config(GOOD + "\n[queue]\nmin_free_space = 2_000_000_000\n", base)
    assert cfg.queue.free_space_reserve(35_000_000) == 2_000_000_000
    assert "queue.min_free_space" in problems(GOOD + "\n[queue]\nmin_free_space = -1\n", base)


@pytest.mark.parametrize("name", ["", "   ", "sub\tmission"])
def test_a_listener_without_a_usable_name_is_named(base: Path, name: str) -> None:
    """name = "" was accepted: the logs, the auth log and the metrics then named the
    listener as nothing, and `user access --listener ""` had to match it."""
    p = problems(GOOD.replace('name = "submission"', f'name = "{name}"'), base)
    assert list(p) == ["listeners.0.name"]
    door = '\n[[auth_listeners]]\nprotocol = "dovecot"\naddress = "127.0.0.1:12345"\nname = ""\n'
    assert list(problems(GOOD + door, base)) == ["auth_listeners.0.name"]


@pytest.mark.parametrize(("base_s", "max_s", "ok"), [
    ("0.5", "4.0", True), ("0.5", "0.5", True), ("0.0", "0.0", True),
    ("0.5", "0.0", True),  # 0: no delay, as configs turned it off before the check
    ("2.0", "1.0", False), ("0.5", "0.1", False),
])
def test_penalty_max_below_penalty_base_is_named(
    base: Path, base_s: str, max_s: str, ok: bool
) -> None:
    text = GOOD + f"\n[guard]\npenalty_base = {base_s}\npenalty_max = {max_s}\n"
    if ok:
        parse_config(text, base)
    else:
        p = problems(text, base)
        assert list(p) == ["guard.penalty_max"] and "below penalty_base" in p["guard.penalty_max"]


@pytest.mark.parametrize(
    ("key", "table", "value", "said"),
    [
        ("delivery.routes.0.next_hop", "[[delivery.routes]]\ndomain = \"a.org\"\n", ":25",
         "':25' names no host"),
        ("delivery.routes.0.next_hop", "[[delivery.routes]]\ndomain = \"a.org\"\n",
         "mx.a.org:0", "port 0 is no port to connect to"),
        ("delivery.lmtp_address", "[delivery]\nmode = \"lmtp\"\n", "[]:24", "names no host"),
        ("delivery.lmtp_address", "[delivery]\nmode = \"lmtp\"\n", "127.0.0.1:0",
         "port 0 is no port to connect to"),
    ],
)
def test_a_destination_with_no_host_or_port_0_is_refused(
    base: Path, key: str, table: str, value: str, said: str,
) -> None:
    """A route's next_hop ':25' connected to this machine (an empty host read as
    0.0.0.0, as for a listener) and port 0 deferred every message; both are config
    errors naming the key (found by the h22relay review)."""
    field = "next_hop" if "routes" in key else "lmtp_address"
    p = problems(GOOD + f'\n{table}{field} = "{value}"\n', base)
    assert said in p.get(key, ""), p


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("::1:2587", "'[::1]:2587' or '[::1:2587]:PORT'"),
        ("::1", "'[::1]:PORT'"),
        ("[::1:2587", "brackets go around an IPv6 address alone"),
        ("::1]:2587", "brackets go around an IPv6 address alone"),
    ],
)
def test_an_unbracketed_ipv6_address_is_named_not_read_up_to_its_last_colon(
    base: Path, value: str, said: str,
) -> None:
    """'::1:2587' listened on ::1 port 2587 and '::1' on host ':' port 1, each without
    a word (noticed by the h25docs review); both, and brackets that do not pair, are
    config errors naming the key, with the bracketed form."""
    text = GOOD.replace('address = "127.0.0.1:2587"', f'address = "{value}"')
    assert text != GOOD
    p = problems(text, base)
    assert said in p.get("listeners.0.address", ""), p
    # The bracketed forms are what they always were.
    ok = parse_config(GOOD.replace('address = "127.0.0.1:2587"', 'address = "[::1]:2587"'),
                      base)
    assert ok.listeners[0].host_port == ("::1", 2587)
