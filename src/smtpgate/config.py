"""The configuration schema: one TOML file, validated at start-up.

Every field has a description (``smtpgate config docs`` renders them), unknown
keys are errors, and relative paths are resolved against the directory that
holds the config file. Components receive the sub-models they need as
constructor arguments; there is no global config object.
"""

from __future__ import annotations

import difflib
import io
import ipaddress
import os
import re
import stat
import tomllib
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from smtpgate import mechanism_facts
from smtpgate.regular_file import NotRegularFile, open_regular
from smtpgate.usable_cpus import usable_cpus

#: The longest duration a key may hold: 100 years. A choice, not a rule: every
#: float of the schema is a duration (seconds, or days for the ``*_days`` keys) that
#: is added to the present somewhere (a lockout's end, a password's expiry), and
#: Python's dates end at year 9999: ``lockout_duration = inf`` (TOML has inf) made
#: `smtpgate guard list` an OverflowError traceback.
MAX_DURATION_SECONDS = 36500 * 86400.0


class KeyProblem(ValueError):
    """A table's own check that is about one of its keys: the problem is reported
    under that key (``delivery.lmtp_address``), not under the table (``delivery``),
    so every config error names the key to change, in the text and in
    ``config check --json``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        #: Relative to the table the check belongs to; may go down (``postgresql.dsn``).
        self.key = key


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _duration_in_range(cls, v: object, info: ValidationInfo) -> object:
        if not isinstance(v, float) or info.field_name is None:
            return v
        days = info.field_name.endswith("_days")
        if v > (MAX_DURATION_SECONDS / 86400 if days else MAX_DURATION_SECONDS):
            raise ValueError("longer than 100 years" + (" (36500 days)" if days else
                                                         " (3153600000 seconds)"))
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _boolean_is_no_number(cls, v: object, info: ValidationInfo) -> object:
        """TOML's ``true`` and ``false`` are no numbers, but pydantic's lax mode takes
        them as 1 and 0: ``max_age_days = true`` was a maximum age of one day, every
        password stopping a day after its change, and ``messages_per_hour = true`` one
        message an hour, without a word from ``config check``."""
        if not isinstance(v, bool) or info.field_name is None:
            return v
        annotation = cls.model_fields[info.field_name].annotation
        kinds = get_args(annotation) or (annotation,)
        if bool not in kinds and (int in kinds or float in kinds):
            raise ValueError(f"is {str(v).lower()}, a boolean: give a number")
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, v: object) -> object:
        """TOML strings may hold ``\\u0000``, and no path, user name or text of this
        schema can: ``tls.cert = "a\\u0000b"`` ended every command in a ValueError
        traceback (embedded null byte), and in ``accounts.database`` config check said
        OK, ``user list`` then raised."""
        items = v if isinstance(v, list) else [v]
        if any(isinstance(item, str) and "\x00" in item for item in items):
            raise ValueError("holds a NUL character (\\u0000), which no path, name or "
                             "text here can hold")
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _empty_path(cls, v: object, info: ValidationInfo) -> object:
        """``spool = ""`` is not a path: Path("") is ".", the config file's directory,
        which then became the spool (or the Maildir, the pid file...). An optional
        path left empty takes its default, as if it were not set."""
        if v != "" or info.field_name is None:
            return v
        field = cls.model_fields[info.field_name]
        if field.annotation is Path:
            raise ValueError(f"is empty; give a path (the default is {str(field.default)!r})")
        if Path in get_args(field.annotation) and type(None) in get_args(field.annotation):
            return None
        return v


# RFC 1123 §2.1: a label is letters, digits and hyphens, 1-63 long, and neither
# starts nor ends with a hyphen (a leading digit is allowed).
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def hostname_problem(name: str) -> str | None:
    """Why ``name`` cannot be this server's host name, or None if it can.

    The name goes into the greeting, the Received header, the EHLO to a relay and
    the certificate ``smtpgate init`` makes, so it must be a DNS host name:
    dot-separated RFC 1123 labels, at most 253 characters. Address literals and
    bare IP addresses are refused (RFC 1123 §2.1: a host name never has the
    dotted-decimal form); a certificate names a host, not an address, here.
    """
    if not name:
        return "is empty"
    if len(name) > 253:
        return "is longer than 253 characters"
    for label in name.split("."):
        if not label:
            return "has an empty label (two dots in a row, or a dot at an end)"
        if not _LABEL.fullmatch(label):
            return (
                f"has the label {label!r}: a label is 1-63 letters, digits and hyphens, "
                "not starting or ending with a hyphen"
            )
    if name.rsplit(".", 1)[-1].isdigit():
        return "is an IP address, not a host name"
    return None


def check_hostname(name: str) -> str:
    """``name`` if it is a valid host name (see `hostname_problem`); ValueError if not."""
    problem = hostname_problem(name)
    if problem is not None:
        raise ValueError(
            f"{name!r} is not a host name: it {problem} (expected a DNS name such as "
            "mail.example.org)"
        )
    return name


def _check_networks(items: list[str]) -> list[str]:
    for item in items:
        try:
            ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ValueError(f"not a network: {item!r}") from None
    return items


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _parse_hostport(value: str) -> tuple[str, int]:
    """``HOST:PORT``, an IPv6 address in brackets. An unbracketed one was read up to
    its last colon: ``::1:2587`` listened on ``::1`` port 2587 and ``::1`` on host
    ``:`` port 1, each without a word; brackets that do not pair were dropped."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]") and host.count("[") == 1 == host.count("]"):
        host = host[1:-1]
    elif "[" in host or "]" in host:
        raise ValueError(f"{value!r}: brackets go around an IPv6 address alone, e.g. "
                         "'[::1]:587'")
    elif ":" in host:
        ways = [f"'[{host}]:{port}'"] if _is_ip(host) else []
        if _is_ip(value):  # ::1 reads as host ':' and port 1
            ways.append(f"'[{value}]:PORT'")
        raise ValueError(f"{value!r}: an IPv6 address needs brackets: "
                         f"{' or '.join(ways) or '[ADDRESS]:PORT'}")
    return host or "0.0.0.0", int(port)


class ListenerConfig(Model):
    """One table per listening socket."""

    name: str = Field(description="Label used in logs and policies, e.g. 'submission'.")
    address: str = Field(description="HOST:PORT to listen on; '[::1]:587' for IPv6, "
                         "'[::]:587' for every address (IPv4 too, where the system maps "
                         "it); an empty HOST (':587') is 0.0.0.0, every IPv4 address.")
    tls: Literal["starttls", "implicit"] = Field(
        description="'starttls' (RFC 3207, port 587) or 'implicit' (RFC 8314, port 465)."
    )
    auth_in_clear: bool = Field(
        default=False,
        description="Offer and accept AUTH before STARTTLS. Default false; a loosening that "
        "is logged at start-up. Only for test rigs that cannot do TLS.",
    )
    proxy_protocol: bool = Field(
        default=False,
        description="Expect a PROXY protocol header (v1 or v2, as HAProxy's send-proxy / "
        "send-proxy-v2 write it) first on every connection: the client it names is the "
        "one the guard, the limits, the logs and Received see. Requires trusted_proxies.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) allowed to connect to a proxy_protocol listener; a "
        "connection from elsewhere, or a missing or malformed header, is closed before any "
        "SMTP byte. E.g. ['127.0.0.1/32', '10.0.0.0/24']. Without proxy_protocol = true it "
        "limits nothing (config check warns).",
    )
    mechanisms: list[str] | None = Field(
        default=None,
        description="Mechanisms offered on this listener; default: [auth].mechanisms.",
    )
    xclient_trusted: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) of proxies allowed to send XCLIENT on this listener "
        "(Postfix's XCLIENT: the real client's address, and with LOGIN= its login, so no "
        "AUTH is asked again), e.g. ['127.0.0.1/32'] for nginx's mail proxy on the same "
        "host. Default empty: XCLIENT is not advertised and refused with 550 5.7.0.",
    )
    client_certificates: Literal["optional", "required"] | None = Field(
        default=None,
        description="Ask TLS clients for a certificate, verified against client_ca (chain "
        "and dates; no CRL): 'optional' (a missing or untrusted one only means no EXTERNAL) "
        "or 'required' (the handshake fails without a trusted one). Default none: no "
        "certificate asked for. Adds SASL EXTERNAL to this listener, offered only once a "
        "certificate verified (docs/mechanisms.md).",
    )
    client_ca: Path | None = Field(
        default=None,
        description="PEM file of the CA certificates client certificates must chain to; "
        "required with client_certificates. Default none.",
    )
    client_cert_san_login: bool = Field(
        default=False,
        description="Let a certificate from client_ca log in as the account named by its "
        "subjectAltName email (rfc822Name), besides certificates registered with `smtpgate "
        "user cert add`. Default false: only registered fingerprints log in. Trust the CA "
        "to issue emails only to their owners before turning it on.",
    )

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        _parse_hostport(v)
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, v: list[str]) -> list[str]:
        return _check_networks(v)

    @field_validator("xclient_trusted")
    @classmethod
    def _check_xclient_trusted(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"not a network: {item!r}") from None
        return v

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return _label(v)

    @model_validator(mode="after")
    def _check_client_certificates(self) -> ListenerConfig:
        if self.client_certificates is not None and self.client_ca is None:
            raise KeyProblem("client_ca", "client_certificates needs client_ca (the CAs to "
                             "verify against)")
        if self.client_certificates is None and (self.client_ca or self.client_cert_san_login):
            raise KeyProblem("client_certificates",
                             "client_ca and client_cert_san_login need client_certificates")
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        return _parse_hostport(self.address)


def _label(v: str) -> str:
    """A listener's or front door's name: what the logs, the auth log, the metrics'
    ``listener`` label and ``user access --listener`` call it. An empty one (or blank,
    or holding a control character) would name it as nothing in each of them."""
    if not v.strip():
        raise ValueError("a name is needed (it labels the logs, the auth log and the "
                         "metrics, and `user access --listener` names it), e.g. 'submission'")
    if any(not c.isprintable() for c in v):
        raise ValueError(f"{v!r} holds a control character")
    return v


def _parse_destination(value: str) -> tuple[str, int]:
    """``HOST:PORT`` to connect to: unlike a listening address, neither an empty
    host (which `_parse_hostport` reads as 0.0.0.0, so ``:25`` connected to this
    machine) nor port 0 names a destination."""
    host, port = _parse_hostport(value)
    if not value.rpartition(":")[0].strip("[]"):
        raise ValueError(f"{value!r} names no host: expected HOST:PORT, e.g. "
                         f"'mx.example.net{value.strip()}'")
    if port == 0:
        raise ValueError(f"{value!r}: port 0 is no port to connect to (25, 587 or 465?)")
    return host, port


def _parse_socket_address(value: str) -> tuple[str, int] | Path:
    """``unix:/path`` or ``HOST:PORT``."""
    if value.startswith("unix:"):
        path = value[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f"a unix socket needs an absolute path, got {value!r}")
        return Path(path)
    return _parse_hostport(value)


