"""Account names: one canonical spelling of ``local@domain`` per account.

Both parts are lower-cased. The domain is case-insensitive (RFC 5321 §2.4). The
local part is the receiving host's to interpret (same section), and a login name is
no mailbox: people type ``Alice@example.org`` from a business card, mail readers
show ``ALICE@example.org`` as alice's, and Dovecot sites match logins without case
(``auth_username_format = %Lu``). So ``Alice@x``, ``ALICE@x`` and ``alice@x`` are
one account, stored once as ``alice@x``, with one guard count and one SCRAM salt
(a capitalisation that found another account or a decoy would tell a prober which
names exist). Databases from before this rule are brought to it when they are
upgraded (``auth/store.py`` v7, ``auth/postgres_schema.py`` v6).

An internationalised domain has two spellings, its U-labels (``bücher.example``)
and its A-labels (``xn--bcher-kva.example``, RFC 5890 §2.3.2.1), and they are
one domain: DNS sees only the A-label, and a client without SMTPUTF8 can only
send that (RFC 6531 §3.2). The canonical spelling is the U-label one, in
Unicode NFC (what an administrator types and reads; RFC 5891 §5.3 maps input to
NFC): ``user@xn--bcher-kva.example`` and ``user@bücher.example`` are one
account, stored once. Databases from before this rule are brought to it when
they are upgraded (``auth/store.py`` v5, ``auth/postgres_schema.py`` v4).
"""

from __future__ import annotations

import functools
import re
import unicodedata

from smtpgate.sasl.saslprep import SaslprepError, saslprep

# RFC 5321 §4.5.3.1.1-2: size limits of a local part and a domain, in octets.
MAX_LOCAL_OCTETS = 64
MAX_DOMAIN_OCTETS = 255
MAX_LABEL_OCTETS = 63


class InvalidAccountName(ValueError):
    """The name is not a usable ``local@domain`` address; the message says why."""


@functools.lru_cache(maxsize=1024)
def canonical_name(name: str) -> str:
    """Validate ``name`` and return its canonical spelling.

    Remembered per process (a pure function of the string; an invalid name is
    not remembered and raises each time): every MAIL, RCPT, From check and login
    asks again for the same few names (bench/README.md, workload B). 1,024
    names of at most a command line each: well under a megabyte.

    Raises:
        InvalidAccountName: not ``local@domain``, or a part is empty, too long,
            or holds whitespace or control characters.
    """
    local, at, domain = name.rpartition("@")
    if not at or not local or not domain:
        raise InvalidAccountName(f"{name!r} is not an address of the form local@domain")
    local = local.lower()
    if not local.isascii():
        # Lower case can decompose ("J̌" to "j" + U+030C, where the name typed in
        # lower case has the one letter U+01F0): one account, one spelling.
        local = unicodedata.normalize("NFC", local)
    _check_local(local)
    domain = domain.lower()
    if not domain.isascii():
        domain = unicodedata.normalize("NFC", domain)
    _check_domain(domain)
    return f"{local}@{unified_domain(domain)}"


# RFC 5321 §4.1.2: an Atom's atext is letters, digits and these; RFC 6531 §3.3 adds
# any non-ASCII character (UTF8-non-ascii). Anything else needs a quoted local part.
_ATEXT_SYMBOLS = frozenset("!#$%&'*+-/=?^_`{|}~")


def new_account_name(name: str) -> str:
    """The canonical spelling of ``name`` for a new account, which must also be a
    mailbox a client can give as MAIL FROM.

    ``canonical_name`` only makes a name one spelling, and stays that loose so that
    accounts made before this rule still answer to every command. An account whose
    local part is no RFC 5321 Dot-string (``a)b(c@x``: specials outside quotes) can
    log in but never send as itself, only from its aliases; a new one is refused.
    Quoted local parts are already refused by ``canonical_name`` (nobody logs in
    with one, and Postfix and Dovecot sites use plain dot-atoms). The domain rules
    of ``canonical_name`` are already stricter than RFC 5321's (no address
    literals, no ``_``).

    Raises:
        InvalidAccountName: saying which characters are not allowed.
    """
    key = canonical_name(name)
    problem = mailbox_problem(key) or invisible_problem(key)
    if problem:
        raise InvalidAccountName(problem)
    return key


