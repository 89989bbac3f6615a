"""A key-set endpoint over real HTTPS on loopback, for attacking the OAuth login path.

``JwksHttps`` serves each ``LocalIssuer``'s JSON Web Key Set at ``/<name>`` with a
certificate for ``localhost`` and 127.0.0.1 from a throw-away CA (point the server
at it with ``SSL_CERT_FILE``). A path can be made to misbehave as an issuer's
endpoint does on a bad day: ``down`` (503), ``drip`` (a 200 whose body comes a
byte at a time, never finishing within any socket timeout), ``huge`` (more than
the 1 MiB cap), ``not-json``, ``redirect-http`` (a 302 to a plain-http copy of the
set). Every GET is counted per path, so a test can tell one fetch from a storm.
A POST is an RFC 7662 introspection request: active unless the token is in
``revoked``, or (mode ``redirect-http``) a 302 to the plain-http port; mode
``claims`` at ``/<name>-introspect`` answers as Keycloak's endpoint does: the
token's claims if ``<name>``'s key signed it (and it is not revoked), else
inactive.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.client_pki import TestCa

from .oauth_issuer import LocalIssuer


def _server_certificate(ca: TestCa, directory: Path) -> tuple[Path, Path]:
    """A serverAuth leaf for localhost and 127.0.0.1, signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = directory / "idp.pem", directory / "idp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


class JwksHttps:
    """Key sets at ``https://localhost:PORT/<name>``; ``modes[name]`` picks how the
    path answers (see the module docstring), ``gets[name]`` counts its requests."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = TestCa(directory, "idp")
        self.issuers: dict[str, LocalIssuer] = {}
        self.modes: dict[str, str] = {}
        self.gets: Counter[str] = Counter()
        #: Introspection: tokens the issuer has revoked; every request's (scheme,
        #: path, Authorization) as it arrived, on either port.
        self.revoked: set[str] = set()
        self.seen: list[tuple[str, str, str]] = []
        self._stop = threading.Event()
        idp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _record(self) -> None:
                scheme = "https" if self.server is idp.httpd else "http"
                idp.seen.append((scheme, self.path, self.headers.get("Authorization", "")))

            def do_POST(self) -> None:
                """RFC 7662 introspection: active unless revoked; ``redirect-http``
                sends the client to the plain-http port instead."""
                self._record()
                name = self.path.strip("/")
                form = urllib.parse.parse_qs(
                    self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode())
                if self.server is idp.httpd and idp.modes.get(name) == "redirect-http":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{idp.plain_port}/{name}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                token = form.get("token", [""])[0]
                answer: dict[str, object] = {"active": token not in idp.revoked}
                issuer = idp.issuers.get(name.removesuffix("-introspect"))
                if idp.modes.get(name) == "claims" and issuer is not None:
                    try:
                        claims = jwt.decode(token, issuer.key.public_key(), algorithms=["ES256"],
                                            options={"verify_aud": False})
                        answer = {**claims, **answer}
                    except jwt.PyJWTError:
                        answer = {"active": False}
                self._send(200, json.dumps(answer).encode())

            def do_GET(self) -> None:
                self._record()
                name = self.path.strip("/")
                idp.gets[name] += 1
                # The plain-http copy (where redirect-http points) always answers.
                mode = idp.modes.get(name, "ok") if self.server is idp.httpd else "ok"
                issuer = idp.issuers.get(name)
                body = json.dumps(issuer.jwks() if issuer else {"keys": []}).encode()
                if mode == "down":
                    self._send(503, b"upstream unavailable")
                elif mode == "not-json":
                    self._send(200, b"<html>Sign in to continue</html>")
                elif mode == "huge":
                    pad = b" " * (2 * 1024 * 1024)
                    self._send(200, body[:-1] + pad + b"}")
                elif mode == "redirect-http":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{idp.plain_port}/{name}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif mode == "drip":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    for octet in body:
                        if idp._stop.wait(1.0):
                            return
                        self.wfile.write(bytes([octet]))
                        self.wfile.flush()
                else:
                    self._send(200, body)

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        cert, key = _server_certificate(self.ca, directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        # The same sets in plain http, where redirect-http points.
        self.plain = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.plain.daemon_threads = True
        self.plain_port = self.plain.server_address[1]
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True)
                         for s in (self.httpd, self.plain)]
        for t in self._threads:
            t.start()

    def add(self, name: str, issuer: LocalIssuer, mode: str = "ok") -> str:
        """Serve ``issuer``'s key set at ``/name``; its URL."""
        self.issuers[name] = issuer
        self.modes[name] = mode
        return f"https://localhost:{self.port}/{name}"

    def wait_for_get(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.gets[name] and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        for s in (self.httpd, self.plain):
            s.shutdown()
            s.server_close()