class AuthListenerConfig(Model):
    """A front door for another server: the MTA or proxy asks smtpgate to decide
    logins (docs/integration.md)."""

    protocol: Literal["dovecot", "auth_http", "postfix_policy"] = Field(
        description="'dovecot': the Dovecot authentication protocol, the SASL backend of "
        "Postfix (smtpd_sasl_type = dovecot) and Exim (driver = dovecot); 'auth_http': "
        "nginx's mail proxy auth_http; 'postfix_policy': Postfix SMTP access policy "
        "delegation (check_policy_service)."
    )
    address: str = Field(
        description="'unix:/absolute/path' for a unix socket, or HOST:PORT for TCP "
        "('[::1]:12345' for IPv6). Keep TCP on loopback: these protocols carry "
        "passwords in clear."
    )
    name: str | None = Field(
        default=None,
        description="Label in logs and the auth log's front door field; default: the protocol.",
    )
    mode: str = Field(
        default="0660",
        description="Permissions of a unix socket (octal); ignored for TCP.",
    )
    user: str | None = Field(
        default=None, description="Owner of a unix socket (a user name); default: unchanged."
    )
    group: str | None = Field(
        default=None, description="Group of a unix socket (a group name); default: unchanged."
    )
    upstream: str | None = Field(
        default=None,
        description="auth_http only: IP:PORT of the smtpgate listener nginx hands "
        "authenticated sessions to (Auth-Server/Auth-Port; nginx takes an IP address "
        "there, never a host name); required there.",
    )
    proxy_protocol: bool = Field(
        default=False,
        description="TCP only: expect a PROXY protocol header first (an MTA behind a TCP "
        "load balancer); requires trusted_proxies.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) allowed to send the PROXY header on this front door. "
        "Without proxy_protocol = true it limits nothing (config check warns).",
    )
    max_connections: int = Field(
        default=500, ge=1, le=100_000,
        description="Connections this front door holds open at once in each serving process "
        "(every worker serves every door); one more is closed at once and logged. Postfix "
        "keeps one per smtpd process (Dovecot's own auth service allows 1,000 clients); "
        "raise it with the MTA's process limit. Needs a restart.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, v: list[str]) -> list[str]:
        return _check_networks(v)

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        _parse_socket_address(v)
        return v

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        return None if v is None else _label(v)

    @field_validator("mode")
    @classmethod
    def _check_mode(cls, v: str) -> str:
        try:
            n = int(v, 8)
        except ValueError:
            raise ValueError(f"expected an octal mode such as '0660', got {v!r}") from None
        if not 0 <= n <= 0o777:
            raise ValueError(f"expected an octal mode such as '0660', got {v!r}")
        return v

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, v: str | None) -> str | None:
        if v is not None:
            host, port = _parse_hostport(v)
            # nginx parses Auth-Server as an IP address (ngx_parse_addr): a host name
            # there fails every login with its "invalid server address".
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(
                    f"nginx needs an IP address in Auth-Server, not a host name: "
                    f"got {v!r} (e.g. '127.0.0.1:2587')") from None
            if port == 0:
                raise ValueError(f"expected a port above 0, got {v!r}")
        return v

    @property
    def label(self) -> str:
        return self.name or self.protocol

    @property
    def unix_path(self) -> Path | None:
        where = _parse_socket_address(self.address)
        return where if isinstance(where, Path) else None

    @property
    def host_port(self) -> tuple[str, int]:
        where = _parse_socket_address(self.address)
        if isinstance(where, Path):
            raise TypeError(f"{self.address} is a unix socket")
        return where

    @property
    def file_mode(self) -> int:
        return int(self.mode, 8)


class TlsConfig(Model):
    cert: Path = Field(default=Path("tls/cert.pem"), description="PEM certificate chain.")
    key: Path = Field(default=Path("tls/key.pem"), description="PEM private key.")
    min_version: Literal["1.2", "1.3"] = Field(
        default="1.2", description="Lowest TLS version accepted (RFC 8997: never below 1.2)."
    )
    handshake_timeout: float = Field(default=30.0, gt=0, description="Seconds for a handshake.")
    session_tickets: bool = Field(
        default=True,
        description="Give TLS 1.3 clients a session ticket to resume with (docs/security.md).",
    )


# --- OAuth issuers ([[auth.oauth_issuers]]; the verifier is auth/oauth.py) ----------------

#: The JWS algorithms an issuer may allow, each with the JWK "kty" it needs (RFC 7518
#: §3.1, RFC 8037 §3.1): the verifier uses a key only with an algorithm of its type.
JWT_ALGORITHMS: dict[str, str] = {
    **{f"HS{n}": "oct" for n in (256, 384, 512)},
    **{f"RS{n}": "RSA" for n in (256, 384, 512)},
    **{f"PS{n}": "RSA" for n in (256, 384, 512)},
    **{a: "EC" for a in ("ES256", "ES256K", "ES384", "ES512")},
    "EdDSA": "OKP",
}


def _is_loopback_http(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1", "::1")


def _check_url(url: str | None, what: str) -> None:
    if url is None:
        return
    # Keys and introspection answers decide who may log in: fetch them over TLS.
    # Plain http is tolerated for a local identity provider in a test rig only.
    if not (urllib.parse.urlsplit(url).scheme == "https" or _is_loopback_http(url)):
        raise KeyProblem(what, f"{what} must be an https:// URL (http only for localhost)")


class IssuerConfig(Model):
    """One trusted token issuer (authorization server)."""

    issuer: str = Field(
        min_length=1,
        description="Expected 'iss' claim, compared exactly (e.g. "
        "'https://id.example.org/realms/mail'). Required.",
    )
    audience: list[str] = Field(
        min_length=1,
        description="Accepted 'aud' values; a token must name at least one, so tokens "
        "minted for other services are refused. Required.",
    )
    jwks_url: str | None = Field(
        default=None,
        description="HTTPS URL of the issuer's JSON Web Key Set. Default none. Set this or "
        "jwks_file for JWT access tokens.",
    )
    jwks_file: Path | None = Field(
        default=None,
        description="Local JSON Web Key Set file, instead of jwks_url. Default none.",
    )
    jwks_refresh_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds a fetched key set is used before it is fetched again. Default 3600.",
    )
    jwks_min_refresh_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Shortest interval between key-set refreshes caused by a token with an "
        "unknown 'kid' or a signature no cached key verifies (a rotated key), so made-up "
        "tokens cannot make us hammer the issuer; 0 turns the limit off (config check "
        "warns). Default 60.",
    )
    jwks_stale_seconds: float = Field(
        default=86400.0,
        ge=0,
        description="How long past jwks_refresh_seconds the last good key set is still "
        "used while the issuer's cannot be fetched; then OAuth logins get 454 until a "
        "fetch succeeds, so a key the issuer withdrew is not trusted for ever by a server "
        "cut off from it. Default 86400 (a day).",
    )
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256"],
        min_length=1,
        description="Signature algorithms accepted (RS*, PS*, ES*, EdDSA, HS*). 'none' is "
        "never accepted; HS* only with a symmetric ('oct') key from jwks_file (a key set "
        "at a URL is public). Default RS256, ES256.",
    )
    required_scopes: list[str] = Field(
        default_factory=list,
        description="Scopes the token must all carry, read from 'scope' and 'scp', each a "
        "space-separated string or a list of strings. Default none.",
    )
    domains: list[str] = Field(
        default_factory=list,
        description="Mail domains whose accounts this issuer may log in (compared as "
        "account names are: any case, either IDN spelling); a token naming an account "
        "elsewhere is refused. Default none: any account. Set it on every issuer when "
        "there are several, so that none speaks for another's users.",
    )
    token_types: list[str] = Field(
        default_factory=lambda: ["at+jwt", "JWT", "none"],
        min_length=1,
        description="JWT 'typ' header values accepted, compared without letter case and "
        "with or without 'application/' (RFC 7515 §4.1.9); 'none' stands for a token "
        "without one. Default at+jwt (RFC 9068 access tokens), JWT and none, since many "
        "issuers (Azure AD, Keycloak) mint access tokens so typed; a token of "
        "those two types that carries an ID token's marks (nonce, at_hash, c_hash, or "
        "Keycloak's typ claim 'ID') is still refused. ['at+jwt'] is RFC 9068 §4 as "
        "written: only tokens typed as access tokens, for an issuer that types them.",
    )
    identity_claim: Literal["email", "preferred_username", "upn", "sub"] = Field(
        default="email",
        description="Claim that names the mail account. With 'email', a token whose "
        "'email_verified' is false is refused. 'upn' is Microsoft Entra ID's v1 "
        "access tokens' user principal name. Default 'email'.",
    )
    leeway_seconds: float = Field(
        default=60.0,
        ge=0,
        le=600,
        description="Clock skew tolerated on exp, nbf and iat, in seconds. Default 60.",
    )
    max_token_lifetime_seconds: float = Field(
        default=86400.0,
        ge=60,
        le=31_536_000,
        description="A token whose exp lies further ahead than this (plus the leeway) "
        "is refused: no identity provider's access token lives that long, and an exp "
        "written in milliseconds (a faulty issuer) would otherwise never expire, nor "
        "end the session it opens. Default 86400 (a day).",
    )
    introspection_url: str | None = Field(
        default=None,
        description="RFC 7662 token introspection endpoint. Default none. Needed for "
        "opaque tokens; with a key set too, JWTs are also introspected (revocation).",
    )
    introspection_client_id: str = Field(
        default="",
        description="Client id for HTTP Basic authentication at the introspection endpoint.",
    )
    introspection_client_secret_file: Path | None = Field(
        default=None,
        description="File holding the introspection client secret (never inline). Default none.",
    )
    ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) that sign this issuer's HTTPS certificate, for "
        "jwks_url and introspection_url (a private identity provider with its own CA). "
        "Set, it is the only trust for this issuer: the system's CAs are not, and no "
        "other issuer trusts it. The certificate and its host name are always checked. "
        "Default none: the system's CAs (or SSL_CERT_FILE).",
    )

    @model_validator(mode="after")
    def _check(self) -> IssuerConfig:
        if self.jwks_url and self.jwks_file:
            raise KeyProblem("jwks_file", "set jwks_url or jwks_file, not both")
        if not (self.jwks_url or self.jwks_file or self.introspection_url):
            raise KeyProblem("jwks_url", "set jwks_url, jwks_file or introspection_url")
        for alg in self.algorithms:
            if alg not in JWT_ALGORITHMS:
                # RFC 8725 §3.1/§3.2: never 'none'; an explicit allow-list only.
                raise KeyProblem(
                    "algorithms",
                    f"algorithm {alg!r} not allowed; use one of {sorted(JWT_ALGORITHMS)}",
                )
        if self.introspection_url and not (
            self.introspection_client_id and self.introspection_client_secret_file
        ):
            raise KeyProblem("introspection_url", "introspection_url needs "
                             "introspection_client_id and introspection_client_secret_file")
        _check_url(self.jwks_url, "jwks_url")
        _check_url(self.introspection_url, "introspection_url")
        hmac = sorted(a for a in self.algorithms if JWT_ALGORITHMS[a] == "oct")
        if hmac and self.jwks_url:
            # A key set at a URL is published: an HMAC key in it is a secret everyone
            # has, and everyone could sign tokens with it.
            raise KeyProblem("algorithms", f"{', '.join(hmac)} needs jwks_file, not jwks_url: "
                             "an HMAC key is a shared secret, and a key set at a URL is public")
        for typ in self.token_types:
            if not typ or typ != typ.strip():
                raise KeyProblem("token_types", f"{typ!r} is no type ('none': no typ header)")
        for domain in self.domains:
            if not domain or "@" in domain or domain != domain.strip():
                raise KeyProblem("domains", f"{domain!r} is not a domain (no '@', no spaces)")
        return self

    @property
    def has_key_set(self) -> bool:
        return bool(self.jwks_url or self.jwks_file)


