"""Reading the account files of other servers: a Dovecot passwd-file, a Cyrus sasldb2.

Theory of operation
-------------------
Each reader turns a file into ``ImportEntry`` records (what to create) and
``ImportProblem`` records (a line that cannot be imported, with its number and
why). A bad line never stops the reading: it is reported and left out, and
the admin service imports the good entries in one transaction
(``admin.AccountAdmin.import_accounts``). Nothing here writes anything.

Dovecot passwd-file (``doc: passwd-file``): one account per line,
``user:password:uid:gid:gecos:home:shell:extra_fields``; empty lines and ``#``
comments are skipped; only the first two fields matter here (the extra fields,
``userdb_quota_rule=*:storage=1G`` and the like, may hold colons and are
ignored). The password field is read by ``legacy_hashes.parse``. A user without
``@domain`` gets ``--domain`` appended, as Dovecot's ``%u`` without a domain
would need.

Cyrus sasldb2: a Berkeley DB hash file of ``user\\0realm\\0property`` ->
value; the ``userPassword`` property is the plaintext password (saslpasswd2
keeps no hash), hashed at import and never stored. Python has no Berkeley DB
module any more, so the file is read with ``db_dump -p`` (Debian package
db5.3-util, the library version Debian's Cyrus SASL links): a read-only,
long-stable text format, and no pure-Python reader of BDB's page layout to
maintain. The account name is ``user@realm`` (a user that already holds an
``@`` keeps its name; the realm then must match its domain or the entry is
reported).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from smtpgate.auth import legacy_hashes
from smtpgate.auth.names import InvalidAccountName, canonical_name

#: Tools that dump a Berkeley DB 5.3 file, in order of preference.
DB_DUMP_TOOLS = ("db5.3_dump", "db_dump")


@dataclass(frozen=True, slots=True)
class ImportEntry:
    """One account to import: ``password`` (hashed at import) or ``credentials``
    (stored as they are: see ``legacy_hashes.Parsed``)."""

    line: int
    name: str
    scheme: str
    password: str | None = None
    credentials: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ImportProblem:
    """A line (or sasldb record) that is not imported, and why."""

    line: int
    message: str


class _BadEntry(ValueError):
    """An entry that cannot be imported; the message says why."""


class ImportSourceError(Exception):
    """The source cannot be read at all (missing file, no db_dump, not a sasldb)."""


def _name(user: str, domain: str | None) -> str:
    if "@" not in user:
        if not domain:
            raise InvalidAccountName(
                f"{user!r} has no @domain (give --domain to append one)"
            )
        user = f"{user}@{domain}"
    return canonical_name(user)


def read_dovecot_passwd(
    text: str, *, domain: str | None = None
) -> tuple[list[ImportEntry], list[ImportProblem]]:
    """Entries and problems of a passwd-file's ``text``; a name seen twice is a
    problem at its second line (Dovecot would use the first)."""
    entries: list[ImportEntry] = []
    problems: list[ImportProblem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":", 7)
        if len(fields) < 2:
            problems.append(ImportProblem(number, "no ':' after the user name"))
            continue
        user, password = fields[0], fields[1]
        try:
            name = _name(user, domain)
            if not password:
                raise legacy_hashes.LegacyHashError("the password field is empty")
            parsed = legacy_hashes.parse(password)
            if parsed.password is not None and (not parsed.password or "\0" in parsed.password):
                raise legacy_hashes.LegacyHashError("the password is empty or holds NUL")
        except (InvalidAccountName, legacy_hashes.LegacyHashError) as e:
            problems.append(ImportProblem(number, f"{user or '(no user)'}: {e}"))
            continue
        if name in seen:
            problems.append(ImportProblem(number, f"{name}: already on line {seen[name]}"))
            continue
        seen[name] = number
        entries.append(ImportEntry(number, name, parsed.scheme, parsed.password,
                                   parsed.credentials))
    return entries, problems


_ESCAPE = re.compile(rb"\\(\\|[0-9a-fA-F]{2})")


def _unescape(line: str) -> bytes:
    """A value of ``db_dump -p`` output: printable bytes, ``\\\\``, and ``\\xx`` in hex."""
    raw = line[1:].encode("latin-1")
    return _ESCAPE.sub(lambda m: b"\\" if m.group(1) == b"\\" else bytes.fromhex(m.group(1).decode()), raw)


def dump_berkeley_db(path: Path) -> list[tuple[bytes, bytes]]:
    """The key/value pairs of a Berkeley DB file, read with ``db_dump -p``.

    Raises:
        ImportSourceError: no dump tool, or the tool refuses the file.
    """
    tool = next((t for t in map(shutil.which, DB_DUMP_TOOLS) if t), None)
    if tool is None:
        raise ImportSourceError(
            "reading a sasldb2 needs db_dump (Debian: apt install db5.3-util)"
        )
    if not path.is_file():
        raise ImportSourceError(f"{path}: no such file")
    proc = subprocess.run(
        [tool, "-p", str(path)], capture_output=True, text=True, encoding="latin-1",
        timeout=60, check=False,
    )
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or ["no reason given"]
        raise ImportSourceError(f"{path}: not a Berkeley DB file db_dump can read ({detail[0]})")
    lines = proc.stdout.splitlines()
    try:
        body = lines[lines.index("HEADER=END") + 1 : lines.index("DATA=END")]
    except ValueError:
        raise ImportSourceError(f"{path}: db_dump output has no data section") from None
    if len(body) % 2 or any(not x.startswith(" ") for x in body):
        raise ImportSourceError(f"{path}: db_dump output is not key/value lines")
    return [(_unescape(body[i]), _unescape(body[i + 1])) for i in range(0, len(body), 2)]


def read_sasldb(path: Path) -> tuple[list[ImportEntry], list[ImportProblem]]:
    """Entries and problems of a Cyrus sasldb2; ``line`` numbers its records from 1
    in the order ``db_dump`` lists them.

    Raises:
        ImportSourceError: the file cannot be read at all.
    """
    entries: list[ImportEntry] = []
    problems: list[ImportProblem] = []
    seen: dict[str, int] = {}
    for number, (key, value) in enumerate(dump_berkeley_db(path), start=1):
        parts = key.split(b"\0")
        if len(parts) != 3:
            problems.append(ImportProblem(number, "key is not user\\0realm\\0property"))
            continue
        try:
            user, realm, prop = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            problems.append(ImportProblem(number, "key is not UTF-8"))
            continue
        if prop != "userPassword":
            problems.append(ImportProblem(number, f"{user}@{realm}: property {prop!r} is not a password"))
            continue
        try:
            name = _name(user, realm)
            if "@" in user and realm and name.rpartition("@")[2] != canonical_name(f"x@{realm}")[2:]:
                raise _BadEntry(f"{user!r} is not in realm {realm!r}")
            password = value.decode("utf-8")
            if not password or "\0" in password:
                raise _BadEntry("the password is empty or holds NUL")
        except (InvalidAccountName, _BadEntry) as e:
            problems.append(ImportProblem(number, f"{user}@{realm}: {e}"))
            continue
        except UnicodeDecodeError:
            problems.append(ImportProblem(number, f"{user}@{realm}: the password is not UTF-8"))
            continue
        if name in seen:
            problems.append(ImportProblem(number, f"{name}: already in record {seen[name]}"))
            continue
        seen[name] = number
        entries.append(ImportEntry(number, name, "sasldb", password=password))
    return entries, problems
