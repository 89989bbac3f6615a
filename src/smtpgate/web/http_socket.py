"""The listening socket of an HTTP endpoint (the web admin, /metrics), and the
logger its aiohttp server reports errors on. In ``web`` (the lower layer of the
two that serve HTTP), so that ``server/metrics_http.py`` can use it too.

Bound by the main process before anything forks, with a plain bind (no
SO_REUSEPORT): a second smtpgate on the same address fails at start-up instead
of sharing it, and the SMTP workers, which bind only their own listeners, never
race for it. A reload that moves an endpoint binds the new address the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from smtpgate.config import Config, HttpListener
from smtpgate.errors import StartupError
from smtpgate.web.conn_cap import holdable

if TYPE_CHECKING:  # aiohttp is imported by the process that serves HTTP
    from aiohttp import web


def bind_tcp(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on (host, port); OSError if it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bind_endpoint(listener: HttpListener, key: str) -> socket.socket | None:
    """``listener``'s socket (None when it is off).

    Raises:
        StartupError: naming ``key``, when the address cannot be bound.
    """
    endpoint = listener.endpoint
    if endpoint is None:
        return None
    try:
        return bind_tcp(*endpoint)
    except OSError as e:
        raise StartupError(key, f"cannot listen on {listener.listen}: "
                                f"{e.strerror or e}") from None


def host_allowed(host: str | None, cfg: Config, listener: HttpListener) -> bool:
    """Whether a request's ``Host`` names this server (DNS rebinding defence).

    A page on ``attacker.example`` whose name is rebound to 127.0.0.1 reaches a
    loopback endpoint from the victim's browser as same-origin, but its requests
    carry ``Host: attacker.example``. Accepted: no Host (not a browser), an IP
    address, ``localhost``, the listen host, ``hostname``, this machine's host name
    and ``allowed_hosts``; the port is not compared."""
    if host is None:
        return True
    try:
        name = (urlsplit("//" + host).hostname or "").rstrip(".")
    except ValueError:
        return False
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    endpoint = listener.endpoint
    names = {"localhost", cfg.hostname.lower(), socket.gethostname().lower(),
             *listener.allowed_hosts}
    if endpoint is not None:
        names.add(endpoint[0].strip("[]").lower())
    return name in names


def known_host(request: web.Request, cfg: Config, listener: HttpListener, what: str) -> None:
    """Refuse (421) a request whose ``Host`` is not this server's (``host_allowed``)."""
    from aiohttp import web

    host = request.headers.get("Host")
    if not host_allowed(host, cfg, listener):
        logging.getLogger("smtpgate.web").warning(
            "%s: request for Host %r from %s refused (421; add the name to "
            "allowed_hosts if it is this server's)", what, host[:100] if host else host,
            request.remote)
        raise web.HTTPMisdirectedRequest(text="unknown Host: this server does not "
                                              "answer for that name\n")


#: Seconds a request's body may take to arrive after its head was read. A form's
#: body (64 KiB at most on the web admin) is sent with its head; Apache's
#: RequestReadTimeout allows 20 s plus time for slow rates.
BODY_TIMEOUT = 15.0


async def body_in_time(request: web.Request, what: str, max_size: int) -> None:
    """Wait until the request's body has arrived (without reading it: a handler
    reads it as before, urlencoded or multipart), at most ``BODY_TIMEOUT``; a body
    sent a byte at a time ("slow POST") gets 408 and the connection is closed.
    aiohttp's keep-alive clock, which bounds the head (``web/http_port.py``), is
    stopped while a handler runs, so the body needs a deadline of its own.

    A ``Content-Length`` over ``max_size`` (the application's ``client_max_size``)
    gets 413 at once: aiohttp stops reading a body its buffer cannot take, so the
    end of a large body sent whole never came, and the client got a 408 saying it
    was late 15 s later. aiohttp then reads and drops the rest of it for a while
    (its lingering read), so the client reads the 413 rather than a reset. A
    chunked body has no length to judge beforehand: it gets the 413 as soon as
    more than ``max_size`` of it has come (``_arrived``), which was the same 408
    after 15 s for one over aiohttp's buffer."""
    from aiohttp import web

    if not request.body_exists:
        return
    length = request.content_length
    if length is not None and length > max_size:
        logging.getLogger("smtpgate.web").info(
            "%s: %s %s from %s announced a body of %d bytes, over the %d taken: 413",
            what, request.method, request.path[:100], request.remote, length, max_size)
        raise web.HTTPRequestEntityTooLarge(max_size=max_size, actual_size=length)
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            within = await _arrived(request, max_size)
        if not within:
            logging.getLogger("smtpgate.web").info(
                "%s: %s %s from %s sent a chunked body of over %d bytes, the most taken: 413",
                what, request.method, request.path[:100], request.remote, max_size)
            raise web.HTTPRequestEntityTooLarge(max_size=max_size,
                                                actual_size=request.content.total_bytes)
    except TimeoutError:
        logging.getLogger("smtpgate.web").info(
            "%s: the body of %s %s from %s did not arrive within %.0f s: 408, closed",
            what, request.method, request.path[:100], request.remote, BODY_TIMEOUT)
        late = web.HTTPRequestTimeout(text="The request body did not arrive in time.\n")
        late.force_close()
        raise late from None
    except (OSError, web.RequestPayloadError):
        pass  # a broken body or a peer gone: the handler's own read says so, as before