class PostgresConfig(Model):
    """``[accounts.postgresql]``: the PostgreSQL account backend (docs/directories.md)."""

    dsn: str = Field(
        default="",
        description="libpq connection string or URI of the account database, e.g. "
        "'postgresql://smtpgate@127.0.0.1:5432/smtpgate'. Never with a password in it: "
        "use password_file, or the DSN's passfile (~/.pgpass format). TCP keepalives "
        "default to keepalives_idle=60, keepalives_interval=10, keepalives_count=5 and "
        "tcp_user_timeout=30000 (a host that vanished is noticed in minutes, not hours); "
        "the DSN's own values win (docs/directories.md).",
    )
    password_file: Path | None = Field(
        default=None,
        description="File holding the database password (one line; keep it mode 0600). "
        "Empty: libpq's own ways (passfile, peer or certificate authentication).",
    )
    pool_size: int = Field(
        default=4, ge=1, le=100,
        description="Connections each server process keeps open at most.",
    )
    timeout: float = Field(
        default=5.0, gt=0, le=60,
        description="Seconds a login waits for a database connection, and a query "
        "(a lock included) may take, before it is answered 454 4.7.0 (temporary "
        "failure), never 535. A server that refuses connections (stopped, nothing "
        "listening) is not waited for: once a connection attempt has failed, each "
        "login tries one itself and gets its 454 as soon as that is refused.",
    )
    retry_max: float = Field(
        default=10.0, ge=0, le=300,
        description="Seconds at most that logins get 454 4.7.0 at once, without trying "
        "the database, after an operation got no answer (a refused or timed-out "
        "connection, a connection lost, a query still running after twice timeout): "
        "the first such window lasts 1 s, then a probe (a startup packet, no login, "
        "on a thread of its own) asks whether the server answers; each probe without "
        "an answer doubles the window, up to this. The window ends at once when the "
        "probe, or the pool's own reconnection, gets an answer. So a server that "
        "accepts connections but never replies costs one login its timeout, not "
        "every login in turn. 0: every login tries the database itself.",
    )

    @field_validator("dsn")
    @classmethod
    def _no_inline_password(cls, v: str) -> str:
        if not v:
            return v
        import psycopg  # libpq's own parser: URIs and key=value strings

        try:
            params = psycopg.conninfo.conninfo_to_dict(v)
        except psycopg.Error as e:  # an unparseable string
            raise ValueError(f"not a PostgreSQL connection string: {e}") from None
        if params.get("password"):
            raise ValueError(
                "holds a password; remove it and put the password in "
                "[accounts.postgresql].password_file (or the DSN's passfile)"
            )
        return v

    @field_validator("password_file", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v


class LdapConfig(Model):
    """``[accounts.ldap]``: an LDAP directory (OpenLDAP, Active Directory) holds the
    accounts and their passwords (docs/directories.md, "LDAP")."""

    url: str = Field(
        default="",
        description="ldaps://host:636, or ldap://host:389 with starttls = true. A cleartext "
        "ldap:// without StartTLS is refused unless the host is loopback or "
        "allow_cleartext = true.",
    )
    starttls: bool = Field(default=False, description="Upgrade an ldap:// connection with StartTLS.")
    ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) that signed the directory's certificate "
        "(default: the system store). The certificate and its name are always checked.",
    )
    bind_dn: str = Field(
        default="",
        description="Service account that searches for users; empty = anonymous search.",
    )
    bind_password_file: Path | None = Field(
        default=None, description="File holding the service account's password (never inline)."
    )
    base_dn: str = Field(default="", description="Where users are searched (subtree).")
    user_filter: str = Field(
        default="(&(objectClass=inetOrgPerson)(mail={login}))",
        description="Search filter for a login; {login} is replaced by the name given, "
        "escaped per RFC 4515.",
    )
    login_attributes: list[str] = Field(
        default_factory=lambda: ["mail"],
        description="Attributes of which one must equal the whole login (letter case "
        "aside), so a filter that matches loosely never logs in as another user.",
    )
    address_attributes: list[str] = Field(
        default_factory=lambda: ["mail", "mailAlternateAddress"],
        description="Attributes holding the addresses the account owns (sender ownership).",
    )
    address_prefixes: list[str] = Field(
        default_factory=list,
        description="If set, only address values starting with one of these (case-"
        "insensitive, e.g. 'smtp:' for proxyAddresses) count, with the prefix removed.",
    )
    enabled_filter: str = Field(
        default="", description="Optional: a user entry outside this filter is treated as locked."
    )
    group_filter: str = Field(
        default="",
        description="Optional: only user entries matching it may log in (e.g. "
        "'(memberOf=cn=mail,ou=groups,dc=example,dc=org)').",
    )
    password_changed_attribute: str = Field(
        default="auto",
        min_length=1,
        description="Attribute whose value changes when the password does. SCRAM keys "
        "derived under another value are discarded (made again at the next PLAIN/LOGIN), "
        "cached logins are forgotten and a user rotate deadline is met. 'auto' (the "
        "default): ppolicy's pwdChangedTime where the entry has it (with ppolicy = "
        "true), else entryCSN, which also moves with every failed bind under ppolicy "
        "(pwdFailureTime). The active_directory flavour sets pwdLastSet.",
    )
    expires_attribute: str = Field(
        default="",
        description="Optional: attribute holding when the account expires, in Active "
        "Directory's accountExpires form (100-ns intervals since 1601-01-01 UTC; 0 or "
        "9223372036854775807: never). Past it the account is treated as locked, for "
        "SCRAM and cached logins too, which make no bind.",
    )
    locked_flags_attribute: str = Field(
        default="",
        description="Optional: an integer attribute read at each login; an entry with "
        "any bit of locked_flags set in it is treated as locked (AD: "
        "msDS-User-Account-Control-Computed: locked out, password expired).",
    )
    locked_flags: int = Field(
        default=0, ge=0, description="The bits of locked_flags_attribute that lock the account."
    )
    reset_attribute: str = Field(
        default="pwdReset",
        description="Optional: an entry with the value TRUE in it has a password an "
        "administrator set, which its user must change first (OpenLDAP ppolicy with "
        "pwdMustChange, whose bind still succeeds): treated as locked until then. "
        "Empty: not read.",
    )
    ppolicy: bool = Field(
        default=True,
        description="Read OpenLDAP ppolicy's state with each entry (pwdAccountLockedTime, "
        "pwdChangedTime, pwdPolicySubentry) and the policy that applies (pwdLockoutDuration, "
        "pwdMaxAge): an account locked out after failed passwords, or whose password "
        "expired, is treated as locked, for SCRAM and cached logins too, which make no "
        "bind. Without ppolicy the attributes never exist and nothing changes; false for "
        "the active_directory flavour (locked_flags does it there).",
    )
    ppolicy_default_dn: str = Field(
        default="",
        description="The DN of the default password policy (slapd's ppolicy_default), for "
        "entries without pwdPolicySubentry; the service account must be able to read it. "
        "Empty: only entries with their own pwdPolicySubentry have their lockout's end "
        "and password expiry checked.",
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, le=60, description="Seconds to connect to the directory."
    )
    operation_timeout: float = Field(
        default=10.0, gt=0, le=120,
        description="Seconds one directory look-up may take in all (connecting, StartTLS, "
        "the service account's bind, the searches and the retry on a fresh connection "
        "together; for a password check, the search and the user's bind together) before "
        "the login gets 454 4.7.0. Until 2026-12 it bounded each of those steps, so one "
        "check could take several times it.",
    )
    pool_size: int = Field(
        default=4, ge=1, le=64,
        description="Connections each server process keeps for searches (as many again for binds).",
    )
    idle_timeout: float = Field(
        default=60.0, ge=0, le=3600,
        description="Seconds a kept connection may go unused and still be used again; "
        "older, it is closed and a new one opened. A firewall, NAT or load balancer "
        "between here and the directory may forget an idle connection without telling "
        "either end (AWS NLB after 350 s, Azure's after 4 min), and a look-up sent on "
        "it would wait out operation_timeout for an answer that never comes: 454 "
        "4.7.0, and logins refused at once for a while (retry_max). Keep it below the "
        "shortest such timeout on the path. 0: a new connection for every look-up.",
    )
    retry_max: float = Field(
        default=10.0, ge=0, le=300,
        description="Seconds at most that logins get 454 4.7.0 at once, without asking "
        "the directory, after a look-up got no answer (a refused or lost connection, "
        "or operation_timeout passed): the first such window lasts 1 s, then a probe "
        "(an anonymous read of the root DSE, no login, on a thread of its own) asks "
        "whether the directory answers; each probe without an answer doubles the "
        "window, up to this. The window ends at once when the probe, or any look-up, "
        "gets an answer. So a directory that accepts connections but never replies "
        "costs one login its timeout, not every login in turn. 0: every login asks "
        "the directory itself.",
    )
    allow_cleartext: bool = Field(
        default=False,
        description="Loosening: allow ldap:// without StartTLS to a non-loopback host "
        "(passwords then cross the network in clear).",
    )
    flavour: Literal["openldap", "active_directory"] = Field(
        default="openldap",
        description="'active_directory' fills every key not set here with AD's names: "
        "UPN/sAMAccountName logins, proxyAddresses (smtp: values), disabled accounts via "
        "userAccountControl, pwdLastSet (docs/directories.md, \"Active Directory\").",
    )
    scram: bool = Field(
        default=False,
        description="Offer SCRAM-SHA-* for directory accounts. The directory checks "
        "passwords by a bind and hands out no SCRAM keys, so a user has none until a "
        "first PLAIN/LOGIN login derives them; a client that picks the strongest "
        "mechanism offered would pick SCRAM and fail until then. Default false: SCRAM is "
        "not offered (as Dovecot with an auth-bind passdb) and no keys are derived. "
        "true: offered, keys derived and kept at each user's first PLAIN/LOGIN login.",
    )
    group: str = Field(
        default="",
        description="DN of a group whose members may log in (with flavour = "
        "'active_directory', nested groups and the primary group count too); sets "
        "group_filter, so not both.",
    )

    @model_validator(mode="before")
    @classmethod
    def _flavour(cls, data: object) -> object:
        from smtpgate import ldap_presets

        return ldap_presets.apply_preset(data)

    @field_validator("ca_file", "bind_password_file", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("url")
    @classmethod
    def _check_ldap_url(cls, v: str) -> str:
        if not v:
            return v
        parsed = urllib.parse.urlsplit(v)
        try:
            port = parsed.port
        except ValueError:  # not a number, or over 65535
            port = 0
        if port == 0:
            raise ValueError(f"{v!r}: the port must be a number from 1 to 65535")
        if parsed.scheme not in ("ldap", "ldaps") or not parsed.hostname:
            raise ValueError(f"{v!r}: use ldaps://host[:port] or ldap://host[:port]")
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            raise ValueError(f"{v!r}: only ldaps://host[:port] or ldap://host[:port]; "
                             "the search base is base_dn")
        if "@" in parsed.netloc:
            # Never used to bind, and the url is in every directory log line,
            # config check and status: a password there would be in all of them.
            # The error does not repeat the value, for the same reason.
            raise ValueError("holds a user name or password before '@'; remove it: the "
                             "service account is bind_dn, its password bind_password_file")
        return v

    @field_validator("user_filter", "enabled_filter", "group_filter")
    @classmethod
    def _check_filter(cls, v: str) -> str:
        """A filter ldap3 cannot parse would fail every login (454) at the directory."""
        if v:
            from ldap3.core.exceptions import LDAPException
            from ldap3.operation.search import parse_filter

            try:
                parse_filter(  # type: ignore[no-untyped-call]
                    v.replace("{login}", "x"), None, False, True, None, False)
            except LDAPException as e:
                raise ValueError(f"{v!r} is not an LDAP filter (RFC 4515): {e}") from None
        return v

    @model_validator(mode="after")
    def _check(self) -> LdapConfig:
        if not self.url:
            return self
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme == "ldaps" and self.starttls:
            raise KeyProblem("starttls", "starttls = true needs an ldap:// url (ldaps:// is TLS "
                             "already)")
        if "{login}" not in self.user_filter:
            raise KeyProblem("user_filter", "user_filter must contain {login}")
        if self.bind_dn and self.bind_password_file is None:
            raise KeyProblem("bind_password_file", "bind_dn needs bind_password_file")
        if self.cleartext and not self.allow_cleartext and not _loopback(parsed.hostname or ""):
            raise KeyProblem(
                "url",
                f"url {self.url!r} is cleartext to a remote host: passwords would cross "
                "the network unencrypted; use ldaps://, set starttls = true, or (a "
                "loosening) allow_cleartext = true"
            )
        return self

    @property
    def cleartext(self) -> bool:
        """ldap:// without StartTLS; the scheme in any letter case (RFC 3986 §3.1), as
        the directory client reads it."""
        return urllib.parse.urlsplit(self.url).scheme == "ldap" and not self.starttls


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AccountsConfig(Model):
    backend: Literal["sqlite", "postgresql", "ldap"] = Field(
        default="sqlite",
        description="Where accounts are kept: 'sqlite' (the file [accounts].database) or "
        "'postgresql' ([accounts.postgresql]; docs/directories.md) or 'ldap' "
        "([accounts.ldap]). Every server process and `smtpgate user ...` command opens "
        "the one named here.",
    )
    postgresql: PostgresConfig = Field(
        default_factory=PostgresConfig,
        description="The PostgreSQL backend (used when backend = 'postgresql').",
    )
    ldap: LdapConfig = Field(
        default_factory=LdapConfig,
        description="The LDAP directory (used when backend = 'ldap'); what smtpgate adds "
        "to its accounts stays in [accounts].database.",
    )
    database: Path = Field(default=Path("accounts.sqlite"), description="SQLite account database.")
    # The upper bounds are Argon2's own (RFC 9106 §3.1: 32-bit t and m, 24-bit p) and
    # PBKDF2's (a C int in OpenSSL): past them `user add` and every hashing login
    # ended in an OverflowError traceback, the config having passed.
    argon2_time_cost: int = Field(
        default=3, ge=1, le=2**32 - 1, description="Argon2id passes."
    )
    argon2_memory_kib: int = Field(
        default=65536, ge=8192, le=2**32 - 1, description="Argon2id memory (KiB)."
    )
    argon2_parallelism: int = Field(
        default=4, ge=1, le=2**24 - 1,
        description="Argon2id lanes; argon2_memory_kib must be at least 8 KiB per lane.",
    )
    scram_iterations: int = Field(
        default=10000, ge=4096, le=2**31 - 1,
        description="PBKDF2 iterations for stored SCRAM keys.",
    )
    cache_ttl: float = Field(
        default=3600.0,
        ge=0,
        description="Seconds a verified (user, password) pair is remembered in memory as a "
        "keyed hash, so repeat logins skip Argon2 (like Dovecot's auth cache). 0 disables.",
    )
    hash_threads: int = Field(
        default=2, ge=1, description="Worker threads for password hashing, off the event loop."
    )

    @property
    def withheld_mechanisms(self) -> frozenset[str]:
        """Mechanisms no door offers whatever the mechanism lists say: SCRAM for a
        bind-verifying directory without ``scram = true``, whose users have no keys
        until a PLAIN/LOGIN login (docs/directories.md, "SCRAM")."""
        if self.backend == "ldap" and not self.ldap.scram:
            return mechanism_facts.SCRAM
        return frozenset()

    @model_validator(mode="after")
    def _argon2_memory_per_lane(self) -> AccountsConfig:
        """Argon2 needs 8 KiB of memory per lane (RFC 9106 §3.1); with fewer, every
        hash failed ('Memory cost is too small') in `user add` and at each login."""
        if self.argon2_memory_kib < 8 * self.argon2_parallelism:
            raise KeyProblem("argon2_memory_kib", (
                f"{self.argon2_memory_kib} KiB is less than 8 KiB for each of the "
                f"{self.argon2_parallelism} lanes of argon2_parallelism; raise it to "
                f"{8 * self.argon2_parallelism} or lower argon2_parallelism"))
        return self

    @model_validator(mode="after")
    def _backend_settings(self) -> AccountsConfig:
        if self.backend == "postgresql" and not self.postgresql.dsn:
            raise KeyProblem("postgresql.dsn", 'backend = "postgresql" needs [accounts.postgresql].dsn')
        if self.backend == "ldap" and not (self.ldap.url and self.ldap.base_dn):
            raise KeyProblem("ldap.url" if not self.ldap.url else "ldap.base_dn",
                             'backend = "ldap" needs [accounts.ldap].url and base_dn')
        return self


class AuthConfig(Model):
    mechanisms: list[str] = Field(
        default_factory=lambda: list(mechanism_facts.DEFAULT_ENABLED),
        description="Mechanisms enabled server-wide; advertised strongest first. CRAM-MD5 "
        "needs plaintext-equivalent secrets; OAUTHBEARER/XOAUTH2 need [[auth.oauth_issuers]].",
    )
    log_file: Path | None = Field(
        default=Path("auth.log"), description="JSON-lines auth log; empty to disable."
    )
    oauth_issuers: list[IssuerConfig] = Field(
        default_factory=list,
        description="OAuth 2.0 issuers whose tokens OAUTHBEARER/XOAUTH2 accept "
        "([[auth.oauth_issuers]] tables; see docs/oauth.md).",
    )
    oauth_scope: str = Field(
        default="",
        description="Scope named in the OAUTHBEARER and XOAUTH2 error reply (RFC 7628 "
        "§3.2.2). Empty: the issuers' required_scopes (space-separated) when every issuer "
        "requires the same ones; left out when they differ or there are none.",
    )
    oauth_openid_configuration: str = Field(
        default="auto",
        description="'openid-configuration' of the OAUTHBEARER error reply (RFC 7628 "
        "§3.2.2), where a client finds the identity provider to get a token from. auto: "
        "with exactly one issuer, whose issuer is an https URL, that issuer's OpenID "
        "Connect discovery document (issuer + '/.well-known/openid-configuration'); "
        "otherwise left out. off: never sent (an issuer that is no OpenID provider). Or "
        "the document's https URL.",
    )
    failure_floor: float = Field(
        default=0.25,
        ge=0,
        description="Minimum seconds before a failed AUTH is answered (with jitter), so "
        "timing does not tell an unknown account from a wrong password.",
    )
    session_recheck: float = Field(
        default=10.0,
        ge=0,
        description="Seconds after which a logged-in session reads its account again, at "
        "its next MAIL: a lock, removal, password change or access rule made since ends "
        "the session (421 4.7.0); alias and rate changes apply; a session that logged in "
        "with a bearer token has the token verified again (introspection: revoked ends "
        "it). 0: at every MAIL. A token's expiry ends its session at the first MAIL "
        "after it, whatever this says.",
    )
    decoy_secret_file: Path | None = Field(
        default=None,
        description="File holding the secret (32 random bytes) that keys SCRAM's fake "
        "salts for unknown accounts, so a probed name gets the same salt every time, "
        "across restarts and certificate renewals, as a real account does. Default: "
        "decoy.key in the state directory (the directory of accounts.database). `smtpgate "
        "init` creates it; `serve` creates a missing one (mode 0600). Changing it needs a "
        "restart (docs/security.md).",
    )

    @field_validator("log_file", "decoy_secret_file", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("oauth_openid_configuration")
    @classmethod
    def _auto_off_or_url(cls, v: str) -> str:
        if v not in ("auto", "off") and not (
                urllib.parse.urlsplit(v).scheme == "https" or _is_loopback_http(v)):
            raise ValueError("must be 'auto', 'off' or an https:// URL (http only for localhost)")
        return v

    @field_validator("mechanisms")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        out = [m.upper() for m in v]
        for m in out:
            if mechanism_facts.facts(m) is None:
                known = ", ".join(mechanism_facts.KNOWN)
                raise ValueError(f"unknown mechanism {m!r}; known: {known}")
        return out


class LimitsConfig(Model):
    max_message_size: int = Field(
        default=35_000_000, ge=1024, description="Largest message in octets (SIZE, RFC 1870)."
    )
    max_recipients: int = Field(
        default=100, ge=1, description="Recipients per message (RFC 5321 minimum is 100)."
    )
    command_timeout: float = Field(
        default=300.0, gt=0,
        description="Idle seconds waiting for a command (RFC 5321 §4.5.3.2), counted from the"
        " client's last byte or the server's last reply, whichever came later: time the server"
        " takes over a command (an AUTH penalty, a look-up, the spool's fsync) is not the"
        " client's.",
    )
    data_timeout: float = Field(
        default=600.0, gt=0, description="Idle seconds between data chunks during DATA."
    )
    # Deadlines (issue 16): the idle timeouts above restart on every byte, so a
    # client trickling one byte at a time would hold its connection for ever.
    # These bound a whole unit of work instead; docs/smtp.md explains the defaults.
    command_deadline: float = Field(
        default=60.0,
        gt=0,
        description="Seconds one command line may take from its first byte to its end.",
    )
    auth_deadline: float = Field(
        default=120.0,
        gt=0,
        description="Seconds one AUTH exchange may take, from the AUTH command to its "
        "last client response.",
    )
    data_min_rate: int = Field(
        default=500,
        ge=0,
        description="Octets per second a message must average (DATA, or BDAT from its "
        "first chunk to its LAST): it may last data_timeout plus one second per this "
        "many octets received (Postfix's smtpd_min_data_rate); 0 turns the rate off.",
    )
    max_errors: int = Field(
        default=10, ge=3, description="Errors in one session since its last accepted message before 421 and close."
    )
    max_connections: int = Field(default=1000, ge=1, description="Concurrent connections in all.")
    max_connections_per_ip: int = Field(
        default=20, ge=1, description="Concurrent connections from one client address (IPv6: its /64). "
        "Not a proxy's in a listener's xclient_trusted (nginx): its connections, each for a "
        "client it authenticated, count toward max_connections only."
    )
    connection_rate_per_ip: int = Field(
        default=300,
        ge=0,
        description="New connections one client address (IPv6: its /64) may open per "
        "minute (sliding window), all listeners and workers together; over it a connection "
        "gets 421 4.7.0 before any TLS handshake (on an implicit-TLS port it is closed "
        "unanswered). Refused attempts count too. 0 turns the limit off. Postfix's "
        "smtpd_client_connection_rate_limit.",
    )
    connection_rate_exceptions: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Networks (CIDR) connection_rate_per_ip does not apply to: local "
        "applications and monitoring (Postfix's smtpd_client_event_limit_exceptions). "
        "The concurrent limits still apply.",
    )

    @field_validator("connection_rate_exceptions")
    @classmethod
    def _rate_networks(cls, v: list[str]) -> list[str]:
        return _check_networks(v)
    # Per-identity sending rates (issue 4). Sliding one-hour window in one-minute
    # buckets; the defaults are generous for a person and stop a stolen password
    # from turning the account into a spam cannon within the hour.
    messages_per_hour: int = Field(
        default=200,
        ge=0,
        description="Messages one account may send per hour (sliding window) before MAIL "
        "gets 450 4.7.1 (sessions ending messages at the same moment: the end of DATA, "
        "docs/policy.md); 0 means unlimited. Per-account override: `smtpgate user limits`; "
        "an app password may have a lower limit of its own.",
    )
    recipients_per_hour: int = Field(
        default=1000,
        ge=0,
        description="Recipients one account may send to per hour (sliding window) before "
        "RCPT gets 450 4.7.1; 0 means unlimited. Per-account override as for "
        "messages_per_hour.",
    )


class GuardConfig(Model):
    """Brute-force, spraying and lockout protection; see docs/protection.md."""

    enabled: bool = Field(
        default=True,
        description="Apply penalties, blocks and lockouts. Turning it off is a loosening "
        "that is logged at start-up.",
    )
    database: Path = Field(
        default=Path("guard.sqlite"),
        description="SQLite file with failure counters, blocks, lockouts, known addresses "
        "and rate-limit counters; survives restarts and is shared by workers. Neither "
        "created nor read with [state] backend = \"redis\".",
    )
    allowlist: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) the guard ignores entirely: no penalty, no counting, no "
        "block, no lockout (for monitoring and known relays). A non-empty list is logged at "
        "start-up. Administrative locks (`user lock`) still apply.",
    )
    ipv6_prefix: int = Field(
        default=64,
        ge=1,
        le=128,
        description="IPv6 prefix length that counts as one client address (a /64 is what "
        "one customer usually gets). IPv4 addresses count one by one (/32).",
    )
    subnet_ipv4_prefix: int = Field(
        default=24, ge=1, le=32, description="IPv4 prefix of the wider net watched for spraying."
    )
    subnet_ipv6_prefix: int = Field(
        default=48, ge=1, le=128, description="IPv6 prefix of the wider net watched for spraying."
    )
    penalty_base: float = Field(
        default=0.5,
        ge=0,
        description="Seconds of delay before the next AUTH from an address after its first "
        "recent failure; doubles with each further failure (Dovecot's auth penalty).",
    )
    penalty_max: float = Field(
        default=4.0, ge=0, description="Cap of the penalty delay, in seconds; not below "
        "penalty_base, or 0: no delay."
    )
    penalty_window: float = Field(
        default=900.0,
        gt=0,
        description="Seconds after an address's last failure before its penalty is forgotten; "
        "a successful login from the address forgets it at once.",
    )
    lockout_threshold: int = Field(
        default=10,
        ge=1,
        description="Failed logins to one account from addresses it never logged in from, "
        "within lockout_window, that lock the account for such new addresses.",
    )
    known_lockout_threshold: int = Field(
        default=30,
        ge=1,
        description="Failed logins to one account from its known addresses, within "
        "lockout_window, that lock the account for every address.",
    )
    lockout_window: float = Field(
        default=900.0, gt=0, description="Seconds over which lockout failures are counted."
    )
    lockout_duration: float = Field(
        default=900.0,
        gt=0,
        description="Seconds a lockout lasts; it expires by itself, or `smtpgate user unlock` "
        "lifts it.",
    )
    known_address_days: float = Field(
        default=90.0,
        gt=0,
        description="Days an address stays known to an account after a successful login "
        "from it.",
    )
    distributed_addresses: int = Field(
        default=5,
        ge=2,
        description="Distinct new addresses failing against one account within "
        "lockout_window that throttle the account's logins from new addresses.",
    )
    throttle_interval: float = Field(
        default=30.0,
        gt=0,
        description="While an account is throttled, a login from a new address is refused "
        "(454) if another new address failed against it less than this many seconds ago.",
    )
    throttle_duration: float = Field(
        default=3600.0, gt=0, description="Seconds a throttle on an account lasts."
    )
    spray_accounts: int = Field(
        default=10,
        ge=2,
        description="Distinct accounts one address may fail against within spray_window "
        "before the address is blocked (password spraying).",
    )
    subnet_spray_accounts: int = Field(
        default=30,
        ge=2,
        description="Distinct accounts one subnet (subnet_ipv4_prefix/subnet_ipv6_prefix) may "
        "fail against within spray_window before the subnet is blocked for new addresses. "
        "Attempts sent at the same moment from many addresses of the subnet do not overshoot "
        "it: new-address attempts from one subnet are checked one at a time per process "
        "(docs/protection.md, \"Simultaneous attempts\").",
    )
    address_failure_limit: int = Field(
        default=100,
        ge=1,
        description="Failed logins from one address within spray_window, whatever the "
        "accounts, that block the address.",
    )
    spray_window: float = Field(
        default=3600.0, gt=0, description="Seconds over which spraying is counted."
    )
    block_duration: float = Field(
        default=3600.0, gt=0, description="Seconds an address or subnet block lasts."
    )

    @field_validator("allowlist")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as e:
                raise ValueError(f"{net!r} is not a network: {e}") from None
        return v

    @field_validator("penalty_max")
    @classmethod
    def _check_penalty_max(cls, v: float, info: ValidationInfo) -> float:
        """A cap below the first delay makes penalty_base mean nothing: every delay,
        the first included, would be penalty_max. 0 is "no delay" (configs written
        before this check turned the delay off so; they still start)."""
        base = info.data.get("penalty_base")
        if isinstance(base, float | int) and 0 < v < base:
            raise ValueError(f"{v} is below penalty_base ({base}), so every delay would be "
                             f"{v} s whatever penalty_base says; raise penalty_max to "
                             "penalty_base or more, or set it to 0 for no delay")
        return v


