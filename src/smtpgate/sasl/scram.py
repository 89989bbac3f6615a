"""SCRAM-SHA-1 and SCRAM-SHA-256, with and without channel binding (RFC 5802, RFC 7677).

Theory of operation
-------------------
Server: client-first -> ``NeedCredentials(LookupScram)`` -> answer with
``ScramCredentials`` (or ``NotFound``) -> ``Challenge(server-first)`` ->
client-final -> ``NeedCredentials(ProofArrived)`` -> answer ``Verdict(ok=True)`` (or
a temporary one: the exchange ends before the proof is judged, as a refused login
does) -> proof checked here with the stored keys -> ``NeedCredentials(ConfirmIdentity)`` -> answer with a ``Verdict`` ->
``Success(final_data=b"v=...")`` or ``Failure(error_data=b"e=...")``.

The server never sees a password: it holds (salt, i, StoredKey, ServerKey) and
checks ``H(ClientProof XOR HMAC(StoredKey, AuthMessage)) == StoredKey``. An unknown
user gets a *decoy*: a salt derived from the installation's decoy secret
(``auth/decoy.py``) and the name *as the directory looked it up* (``NotFound.name``,
the canonical spelling: ``alice@EXAMPLE.ORG`` and ``alice@example.org`` are one
name), PostgreSQL's approach, so that repeated probes and other spellings show the
same salt as they would for a real account, and keys that no proof can match; the
exchange then fails at the proof exactly like a wrong password (protocol digest
§4.4: never ``e=unknown-user``).

Channel binding (RFC 5802 §6, RFC 5929, RFC 9266): the ``-PLUS`` mechanisms
require a ``p=<type>`` gs2 flag with a type present in the connection's
``ChannelBinding``; ``c=`` then carries the gs2 header followed by the binding
data. The TLS layer decides which types are sound for the connection (no
``tls-unique`` on TLS 1.3); this module only compares bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, NoReturn

from smtpgate.sasl._common import (
    NO_CHANNEL_BINDING,
    ServerContext,
    ServerMechanismBase,
    decode_utf8,
    default_nonce,
    is_safe_name,
    unexpected_answer,
    verdict_step,
)
from smtpgate.sasl.base import (
    Challenge,
    ChannelBinding,
    ClientAuthError,
    ClientMechanism,
    ConfirmIdentity,
    CredentialAnswer,
    Failure,
    LookupScram,
    MechanismUsageError,
    NeedCredentials,
    NotFound,
    ProofArrived,
    ScramCredentials,
    ServerErrorMessage,
    Step,
    Verdict,
)
from smtpgate.sasl.saslprep import SaslprepError, saslprep

# --- hash table -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Hash:
    name: str  # hashlib name, also the LookupScram.hash_name
    size: int
    mechanism: str


_HASHES: dict[str, _Hash] = {
    "sha1": _Hash("sha1", 20, "SCRAM-SHA-1"),
    "sha256": _Hash("sha256", 32, "SCRAM-SHA-256"),
}

#: RFC 5802 §5.1 / RFC 7677 §4: the iteration count "SHOULD be at least 4096".
#: Used for decoys; stores should use the same (or pass their own to the server).
DEFAULT_ITERATIONS = 4096

#: Channel-binding types in client preference order: RFC 9266 makes tls-exporter
#: the TLS 1.3 default; tls-server-end-point works on every version; tls-unique
#: (RFC 5929 §3) only on TLS 1.2 with extended master secret.
CB_TYPE_PREFERENCE = ("tls-exporter", "tls-server-end-point", "tls-unique")

#: A client-first message holds a name and a nonce, a client-final a binding (a
#: header plus at most a 64-byte hash or 32-byte exporter) and a proof. 4 KiB is
#: far beyond any honest message and bounds the work an attacker can make us do.
MAX_MESSAGE_OCTETS = 4096

#: Salt length of stored keys and of decoys alike (RFC 5802 sets none; 16 bytes is
#: what PostgreSQL and Dovecot use). One constant, so the two cannot drift apart and
#: a salt's length never tells a decoy from a real account.
SALT_OCTETS = 16

#: Client side: a hostile server can make the client burn CPU with a huge count.
DEFAULT_MAX_CLIENT_ITERATIONS = 1_000_000

# RFC 5802 §7: printable = %x21-2B / %x2D-7E  ; printable ASCII except ","
_PRINTABLE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
# RFC 5802 §7: cb-name = 1*(ALPHA / DIGIT / "." / "-")
_CB_NAME = re.compile(r"[A-Za-z0-9.\-]+")
# RFC 5802 §7: attr-val = ALPHA "=" value; value = 1*value-char (no ",")
_ATTR_VAL = re.compile(r"[A-Za-z]=[^,]+")
# RFC 5802 §7: saslname = 1*(value-safe-char / "=2C" / "=3D"); any other "=" is bad.
_ESCAPE = re.compile(r"=(2C|3D)")
_BAD_ESCAPE = re.compile(r"=(?!2C|3D)")

# RFC 5802 §7 server-error-value (the subset we send).
E_INVALID_ENCODING = "invalid-encoding"
E_EXTENSIONS_NOT_SUPPORTED = "extensions-not-supported"
E_INVALID_PROOF = "invalid-proof"
E_CHANNEL_BINDINGS_DONT_MATCH = "channel-bindings-dont-match"
E_SERVER_DOES_SUPPORT_CHANNEL_BINDING = "server-does-support-channel-binding"
E_CHANNEL_BINDING_NOT_SUPPORTED = "channel-binding-not-supported"
E_UNSUPPORTED_CHANNEL_BINDING_TYPE = "unsupported-channel-binding-type"
E_INVALID_USERNAME_ENCODING = "invalid-username-encoding"
E_OTHER_ERROR = "other-error"

_PER_PROCESS_DECOY_SECRET = secrets.token_bytes(32)


# --- primitives -----------------------------------------------------------------


def _refuse_mandatory_extension(*, malformed: bool = False) -> NoReturn:
    """RFC 5802 §5.1 (m): reserved for mandatory extensions, none defined; "its
    presence in a client or a server message MUST cause authentication failure"."""
    raise _ScramError(E_EXTENSIONS_NOT_SUPPORTED, "mandatory extension m=", malformed=malformed)