#: How often `_arrived` looks at how much of a body has come (seconds).
BODY_POLL = 0.05


async def _arrived(request: web.Request, max_size: int) -> bool:
    """Wait for the end of the request's body, without reading it; False as soon as
    more than ``max_size`` bytes of it have come (they stay unread either way).

    aiohttp's stream says when the end has come (``wait_eof``) but not when more
    has: the size of a chunked one (``total_bytes``) is looked at every
    `BODY_POLL` seconds while its end is awaited, only when it did not come with
    its head (a form does). aiohttp stops reading at twice its 64 KiB buffer, so
    a body over that would never end."""
    content = request.content
    if request.content_length is not None:  # at most max_size (body_in_time): no watch
        await content.wait_eof()
        return True
    if content.is_eof():
        return content.total_bytes <= max_size
    end = asyncio.ensure_future(content.wait_eof())
    try:
        while content.total_bytes <= max_size:
            done, _ = await asyncio.wait({end}, timeout=BODY_POLL)
            if done:
                end.result()  # a broken body raises here, as wait_eof did
                break
        return content.total_bytes <= max_size
    finally:
        end.cancel()


@contextlib.contextmanager
def unread_while_answering(request: web.Request) -> Iterator[None]:
    """Give aiohttp nothing more from the request's connection while its handler
    runs (``conn_cap.CappedProtocol.hold``): the client's next requests, sent
    ahead, wait unparsed, at most ``http_port.HOLD_LIMIT`` bytes of them, the rest
    in the kernel. Entered once the request's body has arrived (``body_in_time``), so
    what comes meanwhile is never this request's. No browser, Prometheus or curl
    sends a request before the answer to the last."""
    protocol = holdable(request.transport)
    if protocol is None:
        yield
        return
    protocol.hold()
    try:
        yield
    finally:
        protocol.release()


#: What an endpoint's answers say in ``Server``: not aiohttp's default
#: ``Python/3.x aiohttp/3.y.z``, the exact versions to look advisories up for.
SERVER = "smtpgate"


def name_the_server(app: web.Application) -> None:
    """Every answer of ``app`` says ``Server: smtpgate``: those of its handlers and
    its refusals (404, 405, 421) through ``on_response_prepare``; and those aiohttp
    makes before a request reaches any application (400 for a malformed request),
    whose default name is aiohttp's module-level ``SERVER_SOFTWARE`` in
    ``aiohttp.web_response``: set to ours in the serving process (the client's
    User-Agent is another name, left alone). A test pins both
    (tests/unit/test_metrics.py), so an aiohttp release that moves the name fails it."""
    from aiohttp import web_response

    async def named(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = SERVER

    web_response.SERVER_SOFTWARE = SERVER  # type: ignore[attr-defined]
    app.on_response_prepare.append(named)


class OneLineBadRequests(logging.Filter):
    """aiohttp answers a malformed request (smuggling attempts: two lengths, a bad
    ``Transfer-Encoding``; a bare CR) with 400 and logs a traceback: anyone who
    can connect could fill the log with them. Such a record becomes one line."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self._what = what

    def filter(self, record: logging.LogRecord) -> bool:
        # aiohttp is loaded by whoever logs here (an HTTP server), not by importing us.
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = (str(exc.message).splitlines() or ["?"])[0].rstrip(": ")
            record.msg = f"{self._what}: malformed HTTP request from %s refused (400): %s"
            record.args = (record.args[0] if isinstance(record.args, tuple) and record.args
                           else "?", reason)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def http_logger(name: str, what: str) -> logging.Logger:
    """The logger for an endpoint's aiohttp server: malformed requests in one line."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, OneLineBadRequests) for f in logger.filters):
        logger.addFilter(OneLineBadRequests(what))
    return logger
