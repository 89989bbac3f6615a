"""SASL LOGIN (draft-murchison-sasl-login-00, MS-XLOGIN), server and client side.

Theory of operation: the server prompts twice and the client answers with the
username, then the password. The draft's prompts are ``User Name``/``Password``;
every deployed server and client (MS-XLOGIN §3.1.5.1, Cyrus, Postfix, Dovecot)
uses ``Username:``/``Password:``, which is what clients expect, so we send those.
An initial response (``AUTH LOGIN dXNlcg==``, as Python's smtplib sends it) is the
username, and only the password prompt follows. Like PLAIN, the password goes to
the auth service as sent, which prepares it with SASLprep (``auth/passwords.py``).
"""

from __future__ import annotations

from smtpgate.sasl._common import (
    ServerMechanismBase,
    decode_utf8,
    is_safe_name,
    verdict_step,
)
from smtpgate.sasl.base import (
    Challenge,
    ClientAuthError,
    ClientMechanism,
    CredentialAnswer,
    Failure,
    NeedCredentials,
    Step,
    VerifyPassword,
)

USERNAME_PROMPT = b"Username:"
PASSWORD_PROMPT = b"Password:"

#: Same ceiling as PLAIN's fields (see ``plain.MAX_FIELD_OCTETS``).
MAX_FIELD_OCTETS = 1024


class LoginServer(ServerMechanismBase):
    """Server side of LOGIN: username prompt, password prompt, ``VerifyPassword``."""

    name = "LOGIN"
    cleartext_credentials = True

    def __init__(self) -> None:
        super().__init__()
        self._username: str | None = None

    def _start(self, initial: bytes | None) -> Step:
        if initial is None:
            return Challenge(USERNAME_PROMPT)
        # MS-XLOGIN / Cyrus: an initial response carries the username.
        return self._take_username(initial)

    def _step(self, response: bytes) -> Step:
        if self._username is None:
            return self._take_username(response)
        return self._take_password(self._username, response)

    def _take_username(self, data: bytes) -> Step:
        username = decode_utf8(data) if len(data) <= MAX_FIELD_OCTETS else None
        if username is None or not is_safe_name(username):
            return Failure(reason="LOGIN: invalid username", malformed=True)
        self._username = username
        return Challenge(PASSWORD_PROMPT)

    def _take_password(self, username: str, data: bytes) -> Step:
        password = decode_utf8(data) if len(data) <= MAX_FIELD_OCTETS else None
        if not password:
            return Failure(reason="LOGIN: invalid password", malformed=True, username=username)
        return NeedCredentials(VerifyPassword(username, password, mechanism=self.name))

    def _answer(self, result: CredentialAnswer) -> Step:
        return verdict_step(self.name, result, username=self._username or "")


class LoginClient(ClientMechanism):
    """Client side of LOGIN.

    The prompt text is ignored, as the draft tells clients to do: the first
    challenge gets the username, the second the password. With
    ``initial_response=True`` the username is sent with the AUTH command instead.
    """

    name = "LOGIN"
    cleartext_credentials = True
    ignores_challenges = True

    def __init__(self, username: str, password: str, *, initial_response: bool = False) -> None:
        self._answers = [username.encode("utf-8"), password.encode("utf-8")]
        self._initial_response = initial_response
        self._sent = 0

    def start(self) -> bytes | None:
        if not self._initial_response:
            return None
        self._sent = 1
        return self._answers[0]

    def step(self, challenge: bytes) -> bytes:
        if self._sent >= len(self._answers):
            raise ClientAuthError("LOGIN: unexpected third challenge from the server")
        out = self._answers[self._sent]
        self._sent += 1
        return out

    @property
    def done(self) -> bool:
        return self._sent >= len(self._answers)