class PolicyConfig(Model):
    """Sending policy; see docs/policy.md."""

    sender_ownership: Literal["enforce", "log", "off"] = Field(
        default="enforce",
        description="MAIL FROM must be an address the account owns (its own, an alias, or "
        "one in a granted domain): 'enforce' refuses others with 553 5.7.1, 'log' only logs "
        "them, 'off' skips the check.",
    )
    from_header: Literal["enforce", "log", "off"] = Field(
        default="enforce",
        description="The same rule for the addresses in the message's From and Sender "
        "headers (read as docs/policy.md says: obsolete syntax, folding, groups, encoded "
        "words, every From field, display names holding addresses); 'enforce' refuses the "
        "message with 550 5.7.1 after its end, 'log' only logs, 'off' skips the check.",
    )
    allow_missing_from_header: bool = Field(
        default=False,
        description="Accept a message with no From header (RFC 5322 requires one). False: "
        "with from_header = 'enforce' it is refused with 554 5.6.0 ('log' logs it).",
    )
    allow_null_sender: bool = Field(
        default=True,
        description="Accept MAIL FROM:<> (delivery reports a client generates) from any "
        "account.",
    )


class PasswordsConfig(Model):
    """Password policy for `smtpgate user add/passwd`, and password age."""

    min_length: int = Field(
        default=12, ge=1, description="Fewest characters in a new password."
    )
    min_strength: int = Field(
        default=3,
        ge=0,
        le=4,
        description="Lowest zxcvbn score (0-4) of a new password; common and easily "
        "guessed passwords score 0-2. 0 disables the check.",
    )
    reject_username: bool = Field(
        default=True,
        description="Refuse a password that equals or contains the account name or its "
        "local part (case-insensitively).",
    )
    max_age_days: float = Field(
        default=0,
        ge=0,
        description="Days after its last change that a password stops working for PLAIN, "
        "LOGIN, CRAM-MD5 and SCRAM (app passwords and OAuth are unaffected); 0 means no "
        "limit. Per-account override: `smtpgate user max-age`.",
    )
    rotation_grace_days: float = Field(
        default=7,
        ge=0,
        description="Days the old secret keeps working after `smtpgate user rotate`.",
    )


