"""The one interface every SASL mechanism implements, server and client side.

Theory of operation
-------------------
A server mechanism never looks anything up itself. When it needs a secret or a
verdict it returns ``NeedCredentials(query)``; the caller (the I/O layer, via
the auth service) resolves the query off the event loop and hands the answer
back with ``mech.answer(...)``. This keeps Argon2, SQL, LDAP and HTTP out of
the protocol code and makes every mechanism testable with plain values.

Server call order: ``start(initial)`` once, then any mix of ``step(response)``
(after a ``Challenge``) and ``answer(result)`` (after ``NeedCredentials``),
until a ``Success`` or ``Failure``. Calling out of order raises
``MechanismUsageError`` naming the expected call. Front doors do not call a
mechanism directly: ``exchange.ServerExchange`` drives it and adds what every
exchange shares (one typed outcome, a verdict announced in a challenge stands).

Client side mirrors mox's ``Next(fromServer) -> (toServer, last, err)``:
``start() -> bytes | None`` (initial response, None if the mechanism is
server-first) and ``step(challenge) -> bytes``; ``done`` tells whether the
client expects the exchange to be over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


class MechanismUsageError(RuntimeError):
    """A caller broke the call order (a bug in smtpgate, never the client's fault)."""


class ClientAuthError(Exception):
    """The server misbehaved in a client-side exchange (bad signature, bad syntax)."""


class ServerErrorMessage(ClientAuthError):
    """The server ended the exchange with its own error message (SCRAM ``e=``,
    RFC 5802 §7). Its verdict is in: the client answers with an empty response
    (not ``*``) and reads the final reply, 535 for a failure (RFC 4954 §4)."""


# --- Credential queries: what a server mechanism may ask the auth service ------


@dataclass(frozen=True, slots=True)
class VerifyPassword:
    """PLAIN/LOGIN: check a cleartext password for ``username``."""

    username: str
    password: str
    authzid: str = ""
    mechanism: str = ""


@dataclass(frozen=True, slots=True)
class LookupScram:
    """SCRAM: fetch the stored keys of ``username`` for ``hash_name`` ('sha1'/'sha256')."""

    username: str
    hash_name: str
    mechanism: str = ""


@dataclass(frozen=True, slots=True)
class LookupCramMd5:
    """CRAM-MD5: fetch the HMAC-MD5 intermediate key pair of ``username``."""

    username: str
    mechanism: str = "CRAM-MD5"


@dataclass(frozen=True, slots=True)
class VerifyToken:
    """OAUTHBEARER/XOAUTH2: check a bearer token; ``username`` is what the client claimed."""

    username: str
    token: str
    mechanism: str = ""


@dataclass(frozen=True, slots=True)
class VerifyCertificate:
    """EXTERNAL (RFC 4422 Appendix A): map the session's verified TLS client
    certificate to an account. The certificate is a fact of the connection, like the
    client address: the login path has it (``AuthContext.client_certificate``), the
    mechanism only parses the authorization identity. ``username`` is that authzid,
    "" when the client asked for the identity the certificate maps to."""

    username: str
    mechanism: str = "EXTERNAL"


@dataclass(frozen=True, slots=True)
class ConfirmIdentity:
    """After a mechanism proved ``username`` by itself (SCRAM, CRAM-MD5): let the auth
    service apply account state and policy (locked, mechanism not allowed, an
    ``authzid`` that names another account) and record it."""

    username: str
    mechanism: str = ""
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class ProofArrived:
    """SCRAM's client proof has arrived and is about to be judged: may it be?

    Why: the mechanism sent the salt on the word of a guard check made when the
    client-first came, and the client may answer much later, after other
    guesses changed the record (the account is locked by now). The login path
    answers ``Verdict(ok=True)`` to go on, or a temporary ``Verdict`` to end the
    exchange as any refused login ends, before the proof is judged: the answer
    never depends on whether the proof was right. Asked for every proof, a
    decoy's too, so an unknown name takes the same steps."""

    username: str
    mechanism: str = ""


CredentialQuery = (
    VerifyPassword | LookupScram | LookupCramMd5 | VerifyToken | ConfirmIdentity
    | VerifyCertificate | ProofArrived
)


# --- Answers from the auth service ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """Answer to VerifyPassword / VerifyToken / ConfirmIdentity.

    ``ok`` False with ``temporary`` True means a backend fault (454, never 535).
    ``identity`` is the canonical account name on success. ``reason`` goes to the
    log only, never to the client.
    """

    ok: bool
    identity: str = ""
    reason: str = ""
    temporary: bool = False
    #: For a refused token only: the RFC 6750 §3.1 error code the OAuth mechanisms
    #: report ("insufficient_scope"); "" means the token itself is refused
    #: (invalid_token).
    token_error: str = ""


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """Stored SCRAM secrets (RFC 5802 §3): never the password."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


@dataclass(frozen=True, slots=True)
class CramMd5Secret:
    """The HMAC-MD5 inner and outer intermediate states (16 bytes each), as Dovecot stores."""

    inner: bytes
    outer: bytes


@dataclass(frozen=True, slots=True)
class NotFound:
    """No such account, or no secret for this mechanism. The mechanism must go on with
    a decoy so that an unknown account fails the same way as a wrong secret.

    ``name`` is the name as the directory looked it up (its canonical spelling,
    ``auth/names.py``): SCRAM keys its decoy salt on it, so every spelling that
    would find one account gets one salt whether or not the account exists
    (docs/security.md, "What SCRAM's server-first message shows"). Empty: the name as the
    client gave it."""

    reason: str = "unknown user"
    temporary: bool = False
    name: str = ""


CredentialAnswer = Verdict | ScramCredentials | CramMd5Secret | NotFound


# --- Steps: what a server mechanism returns ------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``data`` to the client (RFC 4954: as ``334 <base64>``) and wait for a response."""

    data: bytes


@dataclass(frozen=True, slots=True)
class NeedCredentials:
    """Resolve ``query`` and call ``answer()`` with the result."""

    query: CredentialQuery


@dataclass(frozen=True, slots=True)
class Success:
    """Authenticated as ``identity`` (authorization identity ``authzid``, "" if none).

    ``final_data``: additional data with success (SCRAM ``v=``). SMTP cannot carry
    it in 235, so the server sends it as one more 334 and waits for an empty line.
    """

    identity: str
    authzid: str = ""
    final_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """Authentication failed. ``reason`` is for the log. ``temporary`` means a backend
    fault (454). ``error_data`` is sent as a 334 before the failure reply and the
    client's dummy response awaited (OAUTHBEARER JSON status, SCRAM ``e=``); the
    failure is decided already, so whatever the client answers (the dummy, ``*``,
    garbage) or if it hangs up, the attempt ends as this failure.
    ``username`` is the identity the client claimed, if known, for the auth log.
    ``client_could_bind``: the client said it can do channel binding (SCRAM gs2
    flag ``y``) where the server supports it, RFC 5802 §6's downgrade signal."""

    reason: str
    temporary: bool = False
    error_data: bytes | None = None
    username: str = ""
    malformed: bool = False
    client_could_bind: bool = False


Step = Challenge | NeedCredentials | Success | Failure


@dataclass(frozen=True, slots=True)
class ChannelBinding:
    """Channel-binding data the TLS layer could compute for this connection.

    ``data`` maps a binding type ('tls-exporter', 'tls-server-end-point',
    'tls-unique') to its bytes. Empty when the connection is not TLS.
    """

    data: dict[str, bytes] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return bool(self.data)


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A TLS client certificate that verified against the listener's ``client_ca``
    (chain and validity dates; no CRL), as the TLS layer reports it.

    ``fingerprint`` is the SHA-256 of the DER certificate, lower-case hex.
    ``emails`` are its subjectAltName rfc822Name values. ``trust_emails``: the
    listener lets such an email log in as the account of that name
    (``client_cert_san_login``)."""

    fingerprint: str
    subject: str = ""
    emails: tuple[str, ...] = ()
    trust_emails: bool = False


class ServerMechanism:
    """Base of every server-side mechanism; subclasses set the class attributes."""

    name: ClassVar[str]
    #: The client sends a reusable secret in the clear: the transport redacts it and
    #: the mechanism is never offered without TLS.
    cleartext_credentials: ClassVar[bool] = False
    #: RFC 4954 §4: an initial response on a server-first mechanism is a 501.
    server_first: ClassVar[bool] = False

    def start(self, initial: bytes | None) -> Step:
        raise NotImplementedError

    def step(self, response: bytes) -> Step:
        raise NotImplementedError

    def answer(self, result: CredentialAnswer) -> Step:
        raise NotImplementedError


class ClientMechanism:
    """Base of every client-side mechanism."""

    name: ClassVar[str]
    cleartext_credentials: ClassVar[bool] = False
    #: The mechanism never reads the challenge's content (LOGIN's prompts), so a
    #: transport may hand it a challenge it could not decode.
    ignores_challenges: ClassVar[bool] = False

    def start(self) -> bytes | None:
        raise NotImplementedError

    def step(self, challenge: bytes) -> bytes:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        raise NotImplementedError


class SingleMessageClient(ClientMechanism):
    """A client mechanism whose whole exchange is one message (PLAIN, EXTERNAL): the
    initial response, or the answer to the server's empty challenge if the transport
    sent none; any other challenge is the server misbehaving."""

    def __init__(self, message: bytes) -> None:
        self._message = message
        self._sent = False

    def start(self) -> bytes | None:
        self._sent = True
        return self._message

    def step(self, challenge: bytes) -> bytes:
        if challenge == b"" and not self._sent:
            self._sent = True
            return self._message
        raise ClientAuthError(f"{self.name}: unexpected challenge from the server")

    @property
    def done(self) -> bool:
        return self._sent
