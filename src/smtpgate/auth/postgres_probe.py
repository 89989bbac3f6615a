"""The SQLSTATE a PostgreSQL server refuses a new connection with, before any login.

Why: psycopg reports a failed connection without its SQLSTATE (only libpq's
message, which the server words in its own language), and ``PQping`` calls a
server that refuses with "sorry, too many clients already" (53300) as up as one
that refuses a wrong password. Both fail with no SQLSTATE and a server that
answers, so start-up took a full server for a configuration that can never work
and refused to start. A server full to ``max_connections`` says so right after
the startup packet, before it asks for a password, so this module sends one
(protocol 3.0, no TLS, no password) and reads the first answer: an
ErrorResponse's ``C`` field, or nothing if the server asks to authenticate.

Limits are checked after the login for a database's or a role's ``CONNECTION
LIMIT`` and the slots reserved for superusers: those cannot be told from a
wrong password this way, and still stop the start-up.
"""

from __future__ import annotations

import socket
import struct

import psycopg
from psycopg import conninfo

#: Protocol version 3.0 (PostgreSQL documentation, "Message Formats").
_PROTOCOL_3_0 = 196608
#: The most of an answer read: an ErrorResponse is a few hundred octets.
_MAX_ANSWER = 8192


def refusal_sqlstate(dsn: str, timeout: float) -> str | None:
    """The SQLSTATE the server at ``dsn`` refuses a connection with before any
    authentication; None if it asks to authenticate (or accepts), cannot be
    reached, or answers something else. Never raises."""
    return first_answer(dsn, timeout) or None


def answers(dsn: str, timeout: float) -> bool:
    """Whether the server at ``dsn`` answers a startup packet within ``timeout``
    (any answer: a request to authenticate, or a refusal): what ``fail_fast``
    probes a database with, without logging in. True too when this cannot be
    asked (several hosts, no user in the DSN): the next login then tries.
    Never raises."""
    target = _target(dsn)
    if target is None:
        return True
    try:
        return bool(_exchange(*target, timeout))
    except (OSError, ValueError):
        return False


def first_answer(dsn: str, timeout: float) -> str | None:
    """The server's first answer to a startup packet: the SQLSTATE it refuses with,
    "" if it asks to authenticate (or refuses without a code); None if it says
    nothing within ``timeout`` or cannot be asked this way (several hosts, no user
    in the DSN). Never raises."""
    target = _target(dsn)
    if target is None:
        return None
    try:
        answer = _exchange(*target, timeout)
    except (OSError, ValueError):
        return None
    return (_sqlstate(answer) or "") if answer else None


def _target(dsn: str) -> tuple[str, int, str, str] | None:
    """Host, port, user and database of a DSN with one host and a user; else None."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return None
    host = str(params.get("hostaddr") or params.get("host") or "/var/run/postgresql")
    if "," in host:
        return None  # several hosts: libpq's choice among them is not ours to redo
    try:
        port = int(str(params.get("port") or 5432).split(",")[0])
    except ValueError:
        return None
    user = str(params.get("user") or "")
    if not user:
        return None
    return host, port, user, str(params.get("dbname") or user)


def startup_packet(user: str, database: str) -> bytes:
    """A StartupMessage for protocol 3.0 (PostgreSQL "Message Formats")."""
    body = struct.pack("!I", _PROTOCOL_3_0)
    for key, value in (("user", user), ("database", database),
                       ("application_name", "smtpgate")):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def _exchange(host: str, port: int, user: str, database: str, timeout: float) -> bytes:
    if host.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: str | tuple[str, int] = f"{host}/.s.PGSQL.{port}"
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        address = (host, port)
    with sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(startup_packet(user, database))
        answer = b""
        while len(answer) < _MAX_ANSWER:
            chunk = sock.recv(_MAX_ANSWER)
            if not chunk:
                break
            answer += chunk
            if len(answer) >= 5 and len(answer) >= 1 + struct.unpack("!I", answer[1:5])[0]:
                break
        return answer


def _sqlstate(answer: bytes) -> str | None:
    """The ``C`` field of an ErrorResponse ('E'); None for any other message."""
    if len(answer) < 5 or answer[:1] != b"E":
        return None
    length = struct.unpack("!I", answer[1:5])[0]
    fields = answer[5:1 + length]
    for field in fields.split(b"\0"):
        if field[:1] == b"C" and len(field) == 6 and field[1:].isascii():
            return field[1:].decode("ascii")
    return None
