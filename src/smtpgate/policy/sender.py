"""Sender ownership: which addresses an authenticated account may send as.

What Postfix calls ``smtpd_sender_login_maps`` with
``reject_sender_login_mismatch``: RFC 6409 §6.1 lets a submission server
refuse or fix a sender the user is not allowed to use. An account owns its own
address, its aliases (``smtpgate user alias add``) and every address in the
domains granted to it (``smtpgate user domain grant``): its
`smtpgate.auth.sender_profile.SenderProfile`, which the account directory
provides. The check applies to the envelope sender (MAIL FROM) and to the From
and Sender header fields; this module reads those fields and decides both.

The decisions are functions of the principal's profile and the envelope (or the
message's header section) that return a reply or None, so that every front door
that submits or vets mail (the SMTP session; a Postfix policy service next)
applies the same rule. Each refusal, and each mismatch ``log`` mode lets
through, is logged.

Reading From and Sender (docs/policy.md, "The From and Sender headers")
-----------------------------------------------------------------------
What a reader shows as the author must be an address the account owns, so the
check reads the header section the way the most lenient reader would, and
refuses what it cannot read:

- *Which lines are From and Sender fields* is hand-written (one regular
  expression): Python's ``email`` parser does not accept RFC 5322 §4.5.1's
  obsolete ``From :`` / ``From<TAB>:`` (white space before the colon, which
  Postfix and many readers take as From): it files the first as a Unix "From "
  line and ends the header section at the second, so a forged From could pass
  unseen. Every line of the whole header section is looked at (up to the first
  empty line, RFC 5322 §2.1; all of it if there is none), a field's folded
  lines are unfolded (§2.2.3), and field names match in any case. The engine
  bounds the section's size (``smtp/data.py``, 552 5.3.4), not this module.
- *The addresses in a field* come from ``email.headerregistry`` (RFC 5322
  address lists with groups, comments, quoted strings, route addresses and the
  obsolete list forms; RFC 2047 encoded words in display names; RFC 6532
  UTF-8). A value it reads only with a defect other than obsolete syntax (two
  addresses where one is allowed, unbalanced brackets, control characters) is
  unreadable, and an unreadable field owns nothing.
- *Anything that looks like an address* (``local@domain.tld``, or with a domain
  of one label: ``ceo@localhost``, ``admin@intranet``) anywhere in the
  field, in a display name, a comment or an encoded word once decoded, must be
  owned too: readers differ in what they show (``"ceo@bank.example"
  <alice@example.org>``), and a display name naming someone else's address is
  the spoof this check exists to stop. That text is also looked for in the
  field's NFKC form, where a look-alike "@" or "." (``\uff20`` FULLWIDTH
  COMMERCIAL AT, ``\ufe6b`` SMALL COMMERCIAL AT, ``\uff0e``) is the real one:
  ``"ceo\uff20bank.example" <alice@example.org>`` shows a reader the address.
  And in the form a reader draws: without the characters it draws as nothing
  (Unicode's default-ignorable code points: zero-width space, soft hyphen,
  joiners, bidi controls, variation selectors), and with IDNA's other full stops
  (``\u3002``, ``\uff61``; UTS #46 maps them to ".") as ".":
  ``"ceo\u200b@bank.example" <alice@example.org>`` shows ``ceo@bank.example``.
  Quotes and backslashes are removed there too: a display name
  ``"\\"ceo\\"@bank.example"`` shows the quoted-local-part form of that address.

A message with no From field (RFC 5322 §3.6 requires one) is refused unless
``policy.allow_missing_from_header`` says otherwise; a Sender field is checked
when present.

A message sent on again (mutt's bounce, a client's "redirect") keeps its From and
Sender and gets a resent block (RFC 5322 §3.6.6): Resent-From names who sent it
on, Resent-Sender who did so for them, and these are checked as From and Sender
are. Each further resending puts its block on top, so only the topmost block is
the account's: the Resent-From and Resent-Sender fields before the second
Resent-From or Resent-Date field (each block has one of each, §3.6.6); the blocks
below record earlier resenders, as Received fields record earlier hops.
"""

from __future__ import annotations

import email.header
import email.policy
import functools
import logging
import re
import unicodedata
from email.errors import NonASCIILocalPartDefect, ObsoleteHeaderDefect