#: What a reader draws as nothing: Unicode's Default_Ignorable_Code_Point
#: (DerivedCoreProperties.txt), less the unassigned ranges no renderer has a glyph
#: for anyway (the zero-width space, soft hyphen, joiners, bidi controls,
#: variation selectors, the combining grapheme joiner, the Hangul fillers).
INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
#: Drawn as a blank though no space (a symbol): the braille pattern with no dots.
_BLANK = "\u2800"


def invisible_problem(name: str) -> str | None:
    """Why ``name`` (canonical) may not be a new account's name or an alias: it
    holds a character a reader draws as nothing or as a blank, so it would read
    as another name (``alice<U+115F>@example.org`` as ``alice@example.org``);
    None if it holds none. ``canonical_name`` refuses the format characters among
    them (Cf) for every name; these others (a Hangul filler is a letter, U+034F and
    the variation selectors are marks, U+2800 a symbol) it takes, so that names
    stored before this rule still answer."""
    found = dict.fromkeys(c for c in name if c == _BLANK or INVISIBLE.match(c))
    if not found:
        return None
    shown = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, '?')}" for c in found)
    return (f"{name!r} holds {shown}, which a mail reader draws as nothing or as a "
            "blank, so the name would read as another")


def mailbox_problem(name: str) -> str | None:
    """Why the canonical account ``name`` cannot be a MAIL FROM (RFC 5321 §4.1.2
    Dot-string local part), or None if it can."""
    local = name.rpartition("@")[0]
    bad = sorted({c for c in local if c.isascii() and not c.isalnum()
                  and c != "." and c not in _ATEXT_SYMBOLS})
    if not bad:
        return None
    shown = " ".join(repr(c) for c in bad)
    return (f"{name!r}: the local part holds {shown}, which RFC 5321 §4.1.2 allows "
            "only in a quoted local part, so the account could never send mail as "
            "itself; use letters, digits, dots and !#$%&'*+-/=?^_`{|}~")


def unified_domain(domain: str) -> str:
    """``domain`` (valid, lower case, NFC) in its one spelling: each A-label whose
    U-label is a valid label of ours written as that U-label.

    ASCII without an A-label (nearly every domain) comes back as it is, at the
    cost of one scan."""
    if domain.isascii() and "xn--" not in domain:
        return domain
    labels = u_labels(domain).split(".")
    for i, label in enumerate(labels):
        # A U-label we would refuse typed as such (a symbol, an emoji) stays an A-label.
        if not label.isascii() and not _good_label(label):
            labels[i] = "xn--" + label.encode("punycode").decode("ascii")
    return ".".join(labels)


@functools.lru_cache(maxsize=256)
def u_labels(domain: str) -> str:
    """``domain`` (lower case) with each A-label (``xn--`` and Punycode, RFC 3492)
    as its U-label. A label that is not the exact Punycode encoding of its
    decoding stays as it is, so no two spellings map to one domain unless DNS sees
    them as one."""
    labels = domain.split(".")
    for i, label in enumerate(labels):
        if label.startswith("xn--"):
            try:
                decoded = label[4:].encode("ascii").decode("punycode")
                if decoded.encode("punycode").decode("ascii") == label[4:] and not decoded.isascii():
                    labels[i] = decoded
            except (UnicodeError, ValueError):
                pass
    return ".".join(labels)


def a_label_spelling(name: str) -> str:
    """A canonical ``local@domain`` with each non-ASCII label of its domain as its
    A-label: how a directory that holds only ASCII (LDAP's ``mail`` is an
    IA5String) stores it."""
    local, _, domain = name.rpartition("@")
    labels = [
        label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
        for label in domain.split(".")
    ]
    return f"{local}@{'.'.join(labels)}"


def _good_label(label: str) -> bool:
    return (
        bool(label) and len(label.encode("utf-8")) <= MAX_LABEL_OCTETS
        and all(c == "-" or c.isalnum() for c in label)
        and not label.startswith("-") and not label.endswith("-")
        and label == label.lower() and unicodedata.is_normalized("NFC", label)
    )