def _check_extensions(extensions: list[str]) -> None:
    """The extensions after a message's fixed attributes (RFC 5802 §7): attr-val
    pairs, unknown ones ignored, but never ``m``, which no client may send
    anywhere: skipped as an unknown extension, a client-final that carried it
    logged in (until 2026-12). Refused as malformed: in a client-final the proof
    is never judged, so it is a probe (the address), not a guess (the account)."""
    if not all(_ATTR_VAL.fullmatch(a) for a in extensions):
        raise _ScramError(E_INVALID_ENCODING, "bad extension syntax", malformed=True)
    if any(a.startswith("m=") for a in extensions):
        _refuse_mandatory_extension(malformed=True)


def _hmac(hash_name: str, key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hash_name).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict base64: alphabet, padding and canonical form, else ``None``.

    ``b64decode(validate=True)`` still accepts some non-canonical inputs; re-encoding
    rejects those, so one byte string has one encoding (protocol digest §6).
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if _b64(raw) == text else None


def escape_saslname(name: str) -> str:
    """RFC 5802 §5.1: "," becomes "=2C" and "=" becomes "=3D"."""
    return name.replace("=", "=3D").replace(",", "=2C")


def unescape_saslname(text: str) -> str | None:
    """Inverse of ``escape_saslname``; ``None`` if any other "=" appears.

    RFC 5802 §5.1: a server receiving "=" followed by anything other than "2C" or
    "3D" MUST fail the authentication.
    """
    # One left-to-right pass: removing or replacing one escape kind before the other
    # let "==2C3D" and "=3=2CD" through (each has a valid escape inside an invalid
    # one), and the name looked up then held a raw "=".
    if _BAD_ESCAPE.search(text):
        return None
    return _ESCAPE.sub(lambda m: "," if m.group(1) == "2C" else "=", text)


def _hash_info(hash_name: str) -> _Hash:
    try:
        return _HASHES[hash_name]
    except KeyError:
        raise ValueError(f"unsupported SCRAM hash {hash_name!r} (use 'sha1' or 'sha256')") from None


def _keys_from_salted(hash_name: str, salted: bytes) -> tuple[bytes, bytes, bytes]:
    """RFC 5802 §3: (ClientKey, StoredKey, ServerKey) from SaltedPassword."""
    client_key = _hmac(hash_name, salted, b"Client Key")
    stored_key = hashlib.new(hash_name, client_key).digest()
    server_key = _hmac(hash_name, salted, b"Server Key")
    return client_key, stored_key, server_key


def _normalize_password(password: str) -> bytes:
    """RFC 5802 §2.2: Normalize() is SASLprep with the stored-string rules."""
    try:
        prepared = saslprep(password)
    except SaslprepError as exc:
        raise ValueError(f"password rejected by SASLprep: {exc}") from exc
    if not prepared:
        raise ValueError("password is empty after SASLprep")
    return prepared.encode("utf-8")


