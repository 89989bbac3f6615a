"""What a server announced in its EHLO reply (RFC 5321 §4.1.1.1)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# RFC 5321 §4.1.1.1: ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")


@dataclass(frozen=True, slots=True)
class Extensions:
    """Keywords (upper case) mapped to their parameter string ("" if none)."""

    keywords: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_ehlo_lines(cls, lines: Iterable[str]) -> Extensions:
        """Parse the lines after the first (the first names the server)."""
        found: dict[str, str] = {}
        for line in lines:
            keyword, _, params = line.strip().partition(" ")
            # Pre-RFC 4954 servers announce "AUTH=LOGIN PLAIN" beside "AUTH LOGIN PLAIN";
            # take both spellings (Outlook-era clients needed the "=" form).
            if keyword.upper().startswith("AUTH="):
                keyword, params = "AUTH", f"{keyword[5:]} {params}"
            if not _KEYWORD.match(keyword):
                continue  # not a keyword: ignore, as RFC 5321 §2.2.2 asks of unknown ones
            key = keyword.upper()
            if key == "AUTH" and key in found:
                params = f"{found[key]} {params}"
            found[key] = params.strip()
        return cls(MappingProxyType(found))

    def has(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def size(self) -> int | None:
        """RFC 1870: the announced maximum, 0 for "no fixed limit", None if no SIZE."""
        if "SIZE" not in self.keywords:
            return None
        value = self.keywords["SIZE"].split(" ", 1)[0]
        # RFC 1870 §3: ASCII digits; "²" passes str.isdigit() but not int().
        return int(value) if value.isascii() and value.isdigit() else 0

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        """RFC 4954 §3: the SASL mechanisms after the AUTH keyword."""
        return frozenset(m.upper() for m in self.keywords.get("AUTH", "").split())

    @property
    def auth_mechanism_list(self) -> tuple[str, ...]:
        """The AUTH mechanisms in the server's order, upper case, without repeats."""
        seen: dict[str, None] = {}
        for m in self.keywords.get("AUTH", "").split():
            seen.setdefault(m.upper(), None)
        return tuple(seen)

    @property
    def starttls(self) -> bool:
        return "STARTTLS" in self.keywords

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.keywords

    @property
    def eightbitmime(self) -> bool:
        return "8BITMIME" in self.keywords

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.keywords

    @property
    def chunking(self) -> bool:
        """RFC 3030 §2: the server takes BDAT."""
        return "CHUNKING" in self.keywords

    @property
    def binarymime(self) -> bool:
        """RFC 3030 §3: BODY=BINARYMIME (needs CHUNKING too)."""
        return "BINARYMIME" in self.keywords