class SmtpConfig(Model):
    bare_line_endings: Literal["reject", "normalize"] = Field(
        default="reject",
        description="A message containing bare CR or LF: 'reject' it with 550 5.6.11 after "
        "its end (default), or 'normalize' bare LF to CRLF (Postfix's normalize mode). A bare "
        "LF or CR never ends a message either way.",
    )
    received_header: bool = Field(
        default=True, description="Prepend a Received header (client, protocol such as "
        "ESMTPSA, TLS, queue id); false adds none."
    )
    received_login: bool = Field(
        default=False,
        description="Name the login in the Received header, '(Authenticated sender: "
        "LOGIN)', shown to every recipient. Off by default, as Postfix's "
        "smtpd_sasl_authenticated_header: ESMTPSA still says the client logged in, and "
        "the log and the queue id name the account.",
    )
    add_missing_headers: bool = Field(
        default=True,
        description="Add `Date:` (the arrival time) and `Message-ID: <queue id@hostname>` "
        "at the top of a message's header section when it has none (RFC 6409 §8.2, §8.3); "
        "a message that has them is never changed.",
    )
    banner: str = Field(
        default="ESMTP smtpgate",
        description="Text after the hostname in 220: one line (RFC 5321 §4.2 textstring), "
        "no control character.",
    )

    @field_validator("banner")
    @classmethod
    def _one_line_banner(cls, v: str) -> str:
        """The text goes into the greeting as it is: a CR or LF in it ended the 220
        early and sent what followed as a line of its own (``250 fake``), which a
        client takes for the reply to its EHLO."""
        bad = sorted({c for c in v if c != "\t" and unicodedata.category(c) == "Cc"})
        if bad:
            shown = ", ".join(f"U+{ord(c):04X}" for c in bad)
            raise ValueError(f"holds a control character ({shown}): the banner is the rest "
                             "of the one-line 220 greeting; write it on one line")
        return v


class QueueConfig(Model):
    spool: Path = Field(default=Path("spool"), description="Spool directory.")
    retry_initial: float = Field(default=60.0, gt=0, description="First retry delay (s).")
    retry_max: float = Field(default=3600.0, gt=0, description="Longest retry delay (s).")
    max_age: float = Field(
        default=5 * 86400.0, gt=0, description="Seconds before a message is given up and bounced."
    )
    delay_warning: float = Field(
        default=4 * 3600.0,
        ge=0,
        description="Seconds a message may stay undelivered before its sender gets one delay "
        "warning (RFC 3464, Action: delayed); 0: never. A recipient whose NOTIFY excludes DELAY "
        "gets none.",
    )
    min_free_space: int | None = Field(
        default=None,
        ge=0,
        description="Bytes of free space kept on the spool's file system: while less is "
        "free (or less than this plus a SIZE the client declared), MAIL is answered 452 4.3.1 "
        "and the client tries again later, so the disk never fills up under the spool and the "
        "SQLite files beside it. Unset: 1.5 x limits.max_message_size (Postfix's rule). 0: no "
        "check at MAIL (a write that finds the disk full is still answered 452 4.3.1).",
    )

    def free_space_reserve(self, max_message_size: int) -> int:
        """The reserve in bytes (``min_free_space``, or its default)."""
        if self.min_free_space is not None:
            return self.min_free_space
        return int(1.5 * max_message_size)


def _a_labels(domain: str) -> str:
    """``domain`` (lower case) with each non-ASCII label as its A-label (RFC 5890),
    NFC first: the spelling two routes are compared in."""
    labels = unicodedata.normalize("NFC", domain).split(".")
    return ".".join(label if label.isascii() else "xn--" + label.encode("punycode").decode()
                    for label in labels)


class RouteConfig(Model):
    """One table per route: mail for `domain` goes to `next_hop` (mode 'relay')."""

    domain: str = Field(description="Recipient domain, e.g. 'example.net' (exact match, "
                        "case-insensitive).")
    next_hop: str = Field(description="HOST:PORT of the relay for that domain; the relay_tls "
                          "and AUTH settings apply to it as to relay_host.")

    @field_validator("domain")
    @classmethod
    def _check_domain(cls, v: str) -> str:
        v = v.strip().lower().rstrip(".")
        if not v or "@" in v or " " in v:
            raise ValueError(f"not a domain: {v!r}")
        return v

    @field_validator("next_hop")
    @classmethod
    def _check_next_hop(cls, v: str) -> str:
        _parse_destination(v)
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        return _parse_destination(self.next_hop)


#: ``delivery.drop_fields``'s default: Postfix's ``message_drop_headers``.
DEFAULT_DROP_FIELDS = ("bcc", "resent-bcc", "return-path", "content-length")