from smtpgate import metrics
from smtpgate.auth.authlog import neutralize
from smtpgate.auth.names import INVISIBLE
from smtpgate.auth.sender_profile import SenderProfile
from smtpgate.config import PolicyConfig
from smtpgate.smtp import replies as R

log = logging.getLogger("smtpgate.policy")

#: The fields whose addresses the account must own (the resent ones: the topmost block).
CHECKED_FIELDS = ("From", "Sender", "Resent-From", "Resent-Sender")

# RFC 5322 §3.6.2 from/sender and §3.6.6 resent-from/resent-sender (resent-date
# delimits a resent block) with §4.5.1's obsolete forms (*WSP before the colon); a
# field starts a line, and its folded lines start with WSP (§2.2.3).
#
# A field name is printable ASCII (§3.6.8 ftext), but lenient readers trim what is
# around it: Thunderbird's JSMime takes the text before the colon and calls
# JavaScript's trim(), which removes a vertical tab, a form feed, a no-break space
# or a BOM as well as SP and TAB, so ``From<VT>: x``, ``<FF>From: x`` and a header
# section whose first line is `` From: x`` (no field before it to continue) are
# From fields to it. Any octet that is no part of a name (controls, white space,
# non-ASCII) may stand there; SP and TAB cannot start a line after the first,
# since there they fold the field above (§2.2.3).
# A line start is found as the LF before it (`header_fields` puts one before the
# first line, less its leading SP and TAB), not as "^" with MULTILINE: the regex
# engine then skips from LF to LF, about twice as fast.
_PAD = rb"[\x00-\x09\x0b\x0c\x0e-\x20\x7f-\xff]"
_FIELD = re.compile(
    rb"\n(?:[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]" + _PAD + rb"*)?"
    rb"(from|sender|resent-from|resent-sender|resent-date)" + _PAD + rb"*:"
    rb"([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)",
    re.IGNORECASE,
)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# Something a reader may show as an address: dot-atom text, "@", a domain, dotted
# or not: "ceo@localhost" or "admin@intranet" in a display name is an address to a
# reader on a network where single-label names resolve (RFC 5321 §2.3.5 wants
# fully qualified names on the wire; a display name is not the wire), and it
# looked like one before a dot was required. The local part is bounded, or a long run of its characters not followed by "@"
# is rescanned from each of its positions (quadratic: found by fuzzing). A longer
# run still matches, as its last 65 characters: never an address anyone owns
# (RFC 5321 §4.5.3.1.1 limits a local part to 64 octets).
_ADDRESS_LIKE = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]{1,65}@[\w-]+(?:\.[\w-]+)*")
# What a reader draws as nothing (Unicode's default-ignorable code points, less
# the unassigned ranges): removed before the address-like search of a field's
# drawn form.
_INVISIBLE = INVISIBLE
# UTS #46 maps these full stops to "." in a domain (NFKC makes U+FF61 U+3002).
_FULL_STOPS = str.maketrans({"\u3002": "."})


# A quoted local part ('"ceo"@bank.example', RFC 5322 §3.4.1) is the address
# without its quotes; a quote or a backslash is never part of an address-like run.
_QUOTING = re.compile(r'["\\]')


def _drawn(text: str) -> str:
    """``text`` as a reader draws it, for the address-like search: look-alike "@"
    and "." made real (NFKC, IDNA's full stops), invisible characters, quotes and
    backslashes removed."""
    text = _QUOTING.sub("", _INVISIBLE.sub("", text))
    return unicodedata.normalize("NFKC", text).translate(_FULL_STOPS)


def header_section(message: bytes) -> bytes:
    """The header section of ``message`` (each field's CRLF included, not the empty
    line): everything before the first empty line (RFC 5322 §2.1), all of it if
    there is none. Given a header section, returns it unchanged."""
    if message.startswith(b"\r\n"):
        return b""  # no header fields at all
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def header_fields(message: bytes, name: str) -> list[str]:
    """The unfolded values of every ``name`` field (From or Sender; Resent-From or
    Resent-Sender: of the topmost resent block only) in the header section of
    ``message``, in order; a value that is not UTF-8 becomes "\ufffd" text, which
    owns nothing."""
    wanted = name.lower().encode()
    resent = wanted.startswith(b"resent-")
    seen: dict[bytes, int] = {}
    out = []
    for m in _FIELD.finditer(b"\n" + header_section(message).lstrip(b" \t")):
        field = m[1].lower()
        if resent and field in (b"resent-from", b"resent-date"):
            seen[field] = seen.get(field, 0) + 1
            # An earlier resending's block (RFC 5322 §3.6.6) starts at the second
            # Resent-From, or at the second Resent-Date once the top block has
            # its Resent-From: a block of only a Resent-Date would otherwise push
            # the first Resent-From, the one a reader shows, out of the check.
            if seen[field] > 1 and (field == b"resent-from" or b"resent-from" in seen):
                break
        if field == wanted:
            out.append(_FOLD.sub("", m[2].decode("utf-8", "replace")))
        # A bare LF is refused or made CRLF by the engine; either way a field
        # cannot hide behind one here, since every LF starts a line.
    return out


