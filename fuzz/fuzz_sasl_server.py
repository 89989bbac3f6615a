"""Fuzz every SASL server mechanism (sasl/), driven as the SASL exchange drives it.

Input: byte 0 picks the mechanism, byte 1 the connection and auth-service
behaviour (channel binding present, -PLUS supported, how the look-ups answer,
initial response or not); the rest are the client's messages separated by
``_common.SEP``. Invariants, beyond "no exception":

* a mechanism never reports success, nor asks to confirm an identity, unless the
  client proved the password or token: checked against an independent
  computation (SCRAM's proof and c= per RFC 5802 §3, CRAM-MD5's HMAC per
  RFC 2195) or against the auth service's own verdict (PLAIN, LOGIN, OAuth);
* a name sent to the auth service carries no control character (it travels on
  to line-based backends and logs);
* a SCRAM success carries v= equal to the reference ServerSignature; a failure's
  error data is ASCII (SCRAM ``e=``) or a JSON object (OAuth);
* an exchange ends within a few rounds.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

with C.instrument(__name__ == "__main__"):
    from smtpgate.sasl import base as S
    from smtpgate.sasl.cram_md5 import cram_md5_secret_from_password
    from smtpgate.sasl.registry import create_server_mechanism, server_mechanism_names
    from smtpgate.sasl.scram import scram_credentials_from_password

#: Sorted, so a seed's first byte keeps naming the same mechanism when one is added.
NAMES = sorted(server_mechanism_names())
PASSWORDS = {C.RFC_USER: C.RFC_PASSWORD, "tim": "tanstaaftanstaaf"}
TOKENS = {C.RFC_USER: C.RFC_TOKEN}
#: RFC 2195 §2's example: the challenge <1896.697170952@postoffice.reston.mci.net>.
CRAM_HOST, CRAM_NONCE = "postoffice.reston.mci.net", "1896.697170952"
SCRAM_CREDS = {
    h: scram_credentials_from_password(C.RFC_PASSWORD, h, it, salt=salt)
    for h, (salt, it, _, _) in C.RFC_SCRAM.items()
}
SALTED = {
    h: C.salted_password(h, C.RFC_PASSWORD, salt, it) for h, (salt, it, _, _) in C.RFC_SCRAM.items()
}
CRAM_SECRETS = {u: cram_md5_secret_from_password(p) for u, p in PASSWORDS.items()}


def _hash_of(name: str) -> str:
    return "sha256" if name.startswith("SCRAM-SHA-256") else "sha1"


def _nonce_factory(name: str) -> Callable[[], str]:
    if name.startswith("SCRAM-"):
        nonce = C.RFC_SCRAM[_hash_of(name)][3]
    else:
        nonce = CRAM_NONCE
    return lambda: nonce


class Session:
    """One exchange: the auth service's side and the record of what was proven."""

    def __init__(self, name: str, mode: int, cb: dict[str, bytes], cert: bool = False) -> None:
        self.name = name
        #: EXTERNAL: the session has a verified client certificate mapped to RFC_USER.
        self.cert = cert
        self.mode = mode
        self.cb = cb
        self.client: list[bytes] = []
        self.challenges: list[bytes] = []
        self.server_first: bytes | None = None
        self.granted: set[str] = set()
        #: SCRAM: the reference ServerSignature, once a proof checked out.
        self.signature = b""

    def answer(self, q: S.CredentialQuery) -> S.CredentialAnswer:
        user = q.username
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
            C.fail("control character in a name sent to the auth service", q)
        if self.mode == 5:
            return S.NotFound("store down", temporary=True)
        if self.mode == 6:
            # The wrong type of answer (a bug in the auth service): an "ok" verdict to
            # a secret look-up must not log anyone in.
            if isinstance(q, S.LookupScram | S.LookupCramMd5):
                return S.Verdict(ok=True, identity=user)
            return S.ScramCredentials(b"", 0, b"", b"")
        if isinstance(q, S.ProofArrived):
            return S.Verdict(ok=True)  # the login path's guard re-check: go on
        if isinstance(q, S.VerifyPassword):
            ok = PASSWORDS.get(user) == q.password and self.mode != 7
            if ok:
                self.granted.add(user)
            return S.Verdict(ok=ok, identity=user if ok else "", reason="" if ok else "bad")
        if isinstance(q, S.VerifyToken):
            ok = TOKENS.get(user or C.RFC_USER) == q.token and self.mode != 7
            if ok:
                self.granted.add(user or C.RFC_USER)
            return S.Verdict(ok=ok, identity=user or C.RFC_USER)
        if type(q).__name__ == "VerifyCertificate":  # EXTERNAL: user is the authzid
            ok = self.cert and user in ("", C.RFC_USER) and self.mode != 7
            if ok:
                self.granted.add(C.RFC_USER)
            return S.Verdict(ok=ok, identity=C.RFC_USER if ok else "")
        if isinstance(q, S.LookupScram):
            if user != C.RFC_USER:
                return S.NotFound()
            creds = SCRAM_CREDS[q.hash_name]
            return S.ScramCredentials(b"", 1, b"", b"") if self.mode == 7 else creds
        if isinstance(q, S.LookupCramMd5):
            secret = CRAM_SECRETS.get(user)
            if secret is None:
                return S.NotFound()
            return S.CramMd5Secret(b"x", b"y") if self.mode == 7 else secret
        # ConfirmIdentity: the mechanism says the client proved itself. Check it.
        self.check_proof(user)
        self.granted.add(user)
        return S.Verdict(ok=True, identity=user)

    def check_proof(self, user: str) -> None:
        if self.name.startswith("SCRAM-"):
            self.check_scram(user)
        elif self.name == "CRAM-MD5":
            challenge = self.challenges[0]
            text = self.client[-1].decode("utf-8")
            who, _, hexdigest = text.rpartition(" ")
            want = C.cram_md5_digest(PASSWORDS.get(who, "\0"), challenge)
            if who != user or bytes.fromhex(hexdigest) != want:
                C.fail("CRAM-MD5 confirmed without the right digest", (user, self.client))
        else:
            C.fail(f"{self.name} asked to confirm an identity", user)

    def check_scram(self, user: str) -> None:
        h = _hash_of(self.name)
        first = next(m for m in self.client if m)
        flag, authz, bare = first.decode("utf-8").split(",", 2)
        if self.server_first is None:
            C.fail("SCRAM confirmed without a server-first", self.client)
        final = self.client[-1].decode("utf-8")
        without_proof, _, proof_b64 = final.rpartition(",p=")
        attrs = without_proof.split(",")
        auth_message = f"{bare},{self.server_first.decode()},{without_proof}".encode()
        want_proof, sig = C.scram_proof_and_signature(h, SALTED[h], auth_message)
        gs2 = f"{flag},{authz},".encode()
        want_c = gs2 + (self.cb[flag[2:]] if flag.startswith("p=") else b"")
        server_nonce = self.server_first.decode().split(",")[0][2:]
        if (
            user != C.RFC_USER
            or base64.b64decode(proof_b64) != want_proof
            or base64.b64decode(attrs[0][2:]) != want_c
            or attrs[1][2:] != server_nonce
            or not server_nonce.startswith(bare.split(",")[1][2:])
            or (self.name.endswith("-PLUS") != flag.startswith("p="))
        ):
            C.fail("SCRAM confirmed without a valid proof", (user, self.client, self.server_first))
        self.signature = sig


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    name = NAMES[data[0] % len(NAMES)]
    flags = data[1]
    msgs = C.messages(data[2:])
    cb = dict(C.CB_DATA) if flags & 1 else {}
    mode = (flags >> 2) & 7
    mech = create_server_mechanism(
        name,
        channel_binding=S.ChannelBinding(cb),
        hostname=CRAM_HOST,
        nonce_factory=_nonce_factory(name),
        plus_advertised=bool(flags & 2),
        decoy_secret=b"fuzz-decoy-secret",
        decoy_iterations=4096,
        oauth_scope="mail",
    )
    s = Session(name, mode, cb, cert=bool(flags & 0x40))
    initial = None if flags & 0x20 or mech.server_first else msgs.pop(0)
    if initial is not None:
        s.client.append(initial)
    step = mech.start(initial)
    last_query: S.CredentialQuery | None = None
    for _ in range(12):
        if isinstance(step, S.Challenge):
            if not isinstance(step.data, bytes):
                C.fail("challenge data is not bytes", step)
            s.challenges.append(step.data)
            if isinstance(last_query, S.LookupScram):
                s.server_first = step.data
            last_query = None
            if not msgs:
                return
            response = msgs.pop(0)
            s.client.append(response)
            step = mech.step(response)
        elif isinstance(step, S.NeedCredentials):
            last_query = step.query
            step = mech.answer(s.answer(step.query))
        elif isinstance(step, S.Success):
            check_success(s, step)
            return
        elif isinstance(step, S.Failure):
            check_failure(s, step)
            return
        else:
            C.fail("unknown step type", step)
    C.fail("exchange did not end within 12 rounds", s.client)


def check_success(s: Session, step: S.Success) -> None:
    if step.identity not in s.granted:
        C.fail("success for an identity nobody proved", (step, s.client))
    if s.name.startswith("SCRAM-"):
        want = b"v=" + base64.b64encode(s.signature)
        if step.final_data != want:
            C.fail("SCRAM success without the reference v=", (step.final_data, want))


def check_failure(s: Session, step: S.Failure) -> None:
    if not isinstance(step.reason, str) or not step.reason:
        C.fail("failure without a reason", step)
    data = step.error_data
    if data is None:
        return
    if s.name.startswith("SCRAM-"):
        if not data.startswith(b"e=") or not data.isascii():
            C.fail("SCRAM error data is not e=<ascii>", data)
    elif s.name in ("OAUTHBEARER", "XOAUTH2"):
        if not isinstance(json.loads(data), dict):
            C.fail("OAuth error data is not a JSON object", data)
    else:
        C.fail(f"{s.name} sent error data", data)


if __name__ == "__main__":
    C.main(TestOneInput)