def unified_spelling(stored: str) -> str:
    """A stored account name, alias (``local@domain``) or granted domain with its
    domain in the one spelling (``unified_domain``) and its local part in lower case; what the
    schema upgrades rename rows written before the rule to. Something that is
    not a valid domain comes back unchanged."""
    local, at, domain = stored.rpartition("@")
    domain = unicodedata.normalize("NFC", domain.lower())
    try:
        _check_domain(domain)
    except InvalidAccountName:
        return stored
    return f"{local.lower()}{at}{unified_domain(domain)}"


def lookup_key(name: str) -> str:
    """The canonical spelling if ``name`` is valid, else ``name`` unchanged.

    For look-ups of client-supplied names: an invalid name simply matches no
    account, which the caller reports like any unknown account.
    """
    try:
        return canonical_name(name)
    except InvalidAccountName:
        return name


def prepared_name(name: str) -> str:
    """``name`` SASLprep'd (query rules) and canonical; ``name`` if SASLprep refuses
    it. What every login path looks an account up by (``auth/service.py``), so the
    one spelling the guard counts a name under: ``bob@example.org`` typed with a
    zero-width space, a soft hyphen or full-width letters is ``bob@example.org``."""
    try:
        return lookup_key(saslprep(name, allow_unassigned=True)) or name
    except SaslprepError:
        return name


def login_spellings(name: str) -> tuple[str, ...]:
    """The spellings an account is looked up by for the name ``name`` a person
    typed, in order: as given (an account whose name SASLprep would change still
    answers to its own spelling), then ``prepared_name`` (``ａｌｉｃｅ@example.org``
    in full-width letters finds ``alice@example.org``). The login path
    (``auth/service.py``) and the account commands (``admin.py``) find accounts
    by these, so a spelling that logs in is one the commands find too."""
    prepared = prepared_name(name)
    return (name,) if prepared == name else (name, prepared)


def name_key(name: str) -> str:
    """The one spelling a client-supplied name is counted and salted under when it
    may be no account: the canonical one for an address (``lookup_key``), and a
    plain name (no ``@``: an LDAP ``uid``, AD's ``sAMAccountName``) in lower case.

    A directory finds a plain login name without letter case
    (``ldap_directory._is_login``), so every capitalisation of a real one reaches
    its account, its one guard count and its one SCRAM salt. An unknown name must
    behave the same, or ``GHOST`` after three guesses at ``ghost`` (a fresh count,
    ``535``, where a real uid gets ``454``), or two salts where a real uid shows
    one, would tell a prober which names exist. A name with an ``@`` that is no
    valid address is compared as it is, by the directory as here.
    """
    return name.lower() if "@" not in name else lookup_key(name)


def hidden_characters_only(name: str) -> bool:
    """True when ``name`` is refused by ``canonical_name`` for its whitespace or
    control characters alone, and is a valid address but for them: a legacy
    account name (stored before names were checked, or by hand) that the account
    commands must still be able to reach, as stored."""
    if not any(_bad_char(c) for c in name):
        return False
    try:
        canonical_name("".join("x" if _bad_char(c) else c for c in name))
    except InvalidAccountName:
        return False
    return True


def _bad_char(c: str) -> bool:
    return c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")