def scram_credentials_from_password(
    password: str, hash_name: str, iterations: int, salt: bytes | None = None
) -> ScramCredentials:
    """Derive the stored SCRAM secrets for ``password`` (RFC 5802 §3).

    The password is SASLprep'd first, as clients do before hashing, and the salted
    password is ``hashlib.pbkdf2_hmac`` (exactly ``Hi``). CPU-heavy: call it from a
    worker thread, not the event loop. The salt is `SALT_OCTETS` long unless given,
    as a decoy's is.

    Args:
        hash_name: 'sha1' or 'sha256'.
        iterations: PBKDF2 iteration count (RFC 7677 §4: SHOULD be >= 4096).
        salt: defaults to 16 random bytes.

    Raises:
        ValueError: unknown hash, ``iterations`` < 1, empty salt, or a password that
            SASLprep refuses or empties.
    """
    info = _hash_info(hash_name)
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    if salt is None:
        salt = secrets.token_bytes(SALT_OCTETS)
    if not salt:
        raise ValueError("salt must not be empty")
    salted = hashlib.pbkdf2_hmac(info.name, _normalize_password(password), salt, iterations)
    _client_key, stored_key, server_key = _keys_from_salted(info.name, salted)
    return ScramCredentials(
        salt=salt, iterations=iterations, stored_key=stored_key, server_key=server_key
    )


# --- server ---------------------------------------------------------------------


class _ScramError(Exception):
    """Internal: abort the exchange with RFC 5802 server-error ``error``."""

    def __init__(
        self,
        error: str,
        reason: str,
        *,
        malformed: bool = False,
        could_bind: bool = False,
        qualified: bool = True,
    ) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.malformed = malformed
        self.could_bind = could_bind
        #: Prefix the reason with the mechanism name (False: the auth service's words).
        self.qualified = qualified


@dataclass(frozen=True, slots=True)
class _ClientFirst:
    gs2_header: str
    cb_type: str | None
    username: str  # prepared (SASLprep query rules)
    #: As sent, "" for none. Whether it names the account (our policy, as for
    #: PLAIN: only the user itself) is the auth service's to decide at
    #: ``ConfirmIdentity``, which knows every spelling of the account's name.
    authzid: str
    client_nonce: str
    bare: str


_ServerState = Literal["first", "lookup", "final", "proof", "confirm"]


@dataclass(frozen=True, slots=True)
class _Proof:
    """A parsed client-final waiting for ``ProofArrived``'s answer."""

    auth_message: bytes
    proof: bytes


