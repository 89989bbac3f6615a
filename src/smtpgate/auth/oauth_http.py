"""HTTP for the token verifier: one request, all of it within one deadline.

Why not plain ``urllib.request.urlopen(url, timeout=...)``: its timeout bounds
each socket operation, not the exchange. A key-set endpoint that sends its answer
a byte every few seconds (broken, or hostile on the path) keeps a fetch going for
as long as it likes: the login waiting for it hangs, every later login without
keys waits for it in turn, and ``serve`` cannot stop while the thread is in it.
Here each connection's socket is shut down when the exchange's deadline passes,
whatever state it is in (connecting, TLS handshake, headers, body).

Redirects: a key set may move from https to https (and a loopback http URL,
which the configuration allows for a local test issuer, to loopback http), but
never from https to plain http, which would let anyone on the path supply the
keys. An introspection
request follows none: urllib would carry its Authorization header (the client
secret) to wherever the answer points.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class HttpFetchError(OSError):
    """The exchange did not give a usable answer (deadline, redirect refused, size)."""


class NoAnswerInTime(HttpFetchError):
    """The deadline passed before the answer was complete: the server hangs (or
    is not there and its packets vanish), unlike one that answered badly."""


def _loopback_or_https(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "https" or (
        parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1", "::1"))


class _Deadline:
    """Shuts down every socket opened for one exchange once ``seconds`` have passed."""

    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds
        self._seconds = seconds
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self._socks: list[socket.socket] = []
        self.passed = False

    def remaining(self) -> float:
        left = self._at - time.monotonic()
        if left <= 0:
            self.passed = True
            raise NoAnswerInTime(f"no complete answer within {self._seconds:g} s")
        return left

    def connect(self, address: tuple[str, int], timeout: float | None = None,
                source_address: tuple[str, int] | None = None) -> socket.socket:
        """``socket.create_connection`` under the deadline (http.client's hook).

        Not ``create_connection`` itself: its name look-up has no timeout (a
        resolver that does not answer held the login for the resolver's own 10-30
        s), and each address of the name got the whole timeout again (two dead
        addresses: 20 s). The look-up runs within the deadline here, and each
        address gets an equal share of what is left, so a dead first address
        leaves time for the next."""
        host, port = address
        infos = self._resolve(host, port)
        last: OSError | None = None
        for i, (family, kind, proto, _, where) in enumerate(infos):
            left = self.remaining()
            share = left / (len(infos) - i)
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(min(timeout or share, share))
                if source_address is not None:
                    sock.bind(source_address)
                sock.connect(where)
                break
            except OSError as e:
                sock.close()
                last = e
        else:
            if last is None:
                raise OSError(f"{host}: no address to connect to")
            raise last
        left = self.remaining()
        sock.settimeout(min(timeout or left, left))  # each read's, as create_connection's
        # A second handle on the same socket: TLS wrapping detaches the first.
        watched = sock.dup()
        timer = threading.Timer(self.remaining(), self._cut, (watched,))
        timer.daemon = True
        with self._lock:
            self._socks.append(watched)
            self._timers.append(timer)
        timer.start()
        return sock

    def _resolve(self, host: str, port: int) -> list[Any]:
        """``getaddrinfo`` within the deadline, on a thread of its own (it cannot be
        interrupted; one that outlives the deadline ends when the resolver gives up)."""
        found: list[Any] = []
        failed: list[OSError] = []

        def look_up() -> None:
            try:
                found.extend(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
            except OSError as e:
                failed.append(e)

        thread = threading.Thread(target=look_up, name="smtpgate-oauth-dns", daemon=True)
        thread.start()
        thread.join(self.remaining())
        if thread.is_alive():
            self.passed = True
            raise NoAnswerInTime(f"no complete answer within {self._seconds:g} s "
                                 f"(the name {host} was not resolved in time)")
        if failed:
            raise failed[0]
        return found

    def _cut(self, sock: socket.socket) -> None:
        self.passed = True
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already

    def close(self) -> None:
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            for sock in self._socks:
                sock.close()


def _watched(base: type[http.client.HTTPConnection], deadline: _Deadline) -> Any:
    class Watched(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = deadline.connect

    return Watched


class _HTTP(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(http.client.HTTPConnection, self._deadline), req)


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline, context: ssl.SSLContext | None) -> None:
        super().__init__()
        self._deadline = deadline
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        # No context: http.client makes the default one (system CAs, SSL_CERT_FILE;
        # certificate and host name checked). An issuer's ca_file: the same checks,
        # against its CAs alone.
        return self.do_open(_watched(http.client.HTTPSConnection, self._deadline), req,
                            context=self._tls)


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = 3

    def __init__(self, follow: bool) -> None:
        super().__init__()
        self._follow = follow

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        if not self._follow:
            raise HttpFetchError(f"HTTP {code} redirect to {newurl} not followed")
        # https stays https; only a loopback http URL (a test rig) may stay loopback http.
        scheme = urllib.parse.urlsplit(req.full_url).scheme
        if not (_loopback_or_https(newurl) and (scheme == "http" or newurl.startswith("https:"))):
            raise HttpFetchError(f"HTTP {code} redirect to {newurl} refused: not https")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """Certificates and host names checked as by default, against the CAs in
    ``ca_file`` (PEM) alone: a private issuer's own CA, trusted for that issuer
    only, neither added to the system's store nor trusted for the others.

    Raises:
        OSError, ssl.SSLError: the file cannot be read or holds no certificate.
    """
    return ssl.create_default_context(cafile=str(ca_file))


def request(url: str, *, timeout: float, limit: int, data: bytes | None = None,
            headers: Mapping[str, str] | None = None, follow_redirects: bool = True,
            ca_file: Path | None = None) -> bytes:
    """GET (or POST ``data`` to) ``url``; the body, all within ``timeout`` seconds.
    With ``ca_file``, an https server's certificate must chain to a CA in it.

    Raises:
        HttpFetchError: deadline passed (``NoAnswerInTime``), redirect refused,
            body over ``limit``.
        OSError, urllib.error.URLError, http.client.HTTPException: no answer.
    """
    context = tls_context(ca_file) if ca_file is not None else None
    deadline = _Deadline(timeout)
    opener = urllib.request.build_opener(
        _HTTP(deadline), _HTTPS(deadline, context), _Redirects(follow_redirects))
    req = urllib.request.Request(url, data=data, headers=dict(headers or {}),
                                 method="POST" if data is not None else "GET")
    try:
        with opener.open(req, timeout=timeout) as response:
            body: bytes = response.read(limit + 1)
        if deadline.passed:  # a body without a length ends where it was cut
            raise NoAnswerInTime(f"no complete answer within {timeout:g} s")
        if len(body) > limit:
            raise HttpFetchError(f"answer larger than {limit} octets")
        return body
    except HttpFetchError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        # A connect or read that timed out used the time that was left: no answer
        # in time either (urllib wraps the connect's in a URLError).
        reason = getattr(exc, "reason", None)
        if isinstance(reason, NoAnswerInTime):  # what the deadline met, as it said it
            raise reason from exc
        if deadline.passed or isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError):
            raise NoAnswerInTime(f"no complete answer within {timeout:g} s") from exc
        raise
    finally:
        deadline.close()
