"""SASL EXTERNAL (RFC 4422 Appendix A), server and client side.

Theory of operation: the credential is outside SASL, here the TLS client
certificate the listener verified. The client's only message is the
authorization identity it asks for, empty to mean "whatever my certificate
maps to" (RFC 4422 A.1: ``message = [authz-id]``, UTF-8, no NUL); in SMTP it is
the initial response, ``AUTH EXTERNAL =`` for the empty one (RFC 4954 §4). The
server asks the auth service to map the session's certificate with
``VerifyCertificate``: the mechanism never sees the certificate, which the login
path takes from the connection (``AuthContext.client_certificate``), as it takes
the client address. A non-empty authzid must name the account the certificate
maps to (no proxy authorization, as for PLAIN).
"""

from __future__ import annotations

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
    VerifyCertificate,
)

#: An authzid is an account name: the same ceiling as PLAIN's fields.
MAX_AUTHZID_OCTETS = 1024


class ExternalServer(ServerMechanismBase):
    """Server side of EXTERNAL: one message (the authzid), one ``VerifyCertificate``."""

    name = "EXTERNAL"

    def __init__(self) -> None:
        super().__init__()
        self._authzid: str | None = None

    def _start(self, initial: bytes | None) -> Step:
        if initial is None:
            # RFC 4422 §5: a client-first mechanism without an initial response
            # gets an empty challenge; the client answers with its authzid.
            return Challenge(b"")
        return self._step(initial)

    def _step(self, response: bytes) -> Step:
        if len(response) > MAX_AUTHZID_OCTETS:
            return Failure(reason="EXTERNAL: authorization identity too long", malformed=True)
        authzid = decode_utf8(response)
        # RFC 4422 A.1: authz-id is UTF8-encoded; NUL and controls name nobody.
        if authzid is None or (authzid and not is_safe_name(authzid)):
            return Failure(reason="EXTERNAL: malformed authorization identity", malformed=True)
        self._authzid = authzid
        return NeedCredentials(VerifyCertificate(authzid, mechanism=self.name))

    def _answer(self, result: CredentialAnswer) -> Step:
        authzid = self._authzid
        if authzid is None:  # pragma: no cover - the base class forbids this order
            return unexpected_answer(self.name, result)
        return verdict_step(self.name, result, username=authzid, authzid=authzid)


class ExternalClient(SingleMessageClient):
    """Client side of EXTERNAL: the authzid ("" for the certificate's own identity)
    is the initial response; an empty challenge gets it once if it was not sent."""

    name = "EXTERNAL"

    def __init__(self, authzid: str = "") -> None:
        if "\0" in authzid:
            raise ValueError("EXTERNAL: NUL in the authorization identity")
        super().__init__(authzid.encode("utf-8"))
