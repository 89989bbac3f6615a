"""The SMTP session state machine, as a table.

Rule 1: every state change of a session is listed in ``TRANSITIONS``; the engine
never assigns a state that is not a value of this table (apart from the
out-of-band moves into ``AUTH``, ``DATA``, ``TLS`` and ``CLOSED``, which are
listed in ``SPECIAL``).

Rule 2: a command that is not a key of ``TRANSITIONS[state]`` gets the
``OUT_OF_SEQUENCE`` reply for (state, verb), or ``BAD_SEQUENCE``, and the state
does not change (RFC 5321 §4.1.4, RFC 4954 §4).

The few coupled rules that a table cannot express (authentication required
before MAIL, TLS required before AUTH, limits) live in the engine's handlers,
each with its RFC reference. ``docs/state-machine.md`` is generated from this
table (``python -m smtpgate.smtp.states``).
"""

from __future__ import annotations

from enum import Enum

from smtpgate.smtp import replies as R


class State(Enum):
    CONNECTED = "connected"  # greeting sent (or TLS just started); no EHLO yet
    GREETED = "greeted"  # EHLO/HELO done; no mail transaction
    MAIL = "mail"  # MAIL accepted, no RCPT yet
    RCPT = "rcpt"  # at least one RCPT accepted
    DATA = "data"  # reading message content
    BDAT = "bdat"  # reading the octets of an accepted BDAT chunk (RFC 3030)
    CHUNKS = "chunks"  # a BDAT message in progress, between chunks
    AUTH = "auth"  # inside a SASL exchange: lines are SASL responses
    TLS = "tls"  # STARTTLS accepted; waiting for the handshake
    CLOSED = "closed"


# Commands that are valid in each state, and the state they lead to when they
# succeed. A failed command leaves the state as it was.
_ANYTIME = {"NOOP": None, "QUIT": State.CLOSED, "VRFY": None, "HELP": None, "EXPN": None}
TRANSITIONS: dict[State, dict[str, State | None]] = {
    State.CONNECTED: {
        **_ANYTIME,
        "EHLO": State.GREETED,
        "HELO": State.GREETED,
        "STARTTLS": State.TLS,  # gsasl starts TLS before any EHLO
        "RSET": State.CONNECTED,
        "XCLIENT": State.CONNECTED,  # trusted proxies only; a new 220, EHLO again
    },
    State.GREETED: {
        **_ANYTIME,
        "EHLO": State.GREETED,
        "HELO": State.GREETED,
        "STARTTLS": State.TLS,
        "AUTH": State.GREETED,  # through State.AUTH while the exchange runs
        "MAIL": State.MAIL,
        "RSET": State.GREETED,
        "XCLIENT": State.CONNECTED,
    },
    State.MAIL: {
        **_ANYTIME,
        "EHLO": State.GREETED,  # RFC 5321 §4.1.4: EHLO resets the transaction
        "HELO": State.GREETED,
        "RCPT": State.RCPT,
        "RSET": State.GREETED,
        "STARTTLS": State.TLS,  # RFC 3207 §4.2: resets everything anyway
    },
    State.RCPT: {
        **_ANYTIME,
        "EHLO": State.GREETED,
        "HELO": State.GREETED,
        "RCPT": State.RCPT,
        "DATA": State.DATA,
        "BDAT": State.CHUNKS,  # through State.BDAT while its octets are read
        "RSET": State.GREETED,
        "STARTTLS": State.TLS,
    },
    State.CHUNKS: {
        **_ANYTIME,
        "BDAT": State.CHUNKS,  # LAST: through State.BDAT to State.GREETED
        "EHLO": State.GREETED,  # these three drop the message in progress
        "HELO": State.GREETED,
        "RSET": State.GREETED,
    },
}

#: Out-of-band moves: into an exchange and back, decided by the engine.
SPECIAL = {
    (State.GREETED, State.AUTH): "AUTH accepted a mechanism",
    (State.AUTH, State.GREETED): "SASL exchange ended",
    (State.RCPT, State.DATA): "DATA answered START_DATA (354)",
    (State.DATA, State.GREETED): "message ended (accepted or not)",
    (State.RCPT, State.BDAT): "first BDAT accepted: its octets are read",
    (State.CHUNKS, State.BDAT): "next BDAT accepted: its octets are read",
    (State.BDAT, State.CHUNKS): "chunk read, not LAST (250)",
    (State.BDAT, State.GREETED): "LAST chunk read, or the message refused",
    (State.TLS, State.CONNECTED): "TLS handshake completed (RFC 3207 §4.2 reset)",
}

#: Specific replies for commands out of sequence (Rule 2).
OUT_OF_SEQUENCE: dict[tuple[State, str], R.Reply] = {
    (State.CONNECTED, "MAIL"): R.NEED_EHLO,
    (State.CONNECTED, "AUTH"): R.NEED_EHLO,
    (State.CONNECTED, "RCPT"): R.NEED_MAIL,
    (State.CONNECTED, "DATA"): R.NEED_MAIL,
    (State.GREETED, "RCPT"): R.NEED_MAIL,
    (State.GREETED, "DATA"): R.NEED_MAIL,
    (State.MAIL, "MAIL"): R.NESTED_MAIL,
    (State.MAIL, "DATA"): R.NEED_RCPT,
    (State.MAIL, "AUTH"): R.AUTH_IN_TRANSACTION,
    (State.RCPT, "MAIL"): R.NESTED_MAIL,
    (State.RCPT, "AUTH"): R.AUTH_IN_TRANSACTION,
    (State.CONNECTED, "BDAT"): R.NEED_MAIL,
    (State.GREETED, "BDAT"): R.NEED_MAIL,
    (State.MAIL, "BDAT"): R.NEED_RCPT,
    (State.CHUNKS, "MAIL"): R.NESTED_MAIL,
    (State.CHUNKS, "DATA"): R.DATA_AFTER_BDAT,  # RFC 3030 §2
    (State.CHUNKS, "AUTH"): R.AUTH_IN_TRANSACTION,
}

KNOWN_VERBS = frozenset(v for table in TRANSITIONS.values() for v in table)


def render_markdown() -> str:
    """The table as Markdown, for docs/state-machine.md."""
    lines = [
        "# SMTP session states",
        "",
        "Generated from `smtpgate.smtp.states` by `python -m smtpgate.smtp.states`.",
        "",
        "| state | command | next state on success |",
        "|---|---|---|",
    ]
    for state, table in TRANSITIONS.items():
        for verb, nxt in sorted(table.items()):
            lines.append(f"| {state.value} | {verb} | {(nxt or state).value} |")
    lines += ["", "Out-of-band moves:", ""]
    for (a, b), why in SPECIAL.items():
        lines.append(f"- {a.value} -> {b.value}: {why}")
    lines += ["", "Any other command in a state gets a 503 5.5.1 reply and changes nothing,",
              "with two exceptions: MAIL, RCPT, DATA and BDAT before a login get 530 5.7.0",
              "whatever the state (RFC 6409 §4.3: `Authentication required`,",
              "or `Must issue a STARTTLS command first` in clear), so a probe learns",
              "nothing of the order; and a verb the server does not know gets 500 5.5.2.",
              "A command in its state may still be refused for its own reasons",
              "(docs/smtp.md: EXPN is 502 5.5.1, a malformed argument 501).",
              "A refused BDAT whose size could be read still has its octets read and",
              "discarded (never run as commands); one whose size cannot be read ends the",
              "session (501)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
