"""Every SMTP reply smtpgate sends, defined once (RFC 5321 §4.2, RFC 3463 codes).

Tests, logs and docs refer to these names. A grep-based test fails if a reply
string literal appears anywhere else in the package. Enhanced status codes are
on every 2xx/4xx/5xx reply (RFC 2034 §3); 3xx replies carry none.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: basic code, enhanced code (None for 3xx and greetings), text lines."""

    code: int
    enhanced: str | None
    text: str

    def with_text(self, text: str) -> Reply:
        """The same codes with other text (for replies that name a limit or an id)."""
        return Reply(self.code, self.enhanced, text)

    def format(self, extra_lines: tuple[str, ...] = ()) -> bytes:
        """Wire form; `extra_lines` become continuation lines after the first (EHLO)."""
        lines = [self.text, *extra_lines] if self.text or extra_lines else [""]
        out = []
        for i, line in enumerate(lines):
            sep = "-" if i < len(lines) - 1 else " "
            prefix = f"{self.code}{sep}"
            if self.enhanced is not None:
                prefix += self.enhanced + " "
            out.append(prefix + line + "\r\n")
        return "".join(out).encode("utf-8", "replace")

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        if self.enhanced:
            return f"{self.code} {self.enhanced} {self.text}"
        return f"{self.code} {self.text}"


# --- Connection -------------------------------------------------------------
# RFC 5321 §4.2: the greeting carries no enhanced code (RFC 2034 §3).
GREETING = Reply(220, None, "ESMTP smtpgate ready")
# RFC 5321 §4.1.1.10
BYE = Reply(221, "2.0.0", "Bye")
# RFC 5321 §3.8: the server is going down; the session ends.
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
# RFC 5321 §4.5.3.2: idle timeout.
TIMEOUT = Reply(421, "4.4.2", "Timeout waiting for command, closing connection")
# The same in the middle of a message (limits.data_timeout): no command was due.
DATA_TIMEOUT = Reply(421, "4.4.2", "Timeout waiting for message data, closing connection")
# A deadline passed (a command line, an AUTH exchange, DATA below its minimum
# rate, docs/smtp.md): a client that trickles bytes is hung up on, as Postfix's
# smtpd_per_record_deadline does.
TOO_SLOW = Reply(421, "4.4.2", "Too slow, closing connection")
# Too many errors in one session (chasquid closes after a few).
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
#: A logged-in session whose account was since locked, removed or given a new password.
LOGIN_REVOKED = Reply(421, "4.7.0", "Authentication no longer valid, closing connection")
# Connection limits (total and per client address).
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_CONNECTIONS_FROM_IP = Reply(
    421, "4.7.0", "Too many connections from your address, try again later"
)
CONNECTION_RATE_FROM_IP = Reply(
    421, "4.7.0", "Too many new connections from your address, try again in a minute"
)
# ALPACA-style cross-protocol attempts (an HTTP verb on an SMTP port).
HTTP_REFUSED = Reply(421, "4.7.0", "This is an SMTP server, closing connection")

# --- Generic --------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK")
NOOP_OK = Reply(250, "2.0.0", "OK")
RESET_OK = Reply(250, "2.0.0", "Reset state")
# RFC 5321 §4.1.1.6: VRFY may answer 252 without revealing anything.
VRFY_CANNOT = Reply(252, "2.1.5", "Cannot VRFY user, but will accept message and attempt delivery")
# RFC 5321 §4.1.1.8: information for the human at the keyboard; it used to point
# at https://smtpgate.invalid/docs, a name that never resolves (RFC 2606 §2). The
# engine sends it through `help_reply`, naming only what this session can use.
HELP = Reply(214, "2.0.0", "Commands:")


def help_reply(commands: tuple[str, ...]) -> Reply:
    """HELP naming ``commands``, the ones the session offers now (as EHLO does)."""
    return HELP.with_text(" ".join((HELP.text, *commands)))