def _octets(part: str, what: str) -> int:
    """The UTF-8 length of ``part``. A lone surrogate is no character of any name
    (JSON's ``"\\ud800"`` in a token's claim, which an issuer that keeps names in
    UTF-16 may let a user set; argv's undecodable bytes); it made ``encode`` raise
    UnicodeEncodeError where callers expect InvalidAccountName: the bearer login
    got 454 and a traceback in the log, not a refusal."""
    try:
        return len(part.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidAccountName(f"{what} is not Unicode text (a lone surrogate)") from None


def _check_local(local: str) -> None:
    if _octets(local, "local part") > MAX_LOCAL_OCTETS:
        raise InvalidAccountName(f"local part longer than {MAX_LOCAL_OCTETS} octets")
    if any(_bad_char(c) for c in local):
        raise InvalidAccountName("local part holds whitespace or control characters")
    # Quoted local parts ("a b"@x) are legal in RFC 5321 but nobody logs in with
    # one; refusing '@' and '"' keeps the split at the last '@' unambiguous.
    if '"' in local:
        raise InvalidAccountName("quoted local parts are not supported")
    if "@" in local:  # alice@example.org@example.org: a domain pasted twice
        raise InvalidAccountName(f"{local!r} before the last '@' holds another '@'")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidAccountName("local part has a leading, trailing or double dot")


def _check_domain(domain: str) -> None:
    if _octets(domain, "domain") > MAX_DOMAIN_OCTETS:
        raise InvalidAccountName(f"domain longer than {MAX_DOMAIN_OCTETS} octets")
    for label in domain.split("."):
        if not label or len(label.encode("utf-8")) > MAX_LABEL_OCTETS:
            raise InvalidAccountName(f"domain {domain!r} has an empty or overlong label")
        # Letters, digits and hyphens (RFC 1035 LDH), plus non-ASCII letters and
        # digits so that internationalised domains in U-label form are accepted.
        if not all(c == "-" or c.isalnum() for c in label):
            raise InvalidAccountName(f"domain {domain!r} holds a character not allowed")
        if label.startswith("-") or label.endswith("-"):
            raise InvalidAccountName(f"domain label {label!r} starts or ends with '-'")


#: Letters of other scripts, and Latin variants, that mail readers draw as a
#: lower-case ASCII letter: the entries of Unicode's confusables.txt (UTS #39
#: §4) for the lower-case letters of Cyrillic, Greek, Armenian and Georgian and
#: for Latin's dotless i, script a and g, iota, dental click and dotless j (a
#: name is lower case by the time it is compared). Compatibility characters
#: (full-width and mathematical letters) are not listed: NFKD takes them to
#: ASCII first. A table of our own, not a package of the whole confusables.txt:
#: the whole table also maps ASCII to ASCII (``m`` to ``rn``, ``l`` to ``I``), and
#: its skeletons would refuse names administrators tell apart (``user1`` and
#: ``userl``, ``arn`` and ``am``); these entries take only a non-ASCII letter to
#: the ASCII one it passes for.
_LOOK_ALIKES = str.maketrans(
    "асԁеҽһіӏјорԛѕԝѡхуүѵг"  # Cyrillic
    "αγινορσυϱϲϳ"  # Greek
    "ագզհոռսցքօ"  # Armenian
    "ყ"  # Georgian
    "ıɑɡɩǀȷ",  # Latin
    "acdeehiijopqswwxyyvr"
    "ayivopoupcj"
    "wqqhnnugfo"
    "y"
    "iagilj",
)


def look_alike_key(name: str) -> str:
    """``name`` (canonical) as a reader sees it: without what it draws as nothing
    (``INVISIBLE``), compatibility characters decomposed (NFKD), each look-alike letter as the ASCII one it passes for, marks in
    canonical order (NFD); UTS #39's skeleton for the letters that matter here.
    ``jӧrg`` (Cyrillic o with diaeresis) has the key of ``jörg``."""
    if name.isascii():
        return name
    shown = INVISIBLE.sub("", name).replace(_BLANK, "")
    folded = unicodedata.normalize("NFKD", shown).translate(_LOOK_ALIKES)
    return unicodedata.normalize("NFD", folded)


def look_alike(a: str, b: str) -> bool:
    """True when the canonical names ``a`` and ``b`` differ but read the same
    (``look_alike_key``), and one of them holds a character that is not ASCII.

    Two ASCII names that differ are always two names, as in every mail system:
    ``user1`` and ``userl`` are for the administrator's font to tell apart.
    A non-ASCII letter drawn as an ASCII one (``аlice`` with the Cyrillic a)
    is another matter: nothing on the screen says it is not ``alice``."""
    return a != b and not (a.isascii() and b.isascii()) and look_alike_key(a) == look_alike_key(b)


def look_alike_letters(a: str, b: str) -> str:
    """The characters not ASCII that make ``a`` and ``b`` (a look-alike pair)
    differ, by code point and name, for an error message."""
    odd = dict.fromkeys(c for c in a + b if not c.isascii() and (c not in a or c not in b))
    return ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, '?')}" for c in odd)