class DeliveryConfig(Model):
    mode: Literal["maildir", "relay", "lmtp"] = Field(
        default="maildir",
        description="Where mail goes: one Maildir, a relay host over SMTP, or an LMTP "
        "server (RFC 2033, e.g. Dovecot's) that delivers to each recipient's mailbox.",
    )
    maildir: Path = Field(default=Path("mail"), description="Maildir for mode 'maildir'.")
    drop_fields: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DROP_FIELDS),
        description="Header fields removed from every message when it is delivered "
        "(Maildir, relay, LMTP), as Postfix's message_drop_headers: a Bcc left in by the "
        "client would show the blind copies to every recipient. The spool keeps the "
        "message as received. [] keeps every field.",
    )
    lmtp_address: str = Field(
        default="",
        description="The LMTP server for mode 'lmtp': 'unix:/absolute/path' (e.g. "
        "'unix:/run/dovecot/lmtp') or HOST:PORT. No STARTTLS or AUTH: keep it local.",
    )
    relay_host: str = Field(
        default="",
        description="Relay host for mode 'relay': a host name or an IP address, without "
        "the port (relay_port) or Postfix's [brackets].",
    )
    relay_port: int = Field(default=25, ge=1, le=65535, description="Relay port.")
    relay_tls: Literal["opportunistic", "require", "none"] = Field(
        default="opportunistic",
        description="STARTTLS to the relay: when offered, always, or never.",
    )
    relay_verify_cert: bool | None = Field(
        default=None,
        description="Verify the relay's certificate (relay_ca_file, else the system's CAs). "
        "Not set: verified with relay_tls = 'require' or when relay_user is set (credentials "
        "go only to the real relay), not with 'opportunistic' alone, which encrypts whatever "
        "the certificate, as Postfix's 'may' does. true with 'opportunistic': a relay whose "
        "certificate does not verify gets no mail (config check says so).",
    )
    relay_ca_file: Path | None = Field(default=None, description="CA bundle for the relay.")
    relay_user: str = Field(default="", description="AUTH user at the relay (optional).")
    relay_password_file: Path | None = Field(
        default=None, description="File holding the relay password (never inline)."
    )
    relay_tls_pins: list[str] = Field(
        default_factory=list,
        description="SHA-256 fingerprints (hex, colons allowed) of the relay certificates to "
        "accept; any other is refused and the message deferred. Checked on top of the CA check; "
        "with relay_verify_cert = false, instead of it (a self-signed relay). A refusal names "
        "the fingerprint seen.",
    )
    relay_auth_mechanism: Literal[
        "PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "XOAUTH2", "OAUTHBEARER"
    ] = Field(
        default="PLAIN",
        description="SASL mechanism for AUTH at the relay. SCRAM checks the relay's "
        "signature (a relay that cannot prove it knows the password gets nothing); -PLUS "
        "binds to the relay's certificate (tls-server-end-point). XOAUTH2 and OAUTHBEARER "
        "send the token in relay_token_file. Every mechanism waits for TLS unless "
        "relay_tls = 'none'.",
    )
    relay_token_file: Path | None = Field(
        default=None,
        description="File holding the OAuth 2.0 access token for XOAUTH2/OAUTHBEARER; read "
        "again for every connection, so an external refresher can keep it current.",
    )
    relay_oauth_token_url: str = Field(
        default="",
        description="OAuth 2.0 token endpoint for XOAUTH2/OAUTHBEARER instead of "
        "relay_token_file: smtpgate gets its own access tokens there with the client "
        "credentials grant (RFC 6749 §4.4), keeps each until shortly before it expires and "
        "fetches a new one when the relay refuses it. https:// (http only for localhost).",
    )
    relay_oauth_client_id: str = Field(
        default="", description="Client id at relay_oauth_token_url (HTTP Basic, RFC 6749 "
        "§2.3.1)."
    )
    relay_oauth_client_secret_file: Path | None = Field(
        default=None,
        description="File holding the client secret for relay_oauth_token_url (never "
        "inline); read for every token request, so a rotated secret needs no restart.",
    )
    relay_oauth_scope: str = Field(
        default="", description="'scope' asked of relay_oauth_token_url (space-separated; "
        "empty: none sent), e.g. 'https://outlook.office365.com/.default'."
    )
    relay_oauth_audience: str = Field(
        default="", description="'audience' asked of relay_oauth_token_url (empty: none "
        "sent), for token endpoints that mint tokens per audience (Auth0, Okta)."
    )
    relay_oauth_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a request to relay_oauth_token_url may take."
    )
    routes: list[RouteConfig] = Field(
        default_factory=list,
        description="Per-domain next hops for mode 'relay' ([[delivery.routes]] with domain "
        "and next_hop); a recipient domain without a route goes to relay_host:relay_port.",
    )
    # RFC 5321 §4.5.3.2 minimums as defaults; see docs/delivery.md for the choice.
    relay_connect_timeout: float = Field(
        default=30.0, gt=0, description="Seconds to wait for the TCP connection to the relay."
    )
    relay_greeting_timeout: float = Field(
        default=300.0, gt=0, description="Seconds to wait for the relay's 220 greeting."
    )
    relay_command_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Seconds to wait for each reply (EHLO, STARTTLS and its handshake, AUTH, "
        "MAIL, RCPT, DATA) and for the relay to take each block of the message.",
    )
    relay_data_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Seconds to wait for the relay's reply after the whole message was sent.",
    )

    @field_validator("relay_tls_pins")
    @classmethod
    def _check_pins(cls, v: list[str]) -> list[str]:
        out = []
        for pin in v:
            hexpin = pin.replace(":", "").strip().lower()
            if len(hexpin) != 64 or any(c not in "0123456789abcdef" for c in hexpin):
                raise ValueError(f"not a SHA-256 fingerprint: {pin!r}")
            out.append(hexpin)
        return out

    @field_validator("relay_host")
    @classmethod
    def _check_relay_host(cls, v: str) -> str:
        """The mistakes a relay_host is likely to carry: it was used as written, so
        each deferred every message with a name that does not resolve."""
        v = v.strip()
        try:
            ipaddress.ip_address(v)  # an IPv6 address, unbracketed, holds colons
            return v
        except ValueError:
            pass
        if "://" in v:
            host = urllib.parse.urlsplit(v).hostname or "smtp.example.org"
            raise ValueError(f"{v!r} is a URL; give the host name alone, e.g. {host!r}")
        if v.startswith("[") and v.endswith("]"):
            # Postfix's relayhost = [host] turns off MX look-ups; smtpgate makes none.
            raise ValueError(f"{v!r}: drop the brackets (smtpgate never looks up MX records "
                             f"for relay_host), e.g. {v[1:-1]!r}")
        host, sep, port = v.rpartition(":")
        if sep and port.isdigit():
            raise ValueError(f"{v!r} holds a port; put it in relay_port: relay_host = "
                             f"{host.strip('[]')!r}, relay_port = {int(port)}")
        if any(c.isspace() for c in v) or "/" in v or "@" in v:
            raise ValueError(f"{v!r} is not a host name or an IP address")
        return v

    @field_validator("relay_auth_mechanism", mode="before")
    @classmethod
    def _upper_mechanism(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("lmtp_address")
    @classmethod
    def _check_lmtp_address(cls, v: str) -> str:
        if v and not v.startswith("unix:"):
            _parse_destination(v)
        elif v:
            _parse_socket_address(v)
        return v

    @model_validator(mode="after")
    def _check_mode(self) -> DeliveryConfig:
        if self.mode == "lmtp" and not self.lmtp_address:
            raise KeyProblem("lmtp_address",
                             "mode 'lmtp' needs lmtp_address ('unix:/path' or HOST:PORT)")
        self._check_relay_oauth()
        # One domain however spelt (xn--bcher-kva.example is bücher.example), as
        # queue/routing.py looks routes up.
        domains = [_a_labels(r.domain) for r in self.routes]
        if len(set(domains)) != len(domains):
            raise KeyProblem("routes", "two [[delivery.routes]] for the same domain")
        return self

    @field_validator("drop_fields")
    @classmethod
    def _field_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.fullmatch(r"[!-9;-~]+", name):
                raise ValueError(f"{name!r} is not a header field name (printable ASCII, "
                                 "no space or colon), e.g. 'bcc'")
        return v

    def _check_relay_oauth(self) -> None:
        """A token mechanism has exactly one token source; the client credentials grant
        has its id, secret file and an https URL."""
        token = self.relay_auth_mechanism in ("XOAUTH2", "OAUTHBEARER")
        grant = bool(self.relay_oauth_token_url)
        if self.relay_user and token and self.relay_token_file is None and not grant:
            raise KeyProblem("relay_token_file", f"relay_auth_mechanism "
                             f"{self.relay_auth_mechanism} needs relay_token_file or "
                             "relay_oauth_token_url")
        if not grant:
            return
        if self.relay_token_file is not None:
            raise KeyProblem("relay_token_file",
                             "relay_token_file and relay_oauth_token_url exclude each other")
        if not (token and self.relay_user):
            raise KeyProblem("relay_auth_mechanism" if self.relay_user else "relay_user",
                             "relay_oauth_token_url needs relay_user and "
                             "relay_auth_mechanism XOAUTH2 or OAUTHBEARER")
        if not self.relay_oauth_client_id or self.relay_oauth_client_secret_file is None:
            missing = ("relay_oauth_client_id" if not self.relay_oauth_client_id
                       else "relay_oauth_client_secret_file")
            raise KeyProblem(missing, "relay_oauth_token_url needs relay_oauth_client_id "
                             "and relay_oauth_client_secret_file")
        _check_url(self.relay_oauth_token_url, "relay_oauth_token_url")

    @property
    def relay_cert_verified(self) -> bool:
        """Whether the relay's certificate is verified: relay_verify_cert when set;
        else with relay_tls = "require", or with relay_user (a password or token must
        not go to whoever poses as the relay); not with "opportunistic" alone, which,
        as Postfix's "may", encrypts whatever the certificate: it protects nothing
        from an attacker on the path (who can strip STARTTLS and get clear), and a
        check there only kept mail from a self-signed relay, deferred to max_age."""
        if self.relay_verify_cert is not None:
            return self.relay_verify_cert
        return self.relay_tls == "require" or bool(self.relay_user)

    @property
    def lmtp_endpoint(self) -> tuple[str, int] | Path:
        """Where the LMTP server listens (a host and port, or a socket path)."""
        return _parse_socket_address(self.lmtp_address)


class StateConfig(Model):
    """Where the guard's state and the sending counters live (docs/scale-out.md)."""

    backend: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description="'sqlite': in [guard].database, for one node. 'redis': in Redis, shared "
        "by every node that names the same server and key_prefix, so the guard's "
        "thresholds and the hourly limits hold for the cluster as a whole.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="redis://HOST:PORT/DB, rediss://... for TLS, or unix:///path/to/socket. "
        "No password in the URL: use password_file. No query parameters but ?db=N "
        "(redis-py would take them over smtpgate's own settings).",
    )
    password_file: Path | None = Field(
        default=None,
        description="File whose first line is the Redis password (requirepass or an ACL "
        "user's; the user name goes in redis_url, redis://NAME@host). Read again for each "
        "new connection: a rotated password needs no restart. Default: none.",
    )
    ca_file: Path | None = Field(
        default=None,
        description="With rediss://: PEM file of the CA(s) that signed Redis's certificate "
        "(tls-ca-cert-file on a private CA). Default: the system store. The certificate "
        "and its name (the URL's host) are always checked.",
    )
    cert_file: Path | None = Field(
        default=None,
        description="With rediss://: PEM certificate smtpgate presents to Redis, for a "
        "Redis that asks for one (tls-auth-clients yes, its default); with key_file. "
        "Default: none.",
    )
    key_file: Path | None = Field(
        default=None,
        description="With rediss://: the private key of cert_file (PEM, unencrypted; keep "
        "it mode 0600). Default: none.",
    )
    key_prefix: str = Field(
        default="smtpgate:",
        min_length=1,
        description="Prefix of every key smtpgate writes, so several clusters (or other "
        "applications) can share one Redis.",
    )
    node_name: str | None = Field(
        default=None,
        description="This node's name in `smtpgate cluster status`; default: the host name "
        "and the config file's directory.",
    )
    timeout: float = Field(
        default=0.25,
        gt=0,
        le=10,
        description="Seconds a guard or sending-counter call may wait for the state (the "
        "SQLite file while another process holds its locks, or Redis) before it is answered "
        "without it, per on_unavailable; no call waits behind a stuck one. See "
        "docs/operations.md and docs/scale-out.md.",
    )
    on_unavailable: Literal["known", "open", "closed"] = Field(
        default="known",
        description="Logins while the state does not answer: 'known' lets in addresses the "
        "account logged in from (as this process remembers), others get 454 4.7.0; 'open' "
        "lets every login try; 'closed' refuses all with 454. Penalties and lockouts are "
        "counted in memory meanwhile. Sending limits are not applied meanwhile.",
    )

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"expected redis://, rediss:// or unix://, got {v!r}")
        if parts.password:
            raise ValueError("a password in the URL ends up in logs and `config show`: "
                             "put it in state.password_file")
        # redis-py takes any query parameter as a client setting, over smtpgate's own:
        # ?password= leaked as above and beat password_file, ?ssl_cert_reqs=none or
        # ?ssl_check_hostname=false turned off the verification the docs promise,
        # ?socket_timeout=30 made a login wait 30 s, not state.timeout, in an outage.
        from urllib.parse import parse_qs

        try:
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError(f"cannot read the query of {v!r}") from None
        other = sorted(set(query) - {"db"})
        if other:
            raise ValueError(
                f"query parameters {', '.join(other)} are not taken: only ?db= is; the "
                "password goes in state.password_file, TLS in ca_file, cert_file and "
                "key_file (always verified), the wait in state.timeout")
        return v

    @field_validator("password_file", "ca_file", "cert_file", "key_file", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @model_validator(mode="after")
    def _tls_files_need_rediss(self) -> StateConfig:
        from urllib.parse import urlsplit

        named = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k) is not None]
        if named and urlsplit(self.redis_url).scheme != "rediss":
            raise KeyProblem(named[0], f"{', '.join(named)} only apply to a rediss:// redis_url "
                             "(TLS)")
        if (self.cert_file is None) != (self.key_file is None):
            raise KeyProblem("key_file" if self.key_file is None else "cert_file",
                             "cert_file and key_file go together (the client certificate "
                             "and its key)")
        return self


