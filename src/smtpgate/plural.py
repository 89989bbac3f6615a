"""Counts in words that agree with their number: "1 message", "2 messages",
"0 messages", as English has them. Every count a person reads (CLI output, the
tester's and the audit's reports) goes through ``count`` rather than an f-string
with a fixed plural, which read "1 messages" for the commonest case of all."""

from __future__ import annotations


def count(n: float, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural (``plural``, else ``noun + "s"``) unless
    ``n`` is exactly 1. A float is shown as given (``f"{n:g}"``): callers round."""
    number = f"{n:g}" if isinstance(n, float) else str(n)
    return f"{number} {noun if n == 1 else plural or noun + 's'}"