#: The longest From or Sender value handed to the stdlib's header parser, and the
#: most characters of such values per message: that parser takes time quadratic in
#: some values (8,000 dots: about a second; found by fuzzing), and a real author
#: list is far shorter (RFC 5322 wants lines under 78 characters; a From naming a
#: hundred people is about 4,000). A longer value is unreadable, which owns
#: nothing: the message is refused (docs/policy.md).
MAX_FIELD_CHARS = 4096
MAX_PARSED_CHARS = 8192


#: Field values whose addresses are remembered per process (`field_addresses`):
#: a sender's From is the same in message after message, and the stdlib parser
#: costs ~80 us of a session's event loop per message (issue 13, bench/README.md).
#: Bounded: at most this many values of at most ``MAX_FIELD_CHARS`` each (~1 MB).
PARSED_CACHE_SIZE = 256


def field_addresses(value: str, name: str = "From") -> list[str]:
    """Every address a reader could take from one field value: the mailboxes, and
    anything address-like in display names and comments. "" stands for a value
    with no mailbox, one that does not parse cleanly, or one over
    ``MAX_FIELD_CHARS``: it owns nothing."""
    if len(value) > MAX_FIELD_CHARS:
        return [*dict.fromkeys(a.rstrip(".") for a in _ADDRESS_LIKE.findall(value)), ""]
    return list(_parsed_addresses(value, name))


#: What the stdlib parser calls a defect but a reader takes as an address: RFC 5322
#: §4.5's obsolete syntax, and a UTF-8 local part, which RFC 6532 §3.2 allows (an
#: account named ``jörg@example.org`` sends ``From: Jörg <jörg@example.org>``).
_HARMLESS_DEFECTS = (ObsoleteHeaderDefect, NonASCIILocalPartDefect)


@functools.lru_cache(maxsize=PARSED_CACHE_SIZE)
def _parsed_addresses(value: str, name: str) -> tuple[str, ...]:
    """`field_addresses` of a value the parser may read; a pure function of its
    arguments, so remembered (`PARSED_CACHE_SIZE`)."""
    try:
        parsed = email.policy.default.header_factory(name, value)
        mailboxes = [a.addr_spec for a in parsed.addresses]
        clean = not any(not isinstance(d, _HARMLESS_DEFECTS) for d in parsed.defects)
        shown = str(parsed)
    # Any exception: the stdlib parser has raised more than HeaderParseError on
    # hostile input (TypeError on white space before an obsolete phrase that starts
    # with ".", `From:  .x <a@b.c>`, found by fuzzing). Whatever it cannot read is
    # unreadable, which owns nothing: a refusal, never a 451 the client retries.
    except Exception:  # noqa: BLE001
        mailboxes, clean, shown = [], False, ""
    try:
        decoded = _decoded_words(value)
    except Exception:  # noqa: BLE001 - as above
        decoded, clean = "", False
    out = list(dict.fromkeys(mailboxes))
    texts = (value, shown, decoded)
    # NFKC: a look-alike "@" or "." (fullwidth, small form) shows as the real one;
    # the drawn form: an address split by invisible characters shows whole.
    drawn = (*(unicodedata.normalize("NFKC", t) for t in texts), *(_drawn(t) for t in texts))
    for text in (*texts, *drawn):
        out += [a.rstrip(".") for a in _ADDRESS_LIKE.findall(text) if a not in out]
    if not mailboxes or not clean or "\ufffd" in value:
        out.append("")
    return tuple(dict.fromkeys(out))


