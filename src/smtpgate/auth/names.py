"""Account names: one canonical spelling of ``local@domain`` per account.

The domain is case-insensitive (RFC 5321 §2.4) so it is lower-cased; the local
part "MUST be treated as case sensitive" by the receiving host (same section),
so it is kept exactly as given. Two spellings that differ only in the domain's
case therefore name one account, and ``Bob@x`` and ``bob@x`` name two.
"""

from __future__ import annotations

import functools
import unicodedata

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
    _check_local(local)
    domain = domain.lower()
    _check_domain(domain)
    return f"{local}@{domain}"


def lookup_key(name: str) -> str:
    """The canonical spelling if ``name`` is valid, else ``name`` unchanged.

    For look-ups of client-supplied names: an invalid name simply matches no
    account, which the caller reports like any unknown account.
    """
    try:
        return canonical_name(name)
    except InvalidAccountName:
        return name


def _bad_char(c: str) -> bool:
    return c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")


def _check_local(local: str) -> None:
    if len(local.encode("utf-8")) > MAX_LOCAL_OCTETS:
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
    if len(domain.encode("utf-8")) > MAX_DOMAIN_OCTETS:
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