class ServerConfig(Model):
    workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Worker processes sharing the listening sockets; 0 means one per CPU "
        "this process may use, at most 4: its affinity mask (a container's cpuset, taskset, "
        "systemd AllowedCPUs=) and its cgroup's CPU quota rounded up (docker --cpus, systemd "
        "CPUQuota=), not the host's CPUs. Each runs its own event loop; with more than one, delivery runs "
        "in a process of its own and the parent supervises (docs/operations.md). TLS "
        "handshakes and Argon2 are CPU-bound: this is how smtpgate uses more than one core.",
    )

    worker_cpu_affinity: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: with more than one worker, each worker process is bound to one "
        "of the CPUs smtpgate may run on (worker 1 to the first, and so on, round-robin), so "
        "that its event loop and its threads hand work to each other on one core; the parent "
        "and the delivery process are not bound. off: the kernel places every process. Set "
        "off when other work on the host keeps CPUs busy and the workers should be free to "
        "move away from them (docs/operations.md). Needs a restart.",
    )

    sqlite_reads_on_loop: bool = Field(
        default=True,
        description="Row reads of the local SQLite files (the account database, the guard "
        "state, the rate counters) are made on the worker's event loop instead of a thread: "
        "a hop to a thread costs more CPU than such a read from the page cache. The loop's "
        "reads never wait for a lock (they go to a thread instead), and a read that fails, or "
        "three that take over 20 ms within a minute, send that file's reads to a thread for a "
        "minute (logged). Set "
        "false when the files sit on storage that can stall for seconds: a stalled read "
        "then holds up one session instead of the worker (docs/operations.md). Needs a "
        "restart.",
    )

    worker_watchdog: float = Field(
        default=60.0, ge=0, description=(
            "Seconds a worker or the delivery process may go without its event loop"
            " reporting to the parent (it does every 5 s, or a quarter of this if less)"
            " before the parent kills it"
            " (SIGKILL) and starts another: a loop stuck on storage that hangs or in a bug"
            " holds its share of connections and answers none, and systemd's watchdog"
            " sees only the parent. 0 turns it off (e.g. to stop a worker in a debugger)."
            " Under workers = 1 there is no parent: systemd's WatchdogSec sees the loop."
        ),
    )
    shutdown_grace: float = Field(
        default=10.0, ge=0, description=(
            "Seconds in-flight sessions and deliveries get on SIGTERM: then sessions get"
            " 421 and unfinished deliveries are cancelled (their messages stay queued)."
            " Under systemd keep TimeoutStopSec above it plus 30 s, the time serve gives"
            " a child past it before killing it (the contrib unit has 45)."
        ),
    )
    pid_file: Path | None = Field(
        default=None,
        description="File where `serve` writes its process id, for `smtpgate reload` (and "
        "removes on exit). Default: smtpgate.pid in the directory of accounts.database (the "
        "state directory), where it was at start-up: a reload that moves accounts.database leaves "
        "it there until a restart (`reload` and `status` find the server by its config file "
        "meanwhile). Changing it needs a restart.",
    )
    log_file: Path | None = Field(
        default=None,
        description="Append the server log to this file instead of stderr; it is reopened "
        "on SIGHUP and SIGUSR1 (log rotation). Until the server serves, errors go to "
        "stderr as well, so a start that fails says why where it was started. Default: "
        "stderr (the journal under systemd). Changing it needs a restart.",
    )

    user: str = Field(
        default="",
        description="Run as this user (docs/operations.md, \"Running as an unprivileged "
        "user\"): started as root, smtpgate binds its listeners (ports below 1024 too), hands "
        "its state files to the user, then drops root for the user and its group before "
        "serving. Empty: stay as started (a warning when that is root). Needs a restart.",
    )
    group: str = Field(
        default="",
        description="The group to run as with `user`; empty: the user's login group.",
    )

    @field_validator("pid_file", "log_file", mode="before")
    @classmethod
    def _empty_path_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @model_validator(mode="after")
    def _group_needs_user(self) -> ServerConfig:
        if self.group and not self.user:
            raise KeyProblem("user", "group is set without user")
        return self

    @property
    def effective_workers(self) -> int:
        # The CPUs this process may use (affinity, cgroup quota), not the host's.
        return self.workers or min(4, usable_cpus())


class HttpListener(Model):
    """A table with one ``listen = "HOST:PORT"`` key for an HTTP endpoint; empty: off."""

    listen: str
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Other names a client may send in the HTTP Host header, e.g. "
        "['admin.example.org'] behind a reverse proxy that passes its own Host on. "
        "Always accepted: IP addresses, 'localhost', the listen host, `hostname` and "
        "the machine's host name; any other Host is refused with 421, so that a web "
        "page whose DNS name is rebound to this address cannot read it (DNS rebinding).",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        if v.strip():
            _parse_hostport(v.strip())
        return v.strip()

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, v: list[str]) -> list[str]:
        names = [h.strip().lower().rstrip(".") for h in v]
        for h in names:
            if not h or any(c in h for c in "/:@[] "):
                raise ValueError(f"{h!r} is not a host name (no port, no scheme)")
        return names

    @property
    def endpoint(self) -> tuple[str, int] | None:
        """(host, port), or None when the endpoint is off."""
        return _parse_hostport(self.listen) if self.listen else None


class AdminConfig(HttpListener):
    listen: str = Field(
        default="",
        description="HOST:PORT of the web admin (docs/operations.md, \"Web admin\"), e.g. "
        "'127.0.0.1:9480'; empty disables it. On a loopback address it speaks plain HTTP; "
        "on any other it speaks HTTPS with the [tls] certificate. A reload opens, moves or "
        "closes it (to a port the running user may bind).",
    )
    session_lifetime: float = Field(
        default=28800.0, gt=0, le=7 * 86400,
        description="Seconds a web admin login lasts (then the admin logs in again). "
        "Sessions are kept in the serving process: a restart ends them all.",
    )
    session_idle_timeout: float = Field(
        default=1800.0, ge=0, le=7 * 86400,
        description="Seconds without a request after which a web admin login ends (a page "
        "left open on an unattended desk); 0: only session_lifetime ends it. A reload "
        "applies it to open sessions.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) of reverse proxies in front of the web admin, e.g. "
        "['127.0.0.1/32']. From them, X-Forwarded-For names the client (its rightmost "
        "address outside these networks: what the guard counts logins under) and "
        "X-Forwarded-Proto: https makes the session cookie Secure; from anyone else both "
        "headers are ignored. Empty: the connection's address is the client.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        for net in v:
            try:
                ipaddress.ip_network(net.strip(), strict=False)
            except ValueError as e:
                raise ValueError(f"{net!r} is not a network: {e}") from None
        return [net.strip() for net in v]

    @property
    def url(self) -> str:
        """Where the web admin answers ("" when off): plain HTTP on loopback only."""
        endpoint = self.endpoint
        if endpoint is None:
            return ""
        return f"{'http' if is_loopback_host(endpoint[0]) else 'https'}://{self.listen}/"


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP address (a bracketed IPv6 literal too)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class MetricsConfig(HttpListener):
    listen: str = Field(
        default="",
        description="HOST:PORT of the Prometheus endpoint (/metrics, plain HTTP; "
        "docs/operations.md, \"Metrics\"), e.g. '127.0.0.1:9465'; empty disables it. "
        "Keep it on loopback or a monitoring network: it has no authentication. A reload "
        "opens, moves or closes it (to a port the running user may bind).",
    )

    @property
    def url(self) -> str:
        """The scrape URL ("" when off)."""
        return f"http://{self.listen}/metrics" if self.listen else ""


class Config(Model):
    hostname: str = Field(
        default="localhost",
        description="Name in the greeting, Received and the EHLO to a relay: a DNS host name "
        "(RFC 1123 labels, e.g. 'mail.example.org'); IP addresses are refused.",
    )
    listeners: Annotated[list[ListenerConfig], Field(min_length=1)] = Field(
        description="Listening sockets ([[listeners]] tables)."
    )
    auth_listeners: list[AuthListenerConfig] = Field(
        default_factory=list,
        description="Front doors for other servers ([[auth_listeners]] tables): the Dovecot "
        "auth protocol for Postfix and Exim, nginx's auth_http, Postfix policy delegation.",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS certificate and versions.")
    accounts: AccountsConfig = Field(default_factory=AccountsConfig, description="Account store.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Authentication.")
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig, description="Session limits and sending rates."
    )
    guard: GuardConfig = Field(
        default_factory=GuardConfig, description="Brute-force and spraying protection."
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="Sending policy.")
    passwords: PasswordsConfig = Field(
        default_factory=PasswordsConfig, description="Password policy and rotation."
    )
    smtp: SmtpConfig = Field(default_factory=SmtpConfig, description="SMTP behaviour.")
    queue: QueueConfig = Field(default_factory=QueueConfig, description="Spool and retries.")
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig, description="Delivery.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="Processes.")
    state: StateConfig = Field(
        default_factory=StateConfig, description="Shared guard state and counters."
    )
    admin: AdminConfig = Field(
        default_factory=AdminConfig,
        description="The web admin: on at 127.0.0.1:9480 in the config `smtpgate init` "
        "writes; off without this table.",
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig,
        description="Prometheus metrics: on at 127.0.0.1:9465 in the config `smtpgate init` "
        "writes; off without this table.",
    )

    #: Directory of the config file; relative paths are resolved against it.
    base_dir: Path = Field(default=Path("."), exclude=True, description="(internal)")

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str) -> str:
        return check_hostname(v)

    def path(self, p: Path) -> Path:
        """Resolve a configured path relative to the config file's directory."""
        return p if p.is_absolute() else (self.base_dir / p)


class ConfigError(Exception):
    """The config is unusable; ``problems`` lists (key, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))


def in_file(path: Path, key: str, message: str) -> str:
    """A config problem as one line naming the file first, as `config check` and
    compilers write it: ``PATH: KEY: message``.

    Why: a key alone does not say which file is wrong when several configs live on
    a host, or when the file comes from ``$SMTPGATE_CONFIG`` (the systemd unit's
    ``Environment=``) and the line is read in the journal. A problem of the whole
    file (``(file)``) is ``PATH: message``, and just the message when it names the
    path already (``permission denied: user X cannot read PATH``)."""
    if key == "(file)":
        return message if str(path) in message else f"{path}: {message}"
    return f"{path}: {key}: {message}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds: itself, or inside ``list[...]`` / ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model of the table at ``loc`` (list indexes skipped), if there is one."""
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        inner = None if field is None else _model_in(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [k for k in model.model_fields if k != "base_dir"]


def _table_name(loc: tuple[int | str, ...]) -> str:
    """How the TOML file spells the table at ``loc``: [limits], [[listeners]] #2."""
    if not loc:
        return "the top level"
    dotted = ".".join(str(p) for p in loc if isinstance(p, str))
    if isinstance(loc[-1], int):
        return f"[[{dotted}]] #{loc[-1] + 1}"
    return f"[{dotted}]"


def _tables() -> dict[str, type[BaseModel]]:
    """Every table of the schema by its TOML name, for "it belongs in [x]"."""
    out: dict[str, type[BaseModel]] = {"the top level": Config}
    for name, field in Config.model_fields.items():
        model = _model_in(field.annotation)
        if model is not None:
            many = get_origin(field.annotation) is list
            out[f"[[{name}]]" if many else f"[{name}]"] = model
    return out


def unknown_key_message(loc: tuple[int | str, ...]) -> str:
    """"unknown key `hostnam` in [server]; did you mean `hostname` at the top level?"

    A near miss among the table's own keys is suggested first; failing that, the
    same key or a near miss in another table.
    """
    name = str(loc[-1])
    where = _table_name(loc[:-1])
    text = f"unknown key `{name}` " + ("at the top level" if not loc[:-1] else f"in {where}")
    model = _model_at(loc[:-1])
    if model is not None:
        near = _near(name, _keys_of(model))
        if near:
            return f"{text}; did you mean `{near}`?"
    for table, other in _tables().items():
        if table == where or other is model:
            continue
        place = "at the top level" if other is Config else f"in {table}"
        if name in _keys_of(other):
            return f"{text}; it belongs {place}"
        near = _near(name, _keys_of(other))
        if near:
            return f"{text}; did you mean `{near}` {place}?"
    return text


def _near(name: str, keys: list[str]) -> str | None:
    """The key ``name`` is most likely a typo of (case-insensitively), if any."""
    by_lower = {k.lower(): k for k in keys}
    swapped = [k for k in by_lower if _one_swap(name.lower(), k)]
    if swapped:  # `tsl`: two letters typed in the wrong order, too short for difflib
        return by_lower[swapped[0]]
    near = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.75)
    return by_lower[near[0]] if near else None