def _decoded_words(value: str) -> str:
    """``value`` with its RFC 2047 encoded words decoded, wherever they stand.

    ``make_header`` reads the text between encoded words as ASCII, and RFC 6532
    lets it be UTF-8: ``=?utf-8?q?J=C3=B6rg?= <jörg@münchen.example>`` (an
    encoded display name beside a UTF-8 address) raised UnicodeDecodeError, and
    the From of an account that owned it was unreadable, refused 550 5.7.1
    (found by the h29i18n review). ``decode_header`` hands that text back in
    ``raw-unicode-escape``, which gives it back as it was."""
    if value.isascii():
        return str(email.header.make_header(email.header.decode_header(value)))
    return "".join(
        part if isinstance(part, str)
        else part.decode(charset or "raw-unicode-escape")
        for part, charset in email.header.decode_header(value)
    )


def header_from_addresses(message: bytes) -> list[str] | None:
    """The addresses of the From field(s) of ``message`` (a whole message or its
    header section); None if it has none. See `field_addresses`."""
    return _addresses(message, "From")


def header_sender_addresses(message: bytes) -> list[str]:
    """Every address of the fields ``from_header_refusal`` checks (From, Sender,
    and the topmost resent block's), for the look-up of those only a domain grant
    covers before it runs."""
    return [a for f in CHECKED_FIELDS for a in _addresses(message, f) or () if a]


def _addresses(message: bytes, name: str) -> list[str] | None:
    values = header_fields(message, name)
    if not values:
        return None
    if sum(len(v) for v in values) > MAX_PARSED_CHARS:
        # Too much for the parser in all (several fields): unreadable as a whole.
        return [*dict.fromkeys(a.rstrip(".") for v in values for a in _ADDRESS_LIKE.findall(v)), ""]
    return list(dict.fromkeys(a for v in values for a in field_addresses(v, name)))


def envelope_sender_refusal(
    profile: SenderProfile, sender: str, policy: PolicyConfig, *, where: str
) -> R.Reply | None:
    """MAIL FROM: the refusal for a ``sender`` the account does not own (``""`` is
    the null sender), or None. ``where`` starts the log line (session, client)."""
    mode = policy.sender_ownership
    if mode == "off":
        return None
    owned = profile.owns(sender) if sender else policy.allow_null_sender
    if owned:
        return None
    # The client wrote the address (Postfix passes an SMTPUTF8 one as sent, and a
    # quoted-pair's control character raw): escaped, as the auth log escapes names.
    log.warning(
        "%s: user=%s MAIL FROM:<%s> not owned by the account%s",
        where, neutralize(profile.name), neutralize(sender),
        "" if mode == "enforce" else " (logged only)",
    )
    metrics.sender_policy_violation("mail_from", mode == "enforce")
    return R.SENDER_NOT_OWNED if mode == "enforce" else None


def from_header_refusal(
    profile: SenderProfile, header: bytes, policy: PolicyConfig, *, where: str
) -> R.Reply | None:
    """End of DATA: the refusal for a From, Sender, Resent-From or Resent-Sender
    field naming an address the account does not own, or for a message without
    From, or None.

    ``header`` is the message's header section (a whole message does as well:
    its header section is what is read). The module docstring says how it is read.
    """
    mode = policy.from_header
    if mode == "off":
        return None
    enforce = mode == "enforce"
    found = header_from_addresses(header)
    if found is None and not policy.allow_missing_from_header:
        log.warning("%s: user=%s message has no From header%s",
                    where, neutralize(profile.name), "" if enforce else " (logged only)")
        metrics.sender_policy_violation("no_from", enforce)
        if enforce:
            return R.FROM_MISSING
    for field, addresses, reply in (
        ("From", found, R.FROM_NOT_OWNED),
        ("Sender", _addresses(header, "Sender"), R.SENDER_HEADER_NOT_OWNED),
        ("Resent-From", _addresses(header, "Resent-From"), R.RESENT_FROM_NOT_OWNED),
        ("Resent-Sender", _addresses(header, "Resent-Sender"), R.RESENT_SENDER_NOT_OWNED),
    ):
        bad = [a or "(unreadable)" for a in addresses or () if not profile.owns(a)]
        if bad:
            log.warning(
                "%s: user=%s %s: %s not owned by the account%s",
                where, neutralize(profile.name), field, ", ".join(neutralize(a) for a in bad),
                "" if enforce else " (logged only)",
            )
            metrics.sender_policy_violation(field.lower().replace("-", "_"), enforce)
            if enforce:
                return reply
    return None