# RFC 5321 §4.2.4
UNKNOWN_COMMAND = Reply(500, "5.5.2", "Command not recognized")
# RFC 5321 §4.5.3.1.4 / §4.5.3.1.6
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
# RFC 5321 §4.2.4
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
# RFC 5321 §4.2.4: bad sequence.
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_EHLO = Reply(503, "5.5.1", "Send EHLO or HELO first")
NEED_MAIL = Reply(503, "5.5.1", "Send MAIL first")
NEED_RCPT = Reply(503, "5.5.1", "Send RCPT first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
SYNTAX_EHLO = Reply(501, "5.5.4", "Syntax: EHLO hostname")
SYNTAX_HELO = Reply(501, "5.5.4", "Syntax: HELO hostname")
SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
SYNTAX_NO_ARGS = Reply(501, "5.5.4", "Syntax error, no parameters allowed")
BAD_ADDRESS = Reply(553, "5.1.3", "Address syntax error")
BAD_SENDER_ADDRESS = Reply(553, "5.1.7", "Sender address syntax error")
# RFC 5321 §4.1.1.11 / RFC 1870 §6: unknown MAIL/RCPT parameter.
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")
# A parameter given twice (Postfix: "503 5.5.4 Error: multiple AUTH= options"); 501
# as for any other bad argument (RFC 5321 §4.2.4 keeps 503 for command order).
DUPLICATE_PARAMETER = Reply(501, "5.5.4", "Duplicate MAIL/RCPT parameter")
NUL_IN_COMMAND = Reply(501, "5.5.2", "NUL characters are not allowed in SMTP commands")
# RFC 6531 §3.4: SMTPUTF8 content without the parameter.
UTF8_NOT_DECLARED = Reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
# RFC 6152: BODY= values.
BAD_BODY_PARAMETER = Reply(501, "5.5.4", "BODY must be 7BIT, 8BITMIME or BINARYMIME")
# RFC 3461 §4: a malformed RET, ENVID, NOTIFY or ORCPT.
BAD_DSN_PARAMETER = Reply(501, "5.5.4", "Malformed DSN parameter (RFC 3461)")

# --- EHLO/HELO ----------------------------------------------------------------
# EHLO and HELO replies carry no enhanced code (RFC 2034 §3); text filled per session.
EHLO_OK = Reply(250, None, "")
HELO_OK = Reply(250, None, "")

# --- STARTTLS (RFC 3207 §4) ---------------------------------------------------
STARTTLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
TLS_ALREADY_ACTIVE = Reply(554, "5.5.1", "TLS already active")
# RFC 3207 §4: what a server that insists on TLS answers.
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")

# --- AUTH (RFC 4954 §6) ---------------------------------------------------------
AUTH_SUCCESS = Reply(235, "2.7.0", "Authentication successful")
# RFC 4954 §4: continuation; the text is the base64 challenge (possibly empty).
AUTH_CHALLENGE = Reply(334, None, "")
# RFC 4954 §6: credentials invalid.
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
# RFC 4954 §6: temporary authentication failure; no 535 for a backend fault.
AUTH_TEMPFAIL = Reply(454, "4.7.0", "Temporary authentication failure, try again later")
# RFC 4954 §4: client sent "*".
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
# RFC 4954 §4: undecodable base64.
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Invalid base64 data")
# RFC 4954 §4: initial response on a server-first mechanism.
AUTH_UNEXPECTED_INITIAL = Reply(501, "5.7.0", "Initial response not allowed for this mechanism")
# RFC 4954 §4: unknown or disabled mechanism.
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication mechanism")
# RFC 4954 §4: second AUTH after success.
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
# RFC 4954 §4: AUTH inside a mail transaction.
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not permitted during a mail transaction")
# RFC 4954 §4: AUTH exchange line over the limit.
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
# RFC 4954 §6 / RFC 6409 §4.3: commands that need a login.
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
# Guard (brute force, spraying): a clear temporary refusal, not a misleading 535.
# RFC 4954 §6: 454 4.7.0 is the temporary authentication failure; RFC 3463 §3.8
# X.7.0 "other security status". The address or its subnet is blocked.
AUTH_BLOCKED = Reply(454, "4.7.0", "Too many failed logins, try again later")
# RFC 4954 §6, as above: the account is locked by the guard (for every address,
# or for addresses it never logged in from); names that are no account lock too.
AUTH_ACCOUNT_LOCKED = Reply(
    454, "4.7.0", "Too many failed logins for this account, try again later"
)
# RFC 4954 §6, as above: logins from new addresses to this account are spaced out.
AUTH_THROTTLED = Reply(454, "4.7.0", "Too many login attempts for this account, try again later")

# --- XCLIENT (Postfix XCLIENT_README) --------------------------------------------
# From a client the listener does not trust with it (xclient_trusted).
XCLIENT_DENIED = Reply(550, "5.7.0", "Insufficient authorization for XCLIENT")
XCLIENT_SYNTAX = Reply(501, "5.5.4", "Syntax: XCLIENT attribute=value ...")

# --- MAIL / RCPT / DATA -----------------------------------------------------------
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
# RFC 1870 §6: declared SIZE over the limit, or actual data over it.
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
# The header section is over smtp/data.py's MAX_HEADER_SECTION (docs/smtp.md): the
# From/Sender checks need all of it, and the session holds no more than that.
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header section exceeds fixed maximum size")
# RFC 5321 §4.5.3.1.10: too many recipients.
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
# SMTP smuggling defence: bare CR or LF inside message data.
BARE_LINE_ENDING = Reply(
    550, "5.6.11", "Message contains bare CR or LF characters; use CRLF line endings"
)
# RFC 5322 §2.2 / §4.1: no NUL in a header field (docs/smtp.md "NUL octets"); RFC
# 3463 X.6.0, other media error, as the content cannot be taken as it is.
NUL_IN_HEADER = Reply(554, "5.6.0", "Message header contains NUL characters")
# RFC 5322 §2.2.3: a folded line continues the field above it, and the first line
# of a message has none but the ones the servers prepend (Received, Return-Path,
# a Date or Message-ID added): it would become part of smtpgate's own field.
FOLDED_FIRST_LINE = Reply(554, "5.6.0", "Message begins with white space: a header line cannot be folded into nothing")
# RFC 5321 §6.3: more Received fields than data.MAX_HOPS, a mail loop; RFC 3463
# §3.5 X.4.6 "routing loop detected" (Postfix: "554 5.4.6 Too many hops").
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops (Received fields), mail loop suspected")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "OK queued")
# --- BDAT (RFC 3030) ----------------------------------------------------------------
# RFC 3030 §2: each chunk but the LAST is answered 250 once its octets are read.
CHUNK_RECEIVED = Reply(250, "2.0.0", "Chunk received")
# RFC 3030 §2: "BDAT" SP chunk-size [SP "LAST"]. Without a size the chunk's end is
# unknown, so the session ends (nothing after it can be told from data).
BDAT_SYNTAX = Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]; closing connection")
# RFC 3030 §2: a server offering PIPELINING "MUST be prepared to accept and discard
# additional BDAT chunks already in the pipeline after the failed BDAT": each is
# read, dropped and answered this, up to the LAST (Postfix: 551 5.0.0 Discarded).
CHUNK_DISCARDED = Reply(503, "5.5.1", "Chunk discarded after an earlier error")
# RFC 3030 §2: DATA and BDAT may not be mixed in one transaction.
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed after BDAT in this transaction")
# RFC 3030 §3: DATA after MAIL ... BODY=BINARYMIME MUST get 503.
BINARYMIME_NEEDS_BDAT = Reply(503, "5.5.1", "BODY=BINARYMIME requires BDAT, not DATA")
# RFC 5321 §4.1.1.11: a parameter value not implemented here (the next hop may not
# carry binary content: EngineSettings.binarymime).
BINARYMIME_NOT_OFFERED = Reply(555, "5.5.4", "BODY=BINARYMIME not offered here: use 8BITMIME")
# RFC 5321 §4.2.2, RFC 3463 X.3.1: the spool's file system is (nearly) full, at
# MAIL (queue.min_free_space, RFC 1870 §6.2 for a declared SIZE) or at the end of
# the data; the client keeps the message and tries again later (queue/space.py).
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")
# The spool could not make the message durable; the client keeps it.
QUEUE_FAILED = Reply(451, "4.3.0", "Local error in processing, message not accepted")
# RFC 6409 §6.1: the login may not use this sender. RFC 5321 §4.2.2: 553
# "mailbox name not allowed"; RFC 3463 §3.8: X.7.1 "delivery not authorized".
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by the authenticated user")
# RFC 6409 §6.1 for the From header, refused after the end of data: RFC 5321
# §4.3.2 lists 550 (not 553) among the replies to DATA for policy rejections.
FROM_NOT_OWNED = Reply(550, "5.7.1", "From header address not owned by the authenticated user")
# The same for the Sender field (RFC 5322 §3.6.2), checked when present.
SENDER_HEADER_NOT_OWNED = Reply(
    550, "5.7.1", "Sender header address not owned by the authenticated user"
)
# The same for a resent message's Resent-From and Resent-Sender fields (RFC 5322
# §3.6.6: the resender's addresses, as From and Sender are the author's).
RESENT_FROM_NOT_OWNED = Reply(
    550, "5.7.1", "Resent-From header address not owned by the authenticated user"
)
RESENT_SENDER_NOT_OWNED = Reply(
    550, "5.7.1", "Resent-Sender header address not owned by the authenticated user"
)
# RFC 5322 §3.6: every message has a From field; RFC 6409 §6.3 lets an MSA refuse
# message data that breaks RFC 5322 with 554. RFC 3463 §3.7: X.6.0 "other or
# undefined media error".
FROM_MISSING = Reply(554, "5.6.0", "Message has no From header")
# Per-identity sending rates: RFC 5321 §4.2.5 450 (temporary, the client retries
# later) with RFC 3463 §3.8 X.7.1 "delivery not authorized, message refused".
MESSAGE_RATE_EXCEEDED = Reply(
    450, "4.7.1", "Message rate limit reached for this account, try again later"
)
RECIPIENT_RATE_EXCEEDED = Reply(
    450, "4.7.1", "Recipient rate limit reached for this account, try again later"
)
# The same, when the limit reached is the app password's own (its account may send
# more with another app password or its own password).
APP_MESSAGE_RATE_EXCEEDED = Reply(
    450, "4.7.1", "Message rate limit reached for this app password, try again later"
)
APP_RECIPIENT_RATE_EXCEEDED = Reply(
    450, "4.7.1", "Recipient rate limit reached for this app password, try again later"
)
# The Postfix policy service: the account Postfix logged in is locked, or its
# conditional access does not allow this address (RFC 3463 §3.8 X.7.1); the
# reason goes to the log only, as for a refused AUTH.
ACCOUNT_MAY_NOT_SEND = Reply(550, "5.7.1", "Sending not allowed for this account")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
# Unexpected internal error: logged with traceback, client sees no detail.
INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error, try again later")
# MAIL (or a Postfix policy request) needs the account's sender profile and the
# account database (SQLite locked or missing, PostgreSQL or the LDAP directory
# down) cannot give it: RFC 5321 §4.2.2 451 "local error in processing" (the
# client keeps the message and retries); RFC 3463 §3.5 X.4.3 "directory server
# failure", the persistent transient error of a look-up service being down, so
# neither the client nor an administrator reading its log takes it for a
# software fault (X.3.0, INTERNAL_ERROR). The cause goes to the server log.
ACCOUNTS_UNAVAILABLE = Reply(451, "4.4.3", "Account database unavailable, try again later")
