"""SASL PLAIN (RFC 4616), server and client side.

Theory of operation: the whole credential arrives in one message,
``[authzid] NUL authcid NUL passwd``. The server checks the syntax and asks the
auth service to verify the password with ``VerifyPassword``, authzid included: the
service refuses an authzid that names another account (we have no
proxy-authorization policy), and only it can tell, since ``Alice@Example.org``
and "josé" in NFD name the account ``alice@example.org`` and "josé" in NFC name. The password is
passed on exactly as the client sent it (decoded UTF-8): the password hasher
prepares it with SASLprep (RFC 4616 §2, as SCRAM's keys are made), and still needs
the form as sent for hashes made before passwords were prepared
(``auth/passwords.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpgate.sasl._common import (
    ServerMechanismBase,
    decode_utf8,
    is_safe_name,
    unexpected_answer,
    verdict_step,
)
from smtpgate.sasl.base import (
    Challenge,
    CredentialAnswer,
    Failure,
    NeedCredentials,
    SingleMessageClient,
    Step,
    VerifyPassword,
)

#: RFC 4616 §2: the server "MUST be capable of accepting" fields of up to 255 octets.
#: We accept four times that, for long generated passwords, and refuse more: a
#: larger field is an attack on the backend, not a credential.
MAX_FIELD_OCTETS = 1024


class PlainSyntaxError(ValueError):
    """A PLAIN message does not match the RFC 4616 §2 ABNF.

    ``authcid`` is the user name when it was well formed and only another field
    was not, so that the auth log names whom the attempt was for."""

    def __init__(self, message: str, authcid: str = "") -> None:
        super().__init__(message)
        self.authcid = authcid


@dataclass(frozen=True, slots=True)
class PlainMessage:
    """A decoded PLAIN message; ``authzid`` is "" when the client sent none."""

    authcid: str
    password: str
    authzid: str = ""


def encode_plain(authcid: str, password: str, authzid: str = "") -> bytes:
    """Build ``[authzid] NUL authcid NUL passwd`` (RFC 4616 §2).

    Raises:
        PlainSyntaxError: a field contains NUL, or authcid/password is empty.
    """
    if not authcid or not password:
        raise PlainSyntaxError("authcid and password must not be empty")
    if "\0" in authcid or "\0" in password or "\0" in authzid:
        raise PlainSyntaxError("PLAIN fields must not contain NUL")
    return b"\0".join(f.encode("utf-8") for f in (authzid, authcid, password))


def decode_plain(message: bytes) -> PlainMessage:
    """Parse a PLAIN message strictly.

    Raises:
        PlainSyntaxError: not exactly two NULs, empty authcid or password, a field
            over ``MAX_FIELD_OCTETS``, or invalid UTF-8.
    """
    # RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd; SAFE excludes
    # NUL, so exactly two NULs split the message.
    fields = message.split(b"\0")
    if len(fields) != 3:
        raise PlainSyntaxError(f"expected 2 NUL separators, got {len(fields) - 1}")
    _, raw_authcid, raw_password = fields
    # RFC 4616 §2: authcid = 1*SAFE, passwd = 1*SAFE (authzid is the optional one).
    if not raw_authcid or not raw_password:
        raise PlainSyntaxError("empty authcid or password")
    if any(len(f) > MAX_FIELD_OCTETS for f in fields):
        raise PlainSyntaxError(f"field longer than {MAX_FIELD_OCTETS} octets")
    # RFC 4616 §2: SAFE is UTF-8; "The server MUST fail ... if ... not valid UTF-8".
    authzid, authcid, password = (decode_utf8(f) for f in fields)
    if authcid is None:
        raise PlainSyntaxError("user name is not valid UTF-8")
    # A password in a legacy charset (Latin-1 from an old client) is the usual
    # case: say so, and whose it was, as LOGIN does (until 2026-12 the auth log
    # had "field is not valid UTF-8" and no user name).
    name = authcid if is_safe_name(authcid) else ""
    if password is None:
        raise PlainSyntaxError("password is not valid UTF-8", authcid=name)
    if authzid is None:
        raise PlainSyntaxError("authorization identity is not valid UTF-8", authcid=name)
    return PlainMessage(authcid=authcid, password=password, authzid=authzid)


class PlainServer(ServerMechanismBase):
    """Server side of PLAIN; one message, then one ``VerifyPassword`` query."""

    name = "PLAIN"
    cleartext_credentials = True

    def __init__(self) -> None:
        super().__init__()
        self._message: PlainMessage | None = None

    def _start(self, initial: bytes | None) -> Step:
        if initial is None:
            # RFC 4422 §5: a client-first mechanism started without an initial
            # response gets an empty challenge. (b"" is a real, empty response.)
            return Challenge(b"")
        return self._step(initial)

    def _step(self, response: bytes) -> Step:
        try:
            msg = decode_plain(response)
        except PlainSyntaxError as exc:
            return Failure(reason=f"PLAIN: {exc}", malformed=True, username=exc.authcid)
        if not is_safe_name(msg.authcid) or (msg.authzid and not is_safe_name(msg.authzid)):
            return Failure(reason="PLAIN: control character in name", malformed=True)
        # RFC 4616 §2: the server decides whether authcid may act as authzid. Our
        # policy (only the account itself) is the auth service's to apply: a
        # comparison of the strings here refused another spelling of the same name.
        self._message = msg
        return NeedCredentials(
            VerifyPassword(msg.authcid, msg.password, msg.authzid, mechanism=self.name)
        )

    def _answer(self, result: CredentialAnswer) -> Step:
        msg = self._message
        if msg is None:  # pragma: no cover - the base class forbids this order
            return unexpected_answer(self.name, result)
        return verdict_step(self.name, result, username=msg.authcid, authzid=msg.authzid)


class PlainClient(SingleMessageClient):
    """Client side of PLAIN: the whole message is the initial response.

    If the transport does not send an initial response, it answers the server's
    empty challenge with ``step(b"")``, which yields the same message once.
    """

    name = "PLAIN"
    cleartext_credentials = True

    def __init__(self, username: str, password: str, authzid: str = "") -> None:
        super().__init__(encode_plain(username, password, authzid))
