"""Split the ``HOST[:PORT]`` that ``smtpgate test --server`` and ``smtpgate audit``
take, strictly: a typo must not quietly test another port.

``[::1]2587`` (the colon forgotten) and ``[::1`` were read as ``[::1]`` on the
default port, and ``host:`` as ``host``; an administrator testing a new port
then got the verdict of the production one. Each is refused now, naming what is
wrong. ``[IPv6:2001:db8::1]``, RFC 5321's address literal, is taken as the
address it names.
"""

from __future__ import annotations


def split_host_port(text: str) -> tuple[str, str]:
    """``HOST``, ``HOST:PORT``, ``[v6]``, ``[v6]:PORT`` or a bare IPv6 address as
    (host, port text), the port text "" when none is given; neither is checked
    further (the callers say what a good one is).

    Raises:
        ValueError: a bracket not closed, something other than ``:PORT`` after
            it, or a colon with no port after it.
    """
    if text.startswith("["):
        host, closed, tail = text[1:].partition("]")
        if not closed:
            raise ValueError(f"no ']' after {text[1:]!r}: write [ADDRESS] or [ADDRESS]:PORT")
        if tail and not tail.startswith(":"):
            raise ValueError(f"{tail!r} after ']': write [ADDRESS]:PORT")
        if host[:5].lower() == "ipv6:":  # RFC 5321 §4.1.3's IPv6-address-literal
            host = host[5:]
        port = tail[1:]
        if tail == ":":
            raise ValueError("no port after ':'")
        return host, port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port:
            raise ValueError("no port after ':'")
        return host, port
    return text, ""
