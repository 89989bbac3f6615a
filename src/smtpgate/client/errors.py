"""Whose fault a client-side protocol error is (the h11 split, STYLE.md §5)."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of the client engine's errors."""


class LocalProtocolError(ProtocolError):
    """We were about to send something invalid (a bug, or bad input such as a CR/LF
    in an address); nothing was sent."""


class RemoteProtocolError(ProtocolError):
    """The server sent something that is not SMTP; the connection is unusable."""


class TruncatedReply(RemoteProtocolError):
    """The server closed the connection in the middle of a reply: the connection was
    lost (a server that crashed or was cut off), not a server that speaks no SMTP."""