class ScramServer(ServerMechanismBase):
    """Server side of one SCRAM variant; use the concrete subclasses below.

    Args:
        channel_binding: binding data of this connection (needed by -PLUS).
        plus_advertised: the server supports a -PLUS variant on this connection
            (advertised, or held back from a client that could not bind), so the
            ``y`` flag on this (non-PLUS) mechanism is a downgrade (RFC 5802 §6).
        nonce_factory: server-nonce source; must return printable ASCII without ",".
        decoy_secret: keys the unknown-user decoy salt; defaults to a per-process
            random secret. Pass a persistent one so the decoy survives restarts.
        decoy_iterations: iteration count announced for unknown users; should equal
            what the account store uses.
    """

    hash_name: ClassVar[str]
    plus: ClassVar[bool]

    def __init__(
        self,
        *,
        channel_binding: ChannelBinding = NO_CHANNEL_BINDING,
        plus_advertised: bool = False,
        nonce_factory: Callable[[], str] | None = None,
        decoy_secret: bytes | None = None,
        decoy_iterations: int = DEFAULT_ITERATIONS,
    ) -> None:
        super().__init__()
        self._cb = channel_binding
        self._plus_advertised = plus_advertised
        self._nonce_factory = nonce_factory or default_nonce
        self._decoy_secret = decoy_secret or _PER_PROCESS_DECOY_SECRET
        self._decoy_iterations = decoy_iterations
        self._hash = _HASHES[self.hash_name]
        self._state: _ServerState = "first"
        self._first: _ClientFirst | None = None
        self._creds: ScramCredentials | None = None
        self._decoy = False
        #: Why the decoy is used (unknown user, a policy refusal): the log's reason.
        self._decoy_reason = ""
        self._nonce = ""
        self._server_first = ""
        self._server_signature = b""
        self._proof: _Proof | None = None

    @classmethod
    def from_context(cls, ctx: ServerContext) -> ScramServer:
        return cls(
            channel_binding=ctx.channel_binding,
            plus_advertised=ctx.plus_advertised,
            nonce_factory=ctx.nonce_factory,
            decoy_secret=ctx.decoy_secret,
            decoy_iterations=ctx.decoy_iterations,
        )

    # -- hooks --------------------------------------------------------------------

    def _start(self, initial: bytes | None) -> Step:
        if initial is None:
            # RFC 4422 §5: client-first mechanism without initial response.
            return Challenge(b"")
        return self._step(initial)

    def _step(self, response: bytes) -> Step:
        try:
            if self._state == "first":
                return self._on_client_first(response)
            if self._state == "final":
                return self._on_client_final(response)
        except _ScramError as exc:
            return self._failure(exc)
        raise MechanismUsageError(f"{self.name}: step() in state {self._state}")  # pragma: no cover

    def _failure(self, exc: _ScramError) -> Failure:
        return Failure(
            reason=f"{self.name}: {exc.reason}" if exc.qualified else exc.reason,
            error_data=b"e=" + exc.error.encode("ascii"),
            username=self._first.username if self._first else "",
            malformed=exc.malformed,
            client_could_bind=exc.could_bind,
        )

    def _answer(self, result: CredentialAnswer) -> Step:
        first = self._first
        assert first is not None  # the base class only allows answer() after a query
        if self._state == "lookup":
            return self._on_lookup(first, result)
        if self._state == "proof":
            return self._on_proof_answer(first, result)
        return verdict_step(
            self.name,
            result,
            username=first.username,
            authzid=first.authzid,
            final_data=b"v=" + _b64(self._server_signature).encode("ascii"),
            error_data=b"e=" + E_OTHER_ERROR.encode("ascii"),
        )

    # -- client-first -----------------------------------------------------------

    def _on_client_first(self, data: bytes) -> Step:
        first = self._parse_client_first(data)
        self._first = first  # the claimed name goes into a binding failure's log record
        self._check_binding_flag(first)
        self._state = "lookup"
        return NeedCredentials(LookupScram(first.username, self._hash.name, mechanism=self.name))

    def _parse_client_first(self, data: bytes) -> _ClientFirst:
        text = decode_utf8(data) if len(data) <= MAX_MESSAGE_OCTETS else None
        if text is None:
            raise _ScramError(
                E_INVALID_ENCODING, "client-first not UTF-8 or too long", malformed=True
            )
        # RFC 5802 §7: client-first-message = gs2-header client-first-message-bare,
        # gs2-header = gs2-cbind-flag "," [ authzid ] ","
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise _ScramError(E_INVALID_ENCODING, "no gs2 header", malformed=True)
        flag, authz_attr, bare = parts
        cb_type: str | None = None
        if flag.startswith("p="):
            cb_type = flag[2:]
            if not _CB_NAME.fullmatch(cb_type):
                raise _ScramError(E_INVALID_ENCODING, "bad cb-name", malformed=True)
        elif flag not in ("n", "y"):
            raise _ScramError(E_INVALID_ENCODING, "bad gs2-cbind-flag", malformed=True)
        authzid = ""
        if authz_attr:
            if not authz_attr.startswith("a="):
                raise _ScramError(E_INVALID_ENCODING, "bad gs2 authzid", malformed=True)
            decoded = unescape_saslname(authz_attr[2:])
            if not decoded:
                raise _ScramError(E_INVALID_ENCODING, "bad authzid encoding", malformed=True)
            authzid = decoded
        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            _refuse_mandatory_extension()
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise _ScramError(E_INVALID_ENCODING, "expected n= and r=", malformed=True)
        _check_extensions(attrs[2:])
        raw_user = unescape_saslname(attrs[0][2:])
        if not raw_user:
            raise _ScramError(E_INVALID_USERNAME_ENCODING, "bad username encoding", malformed=True)
        # RFC 5802 §5.1 (n): the server prepares the name with SASLprep (query) and
        # "SHOULD abort" if that fails or gives an empty string.
        try:
            username = saslprep(raw_user, allow_unassigned=True)
        except SaslprepError as exc:
            raise _ScramError(E_INVALID_USERNAME_ENCODING, str(exc), malformed=True) from exc
        if not is_safe_name(username):
            raise _ScramError(E_INVALID_USERNAME_ENCODING, "unusable username", malformed=True)
        client_nonce = attrs[1][2:]
        if not _PRINTABLE.fullmatch(client_nonce):
            raise _ScramError(E_INVALID_ENCODING, "bad client nonce", malformed=True)
        if authzid and not is_safe_name(authzid):
            raise _ScramError(E_INVALID_ENCODING, "unusable authzid", malformed=True)
        return _ClientFirst(
            gs2_header=f"{flag},{authz_attr},",
            cb_type=cb_type,
            username=username,
            authzid=authzid,
            client_nonce=client_nonce,
            bare=bare,
        )

    def _check_binding_flag(self, first: _ClientFirst) -> None:
        """RFC 5802 §6: the three-way channel-binding negotiation."""
        if self.plus:
            if first.cb_type is None:
                # A -PLUS mechanism without p= is a contradiction.
                raise _ScramError(E_OTHER_ERROR, "-PLUS mechanism without p= flag", malformed=True)
            if not self._cb.available:
                raise _ScramError(E_CHANNEL_BINDING_NOT_SUPPORTED, "no channel binding here")
            if first.cb_type not in self._cb.data:
                raise _ScramError(
                    E_UNSUPPORTED_CHANNEL_BINDING_TYPE, f"binding type {first.cb_type}"
                )
            return
        if first.cb_type is not None:
            # RFC 5802 §6: "p" selects channel binding, which this mechanism lacks.
            raise _ScramError(E_CHANNEL_BINDING_NOT_SUPPORTED, "p= flag on a non-PLUS mechanism")
        if first.gs2_header.startswith("y") and self._plus_advertised:
            # RFC 5802 §6: flag "y" means the client could bind but saw no -PLUS; a
            # server that supports binding MUST fail: someone stripped -PLUS.
            raise _ScramError(
                E_SERVER_DOES_SUPPORT_CHANNEL_BINDING,
                "y flag while the server supports channel binding",
                could_bind=True,
            )

    # -- credentials ----------------------------------------------------------------

    def _on_lookup(self, first: _ClientFirst, result: CredentialAnswer) -> Step:
        if isinstance(result, NotFound):
            if result.temporary:
                return Failure(
                    reason=result.reason,
                    temporary=True,
                    username=first.username,
                    error_data=b"e=" + E_OTHER_ERROR.encode("ascii"),
                )
            # The directory's spelling of the name (NotFound.name): a real account
            # shows one salt to every spelling that finds it, so a decoy must too.
            self._creds = self._decoy_credentials(result.name or first.username)
            self._decoy = True
            self._decoy_reason = result.reason
        elif isinstance(result, ScramCredentials):
            if not self._credentials_usable(result):
                return Failure(
                    reason=f"{self.name}: stored credentials are corrupt",
                    temporary=True,
                    username=first.username,
                    error_data=b"e=" + E_OTHER_ERROR.encode("ascii"),
                )
            self._creds = result
        else:
            return unexpected_answer(self.name, result, first.username)
        server_nonce = self._nonce_factory()
        if not _PRINTABLE.fullmatch(server_nonce):
            raise ValueError("nonce_factory must return printable ASCII without ','")
        # RFC 5802 §5.1 (r): the server appends its nonce to the client's.
        self._nonce = first.client_nonce + server_nonce
        self._server_first = (
            f"r={self._nonce},s={_b64(self._creds.salt)},i={self._creds.iterations}"
        )
        self._state = "final"
        return Challenge(self._server_first.encode("ascii"))

    def _credentials_usable(self, creds: ScramCredentials) -> bool:
        return (
            bool(creds.salt)
            and creds.iterations >= 1
            and len(creds.stored_key) == self._hash.size
            and len(creds.server_key) == self._hash.size
        )

    def _decoy_credentials(self, username: str) -> ScramCredentials:
        """Stable fake salt for an unknown user; keys no proof can match.

        Shaped as a real account's keys are (``scram_credentials_from_password``):
        a 16-byte salt and the count stores are told to use (``decoy_iterations``),
        with the same server nonce as any exchange: server-first is the one message
        before any proof, so it must not differ between a real and an unknown name
        in anything but the salt's random bytes (tests/unit/test_scram_decoy.py)."""
        label = f"{self._hash.name}\0{username}".encode()
        digest = hmac.new(self._decoy_secret, b"scram-decoy\0" + label, "sha256").digest()
        keys = hmac.new(self._decoy_secret, b"scram-decoy-keys\0" + label, "sha512").digest()
        return ScramCredentials(
            salt=digest[:SALT_OCTETS],
            iterations=self._decoy_iterations,
            stored_key=keys[: self._hash.size],
            server_key=keys[32 : 32 + self._hash.size],
        )

    # -- client-final -------------------------------------------------------------

    def _on_client_final(self, data: bytes) -> Step:
        first, creds = self._first, self._creds
        assert first is not None and creds is not None
        text = decode_utf8(data) if len(data) <= MAX_MESSAGE_OCTETS else None
        if text is None:
            raise _ScramError(
                E_INVALID_ENCODING, "client-final not UTF-8 or too long", malformed=True
            )
        # RFC 5802 §7: client-final-message = client-final-message-without-proof "," proof
        # and proof is the last attribute.
        cut = text.rfind(",p=")
        if cut < 0:
            raise _ScramError(E_INVALID_ENCODING, "no proof", malformed=True)
        without_proof, proof_b64 = text[:cut], text[cut + 3 :]
        attrs = without_proof.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise _ScramError(E_INVALID_ENCODING, "expected c= and r=", malformed=True)
        _check_extensions(attrs[2:])
        cbind = _b64decode(attrs[0][2:])
        proof = _b64decode(proof_b64)
        if cbind is None or proof is None:
            raise _ScramError(E_INVALID_ENCODING, "bad base64", malformed=True)
        # RFC 5802 §5.1 (c): c= is the base64 of the gs2 header and, with p=, the
        # channel-binding data; the server MUST check it.
        expected = first.gs2_header.encode("utf-8")
        if first.cb_type is not None:
            expected += self._cb.data[first.cb_type]
        if not hmac.compare_digest(cbind, expected):
            raise _ScramError(E_CHANNEL_BINDINGS_DONT_MATCH, "c= does not match")
        # RFC 5802 §5.1 (r): the nonce must be the combined nonce of server-first.
        if not hmac.compare_digest(attrs[1][2:].encode("utf-8"), self._nonce.encode("ascii")):
            raise _ScramError(E_OTHER_ERROR, "nonce mismatch")
        if len(proof) != self._hash.size:
            raise _ScramError(E_INVALID_PROOF, "proof has wrong length")
        # RFC 5802 §3: AuthMessage = client-first-message-bare + "," +
        # server-first-message + "," + client-final-message-without-proof
        auth_message = f"{first.bare},{self._server_first},{without_proof}".encode()
        self._proof = _Proof(auth_message, proof)
        self._state = "proof"
        return NeedCredentials(ProofArrived(first.username, mechanism=self.name))

    def _on_proof_answer(self, first: _ClientFirst, result: CredentialAnswer) -> Step:
        """Judge the proof, or end before judging it if the login path says no
        (the same ``e=other-error`` and temporary failure as a refused look-up)."""
        if not (isinstance(result, Verdict) and result.ok):
            if not isinstance(result, (Verdict, NotFound)):
                return unexpected_answer(self.name, result, first.username)
            return Failure(
                reason=result.reason or f"{self.name}: proof not judged",
                temporary=True,
                username=first.username,
                error_data=b"e=" + E_OTHER_ERROR.encode("ascii"),
            )
        try:
            return self._judge(first)
        except _ScramError as exc:
            return self._failure(exc)

    def _judge(self, first: _ClientFirst) -> Step:
        creds, pending = self._creds, self._proof
        assert creds is not None and pending is not None
        auth_message, proof = pending.auth_message, pending.proof
        client_signature = _hmac(self._hash.name, creds.stored_key, auth_message)
        client_key = _xor(proof, client_signature)
        candidate = hashlib.new(self._hash.name, client_key).digest()
        # RFC 5802 §3: the server verifies by comparing H(ClientKey) with StoredKey.
        proof_ok = hmac.compare_digest(candidate, creds.stored_key)
        if self._decoy:
            # Same e= as a wrong password on the wire; the real reason (unknown
            # user, an access-policy refusal) in the log, as PLAIN logs it.
            raise _ScramError(
                E_INVALID_PROOF, self._decoy_reason or "unknown user", qualified=False
            )
        if not proof_ok:
            raise _ScramError(E_INVALID_PROOF, "invalid proof")
        self._server_signature = _hmac(self._hash.name, creds.server_key, auth_message)
        self._state = "confirm"
        return NeedCredentials(
            ConfirmIdentity(first.username, mechanism=self.name, authzid=first.authzid))