def _one_swap(typed: str, key: str) -> bool:
    """``typed`` is ``key`` with two neighbouring letters exchanged (``tsl`` for
    ``tls``): difflib's ratio of a three-letter name with one swap is 0.67, under
    the cutoff that keeps unrelated short names from being suggested."""
    if len(typed) != len(key) or typed == key:
        return False
    diff = [i for i, (a, b) in enumerate(zip(typed, key, strict=True)) if a != b]
    return (len(diff) == 2 and diff[1] == diff[0] + 1
            and typed[diff[0]] == key[diff[1]] and typed[diff[1]] == key[diff[0]])


def _is_table_list(loc: tuple[int | str, ...]) -> bool:
    """``loc`` names a list of tables ([[listeners]], [[auth.oauth_issuers]], ...)."""
    if not loc or not isinstance(loc[-1], str):
        return False
    parent = _model_at(loc[:-1])
    field = None if parent is None else parent.model_fields.get(loc[-1])
    return field is not None and _model_in(field.annotation) is not None


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = unknown_key_message(tuple(e["loc"]))
        elif e["type"] == "list_type" and isinstance(e["input"], dict) and _is_table_list(
            tuple(e["loc"])
        ):
            # [listeners] where [[listeners]] was meant: one table, not a list of them.
            msg = f"write [[{key}]] (double brackets): one such table for each, not [{key}]"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            error = (e.get("ctx") or {}).get("error")
            if isinstance(error, KeyProblem) and key != "(top level)":
                key = f"{key}.{error.key}"
        out.append((key, msg))
    return out


def parse_config(text: str, base_dir: Path, *, tls_files: bool = True) -> Config:
    """Validate ``text``; ``tls_files`` False skips the check that the certificate
    and key exist (``init`` validates its config before it writes them)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([("(file)", f"invalid TOML: {e}")]) from None
    try:
        cfg = Config.model_validate({**raw, "base_dir": base_dir})
    except ValidationError as e:
        raise ConfigError(_problems(e)) from None
    problems = semantic_problems(cfg, tls_files=tls_files)
    if problems:
        raise ConfigError(problems)
    return cfg


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` is no file to read, or None. ``Path.is_dir`` raises for a name
    too long or a directory it may not search (found by the config fuzzer)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"file not found: {path}"
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return f"{path} is a directory, not a PEM file"
    if not stat.S_ISREG(st.st_mode):
        return f"file not found: {path}"
    return None


def semantic_problems(cfg: Config, *, tls_files: bool = True) -> list[tuple[str, str]]:
    """Checks that span keys or touch the file system."""
    out: list[tuple[str, str]] = []
    names = [lst.name for lst in cfg.listeners]
    for i, lst in enumerate(cfg.listeners):
        if names.count(lst.name) > 1:
            out.append((f"listeners.{i}.name", f"duplicate listener name {lst.name!r}"))
        for m in lst.mechanisms or []:
            if mechanism_facts.facts(m) is None:
                out.append((f"listeners.{i}.mechanisms", f"unknown mechanism {m!r}"))
    addrs = [lst.address for lst in cfg.listeners]
    for i, a in enumerate(addrs):
        if addrs.count(a) > 1:
            out.append((f"listeners.{i}.address", f"address {a} used twice"))
    taken = set(addrs)
    labels: list[str] = []
    for i, door in enumerate(cfg.auth_listeners):
        if door.address in taken:
            out.append((f"auth_listeners.{i}.address", f"address {door.address} used twice"))
        taken.add(door.address)
        if door.label in labels:
            out.append((f"auth_listeners.{i}.name", f"duplicate front door name {door.label!r}"))
        labels.append(door.label)
        if door.protocol == "auth_http" and door.upstream is None:
            out.append((f"auth_listeners.{i}.upstream", "required when protocol = 'auth_http'"))
        if door.protocol != "auth_http" and door.upstream is not None:
            out.append((f"auth_listeners.{i}.upstream", "only for protocol = 'auth_http'"))
        if door.unix_path is not None and door.proxy_protocol:
            out.append((f"auth_listeners.{i}.proxy_protocol", "for TCP front doors only"))
        if door.unix_path is None and (door.user or door.group):
            out.append((f"auth_listeners.{i}.user", "user and group are for unix sockets only"))
    proxied: list[tuple[str, ListenerConfig | AuthListenerConfig]] = [
        *((f"listeners.{i}", t) for i, t in enumerate(cfg.listeners)),
        *((f"auth_listeners.{i}", t) for i, t in enumerate(cfg.auth_listeners)),
    ]
    for where, t in proxied:
        if t.proxy_protocol and not t.trusted_proxies:
            out.append((f"{where}.trusted_proxies", (
                "proxy_protocol = true needs the load balancers' networks here; nobody "
                "else may send the header")))
    for key, p in (("tls.cert", cfg.tls.cert), ("tls.key", cfg.tls.key)):
        if tls_files and (why := _not_a_file(cfg.path(p))):
            out.append((key, why))
    if cfg.delivery.mode == "relay" and not cfg.delivery.relay_host:
        out.append(("delivery.relay_host", "required when delivery.mode = 'relay'"))
    token_auth = cfg.delivery.relay_auth_mechanism in ("XOAUTH2", "OAUTHBEARER")
    if cfg.delivery.relay_user and cfg.delivery.relay_password_file is None and not token_auth:
        out.append(("delivery.relay_password_file", "required when delivery.relay_user is set"))
    enabled = set(cfg.auth.mechanisms) | {
        m.upper() for lst in cfg.listeners for m in (lst.mechanisms or [])
    }
    if enabled & mechanism_facts.OAUTH and not cfg.auth.oauth_issuers:
        out.append(("auth.oauth_issuers", "OAUTHBEARER/XOAUTH2 enabled but no issuer configured"))
    for i, iss in enumerate(cfg.auth.oauth_issuers):
        if iss.jwks_file is not None and not cfg.path(iss.jwks_file).is_file():
            out.append((f"auth.oauth_issuers.{i}.jwks_file", f"file not found: {cfg.path(iss.jwks_file)}"))
        if iss.ca_file is not None and not cfg.path(iss.ca_file).is_file():
            out.append((f"auth.oauth_issuers.{i}.ca_file", f"file not found: {cfg.path(iss.ca_file)}"))
    if cfg.queue.retry_max < cfg.queue.retry_initial:
        out.append(("queue.retry_max", "must be >= queue.retry_initial"))
    return out


def running_user() -> str:
    """The name of the user this process runs as, for "permission denied" messages."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # pragma: no cover - no passwd entry
        return f"uid {os.geteuid()}"


def load_config(path: Path) -> Config:
    try:
        # Not path.read_text(): a named pipe there hung the command forever.
        with io.TextIOWrapper(open_regular(path), encoding="utf-8") as f:
            text = f.read()
    except NotRegularFile as e:
        raise ConfigError([("(file)", (
            f"{path} is {e.kind}, not a regular file: give the path of the TOML file "
            "itself (--config or $SMTPGATE_CONFIG)"))]) from None
    except PermissionError:
        raise ConfigError([("(file)", (
            f"permission denied: user {running_user()} cannot read {path}; give that user "
            "access (chown or chmod), or run smtpgate as the user that owns it"))]) from None
    except OSError as e:
        raise ConfigError([("(file)", f"cannot read {path}: {e.strerror}")]) from None
    except UnicodeDecodeError as e:
        # TOML 1.0 §"Spec": "A TOML file must be a valid UTF-8 encoded Unicode document."
        raise ConfigError([("(file)", (
            f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "TOML files are UTF-8: convert it, e.g. with iconv -t UTF-8"))]) from None
    if text.startswith("\ufeff"):
        # Notepad and some Windows editors start UTF-8 with a byte order mark, which
        # TOML does not allow: tomllib said only "Invalid statement (at line 1,
        # column 1)" of a line that looks right.
        raise ConfigError([("(file)", (
            f"{path} starts with a byte order mark (U+FEFF, as Notepad saves UTF-8), "
            "which TOML does not allow: save it as UTF-8 without BOM, e.g. "
            f"sed -i '1s/^\\xEF\\xBB\\xBF//' {path}"))])
    return parse_config(text, path.resolve().parent)


def render_reference() -> str:
    """docs/configuration.md, generated from the field descriptions of the schema."""
    out = [
        "# Configuration reference",
        "",
        "Generated by `smtpgate config docs` from the schema in `src/smtpgate/config.py`;",
        "a test fails when this page is stale. Relative paths are resolved against the",
        "directory of the config file; an empty path is an error, or for a key whose",
        "default is none, the same as leaving it out (`auth.log_file`, whose default is",
        "`auth.log`: empty turns the auth log off). Durations (seconds, or days for the",
        "`*_days` keys) are finite and at most 100 years. `true` or `false` where a",
        "number belongs is an error (until 2026-12 read as 1 or 0: `max_age_days = true`",
        "was one day). A NUL character (`\\u0000`) in a string is an error. Unknown keys",
        "are errors.",
        "",
    ]

    def table(model: type[BaseModel], prefix: str) -> None:
        out.append("| key | default | meaning |")
        out.append("|---|---|---|")
        for name, field in model.model_fields.items():
            if name == "base_dir":
                continue
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                continue
            if field.default_factory is not None:
                default = repr(field.default_factory())  # type: ignore[call-arg]
            elif field.is_required():
                default = "(required)"
            else:
                default = repr(field.default)
            default = default.replace("PosixPath(", "(").replace("|", "\\|")
            desc = (field.description or "").replace("|", "\\|")
            out.append(f"| `{prefix}{name}` | `{default}` | {desc} |")
        out.append("")

    def arrays(model: type[BaseModel], dotted: str, level: str) -> None:
        """A section for each list of tables in ``model`` ([[auth.oauth_issuers]], ...),
        its keys named as written inside each of those tables."""
        for name, field in model.model_fields.items():
            inner = _model_in(field.annotation)
            if inner is None or inner is field.annotation:
                continue
            intro = (inner.__doc__ or "").strip().split("\n\n")[0]
            out.extend([f"{level} `[[{dotted}{name}]]`", "", " ".join(intro.split()), ""])
            table(inner, "")

    out += ["## Top level", ""]
    table(Config, "")
    arrays(Config, "", "##")
    for name, field in Config.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += [f"## `[{name}]`", "", field.description or "", ""]
            table(ann, f"{name}.")
            for sub, subfield in ann.model_fields.items():  # [accounts.postgresql], ...
                sub_ann = subfield.annotation
                if isinstance(sub_ann, type) and issubclass(sub_ann, BaseModel):
                    out += [f"### `[{name}.{sub}]`", "", subfield.description or "", ""]
                    table(sub_ann, f"{name}.{sub}.")
            arrays(ann, f"{name}.", "###")
    return "\n".join(out).rstrip() + "\n"