class ScramSha1Server(ScramServer):
    """SCRAM-SHA-1 (RFC 5802)."""

    name = "SCRAM-SHA-1"
    hash_name = "sha1"
    plus = False


class ScramSha1PlusServer(ScramServer):
    """SCRAM-SHA-1-PLUS (RFC 5802 §6)."""

    name = "SCRAM-SHA-1-PLUS"
    hash_name = "sha1"
    plus = True


class ScramSha256Server(ScramServer):
    """SCRAM-SHA-256 (RFC 7677)."""

    name = "SCRAM-SHA-256"
    hash_name = "sha256"
    plus = False


class ScramSha256PlusServer(ScramServer):
    """SCRAM-SHA-256-PLUS (RFC 7677, RFC 5802 §6)."""

    name = "SCRAM-SHA-256-PLUS"
    hash_name = "sha256"
    plus = True


# --- client ---------------------------------------------------------------------

_ClientState = Literal["start", "first", "final", "done"]


class ScramClient(ClientMechanism):
    """Client side of SCRAM.

    ``ScramClient(hash_name, ..., plus=...)`` returns the subclass whose class-level
    ``name`` is the matching mechanism (``SCRAM-SHA-256-PLUS`` etc.), because
    ``ClientMechanism.name`` is a class attribute.

    Args:
        hash_name: 'sha1' or 'sha256'.
        channel_binding: binding data of the connection; with ``plus=False`` its
            presence sends the ``y`` flag ("I could bind, you did not offer -PLUS").
        plus: use the -PLUS variant (``p=<cb_type>``).
        cb_type: binding type for -PLUS; default the first available in
            ``CB_TYPE_PREFERENCE``.
        nonce: client nonce (tests inject RFC vectors); default 24 random bytes.
        authzid: authorization identity, "" for none.
        max_iterations: refuse servers asking for more PBKDF2 rounds than this.

    ``step()`` returns the client-final message, then ``b""`` after checking the
    server's ``v=`` (SMTP carries it as one more 334). ``done`` is True only once
    the server signature checked out: a client that gets 235 before that has not
    authenticated the server.

    Raises:
        ValueError: unknown hash, -PLUS without usable binding data, or a username or
            password SASLprep refuses.
    """

    name: ClassVar[str] = "SCRAM"
    hash_name: ClassVar[str] = ""
    plus: ClassVar[bool] = False

    # Not Self: ScramSha1Client(hash_name="sha256") returns a ScramSha256Client.
    def __new__(  # noqa: PYI034
        cls,
        hash_name: str,
        username: str,
        password: str,
        channel_binding: ChannelBinding | None = None,
        plus: bool = False,
        cb_type: str | None = None,
        nonce: str | None = None,
        *,
        authzid: str = "",
        max_iterations: int = DEFAULT_MAX_CLIENT_ITERATIONS,
    ) -> ScramClient:
        target = _CLIENT_CLASSES[(_hash_info(hash_name).name, plus)]
        instance: ScramClient = object.__new__(target)
        return instance

    def __init__(
        self,
        hash_name: str,
        username: str,
        password: str,
        channel_binding: ChannelBinding | None = None,
        plus: bool = False,
        cb_type: str | None = None,
        nonce: str | None = None,
        *,
        authzid: str = "",
        max_iterations: int = DEFAULT_MAX_CLIENT_ITERATIONS,
    ) -> None:
        self._hash = _hash_info(hash_name)
        cb = channel_binding or NO_CHANNEL_BINDING
        self._cb_data = b""
        if plus:
            if cb_type is None:
                cb_type = next((t for t in CB_TYPE_PREFERENCE if t in cb.data), None)
            if cb_type is None or cb_type not in cb.data:
                raise ValueError(f"{self.name}: no channel-binding data for {cb_type!r}")
            if not _CB_NAME.fullmatch(cb_type):
                raise ValueError(f"bad channel-binding type {cb_type!r}")
            flag = f"p={cb_type}"
            self._cb_data = cb.data[cb_type]
        else:
            # RFC 5802 §6: "y" = the client supports binding but thinks the server
            # does not (it did not see -PLUS); "n" = the client cannot bind.
            flag = "y" if cb.available else "n"
        try:
            # RFC 5802 §5.1 (n): the client SHOULD prepare the name (query rules).
            prepared_user = saslprep(username, allow_unassigned=True)
        except SaslprepError as exc:
            raise ValueError(f"username rejected by SASLprep: {exc}") from exc
        if not prepared_user:
            raise ValueError("username is empty after SASLprep")
        self._password = _normalize_password(password)
        self._nonce = nonce if nonce is not None else default_nonce()
        if not _PRINTABLE.fullmatch(self._nonce):
            raise ValueError("client nonce must be printable ASCII without ','")
        authz = f"a={escape_saslname(authzid)}" if authzid else ""
        self._gs2_header = f"{flag},{authz},"
        self._bare = f"n={escape_saslname(prepared_user)},r={self._nonce}"
        self._max_iterations = max_iterations
        self._state: _ClientState = "start"
        self._server_signature = b""
        #: The PBKDF2 iteration count the server announced (``i=``), once it has:
        #: what `smtpgate audit` judges (RFC 7677 §4: at least 4096).
        self.iterations: int | None = None

    def start(self) -> bytes | None:
        if self._state != "start":
            raise MechanismUsageError(f"{self.name}: start() called twice")
        self._state = "first"
        return (self._gs2_header + self._bare).encode("utf-8")

    def step(self, challenge: bytes) -> bytes:
        if self._state == "first":
            return self._on_server_first(challenge)
        if self._state == "final":
            return self._on_server_final(challenge)
        if self._state == "start":
            raise MechanismUsageError(f"{self.name}: step() before start()")
        raise ClientAuthError(f"{self.name}: challenge after the exchange ended")

    @property
    def done(self) -> bool:
        return self._state == "done"

    def _on_server_first(self, challenge: bytes) -> bytes:
        text = decode_utf8(challenge)
        if text is None:
            raise ClientAuthError(f"{self.name}: server-first is not UTF-8")
        if text.startswith("e="):
            # Not in RFC 5802's grammar for server-first, but servers (ours among
            # them) end a refused client-first this way; it is still their verdict.
            raise ServerErrorMessage(f"{self.name}: server error {text[2:]!r}")
        attrs = text.split(",")
        if attrs[0].startswith("m="):
            raise ClientAuthError(f"{self.name}: server requires unsupported extension")
        if (
            len(attrs) < 3
            or not attrs[0].startswith("r=")
            or not attrs[1].startswith("s=")
            or not attrs[2].startswith("i=")
        ):
            raise ClientAuthError(f"{self.name}: malformed server-first")
        nonce = attrs[0][2:]
        # RFC 5802 §5.1 (r): the combined nonce starts with ours and adds the server's.
        if (
            not _PRINTABLE.fullmatch(nonce)
            or not nonce.startswith(self._nonce)
            or len(nonce) == len(self._nonce)
        ):
            raise ClientAuthError(f"{self.name}: server nonce does not extend ours")
        salt = _b64decode(attrs[1][2:])
        if not salt:
            raise ClientAuthError(f"{self.name}: bad salt")
        i_text = attrs[2][2:]
        if not i_text.isdigit() or not i_text.isascii():
            raise ClientAuthError(f"{self.name}: bad iteration count")
        iterations = int(i_text)
        if not 1 <= iterations <= self._max_iterations:
            raise ClientAuthError(f"{self.name}: iteration count {iterations} out of range")
        self.iterations = iterations
        salted = hashlib.pbkdf2_hmac(self._hash.name, self._password, salt, iterations)
        client_key, stored_key, server_key = _keys_from_salted(self._hash.name, salted)
        cbind = self._gs2_header.encode("utf-8") + self._cb_data
        without_proof = f"c={_b64(cbind)},r={nonce}"
        auth_message = f"{self._bare},{text},{without_proof}".encode()
        client_signature = _hmac(self._hash.name, stored_key, auth_message)
        proof = _xor(client_key, client_signature)
        self._server_signature = _hmac(self._hash.name, server_key, auth_message)
        self._state = "final"
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def _on_server_final(self, challenge: bytes) -> bytes:
        text = decode_utf8(challenge) or ""
        attr = text.split(",")[0]
        if attr.startswith("e="):
            # RFC 5802 §7 server-error: the server's verdict; the exchange is over.
            raise ServerErrorMessage(f"{self.name}: server error {attr[2:]!r}")
        signature = _b64decode(attr[2:]) if attr.startswith("v=") else None
        if signature is None:
            raise ClientAuthError(f"{self.name}: malformed server-final")
        # RFC 5802 §5 / §5.1 (v): the client authenticates the server by checking
        # ServerSignature; a mismatch is a server that does not know the keys.
        if not hmac.compare_digest(signature, self._server_signature):
            raise ClientAuthError(f"{self.name}: server signature does not verify")
        self._state = "done"
        return b""


class ScramSha1Client(ScramClient):
    name = "SCRAM-SHA-1"
    hash_name = "sha1"
    plus = False


class ScramSha1PlusClient(ScramClient):
    name = "SCRAM-SHA-1-PLUS"
    hash_name = "sha1"
    plus = True


class ScramSha256Client(ScramClient):
    name = "SCRAM-SHA-256"
    hash_name = "sha256"
    plus = False


class ScramSha256PlusClient(ScramClient):
    name = "SCRAM-SHA-256-PLUS"
    hash_name = "sha256"
    plus = True


_CLIENT_CLASSES: dict[tuple[str, bool], type[ScramClient]] = {
    (c.hash_name, c.plus): c
    for c in (ScramSha1Client, ScramSha1PlusClient, ScramSha256Client, ScramSha256PlusClient)
}
