"""Fuzz every SASL client mechanism with hostile server challenges, alone and inside
the SMTP AUTH loop (client/auth.py) that the relay and the tools use.

Input: byte 0 picks the mechanism, byte 1 the mode (bit 0: TLS channel binding
available; bit 1: run the SMTP-level loop; bit 2: no initial response); the rest
are the server's messages separated by ``_common.SEP`` (in the SMTP mode each
starts with a byte choosing the reply code). Invariants, beyond "only
ClientAuthError/RemoteProtocolError":

* a SCRAM client-final carries the proof and c= an independent RFC 5802 §3
  computation gives for that server-first;
* a SCRAM client counts the server as verified only after the reference v=;
* the SMTP loop reports success only on 235, and for SCRAM only with the server
  verified (RFC 5802 §5); it ends within MAX_AUTH_ROUNDS + 1 challenges and
  every line it writes is one CRLF-terminated line.
"""

from __future__ import annotations

import base64
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

with C.instrument(__name__ == "__main__"):
    from smtpgate.client.auth import MAX_AUTH_ROUNDS, ClientAuthExchange, ClientAuthResult
    from smtpgate.client.engine import ClientEngine
    from smtpgate.client.errors import RemoteProtocolError
    from smtpgate.client.replies import ReplyParser
    from smtpgate.sasl.base import ChannelBinding, ClientAuthError, ClientMechanism
    from smtpgate.sasl.registry import create_client_mechanism, server_mechanism_names
    from smtpgate.sasl.scram import ScramClient

NAMES = sorted(server_mechanism_names())
#: Reply codes a segment's first byte picks from in the SMTP mode.
CODES = (334, 334, 334, 235, 535, 454, 501, 500, 250, 220, 334)
#: The client refuses servers asking for more PBKDF2 rounds than this (speed).
MAX_ITERATIONS = 4096


@functools.lru_cache(maxsize=256)
def _salted(h: str, salt: bytes, iterations: int) -> bytes:
    return C.salted_password(h, C.RFC_PASSWORD, salt, iterations)


class ScramCheck:
    """Follows a SCRAM client's exchange and recomputes what it must send."""

    def __init__(self, name: str, first: bytes, cb: dict[str, bytes]) -> None:
        self.h = "sha256" if name.startswith("SCRAM-SHA-256") else "sha1"
        self.gs2, self.bare = first.decode().split(",", 2)[:2], first.decode().split(",", 2)[2]
        self.cb = cb
        self.signature: bytes | None = None

    def client_final(self, server_first: bytes, final: bytes) -> None:
        text = server_first.decode("utf-8")
        attrs = text.split(",")
        salt = base64.b64decode(attrs[1][2:])
        iterations = int(attrs[2][2:])
        flag = self.gs2[0]
        gs2 = f"{flag},{self.gs2[1]},".encode()
        cbind = gs2 + (self.cb[flag[2:]] if flag.startswith("p=") else b"")
        without_proof = f"c={base64.b64encode(cbind).decode()},r={attrs[0][2:]}"
        auth_message = f"{self.bare},{text},{without_proof}".encode()
        proof, self.signature = C.scram_proof_and_signature(
            self.h, _salted(self.h, salt, iterations), auth_message
        )
        want = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
        if final != want:
            C.fail("SCRAM client-final differs from the reference", (final, want))

    def verified_by(self, server_final: bytes) -> None:
        attr = server_final.decode("utf-8", "replace").split(",")[0]
        if self.signature is None or attr != "v=" + base64.b64encode(self.signature).decode():
            C.fail("SCRAM client accepted a server signature", server_final)


def _client(name: str, cb: dict[str, bytes]) -> ClientMechanism:
    if name.startswith("SCRAM-"):
        h = "sha256" if name.startswith("SCRAM-SHA-256") else "sha1"
        return ScramClient(h, C.RFC_USER, C.RFC_PASSWORD, ChannelBinding(cb),
                           name.endswith("-PLUS"), None, C.RFC_SCRAM[h][2],
                           max_iterations=MAX_ITERATIONS)
    return create_client_mechanism(name, username=C.RFC_USER, password=C.RFC_PASSWORD,
                                   token=C.RFC_TOKEN, channel_binding=ChannelBinding(cb))


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    name = NAMES[data[0] % len(NAMES)]
    flags = data[1]
    cb = dict(C.CB_DATA) if flags & 1 or name.endswith("-PLUS") else {}
    msgs = C.messages(data[2:])
    if flags & 2:
        smtp_loop(name, cb, msgs, initial=not flags & 4)
    else:
        direct(name, cb, msgs)


def direct(name: str, cb: dict[str, bytes], msgs: list[bytes]) -> None:
    mech = _client(name, cb)
    first = mech.start()
    check = ScramCheck(name, first, cb) if isinstance(mech, ScramClient) and first else None
    for i, challenge in enumerate(msgs):
        was_done = mech.done
        try:
            out = mech.step(challenge)
        except ClientAuthError:
            return
        if not isinstance(out, bytes):
            C.fail("step() returned no bytes", out)
        if check is not None:
            if i == 0:
                check.client_final(challenge, out)
            elif mech.done and not was_done:
                check.verified_by(challenge)


def smtp_loop(name: str, cb: dict[str, bytes], msgs: list[bytes], *, initial: bool) -> None:
    engine = ClientEngine(expect_greeting=False)
    mech = _client(name, cb)
    exchange = ClientAuthExchange(engine, mech, initial_response=initial)
    send = exchange.start()
    scram_first = send.payload if isinstance(mech, ScramClient) else None
    check = None
    server_first: bytes | None = None
    for seg in msgs:
        _check_line(send.data)
        if not seg:
            return
        code = CODES[seg[0] % len(CODES)]
        text = seg[1:]
        if code == 334 and not seg[0] & 0x80:
            text = base64.b64encode(text)
        parser = ReplyParser()
        try:
            parser.feed(b"%d %s\r\n" % (code, text))
            reply = parser.next_reply()
        except RemoteProtocolError:
            return
        if reply is None:
            return
        done_before = getattr(mech, "done", False)
        try:
            result = exchange.receive(reply)
        except RemoteProtocolError:
            return
        if isinstance(mech, ScramClient):
            if scram_first is None and send.payload is not None:
                scram_first = send.payload  # the long form: client-first on the first 334
            if check is None and scram_first:
                check = ScramCheck(name, scram_first, cb)
            if check is not None and not isinstance(result, ClientAuthResult):
                if result.payload and result.payload.startswith(b"c=") and server_first is None:
                    server_first = result.challenge
                    check.client_final(result.challenge or b"", result.payload)
                elif mech.done and not done_before:
                    check.verified_by(result.challenge or b"")
        if isinstance(result, ClientAuthResult):
            if result.ok:
                if reply.code != 235:
                    C.fail("success without 235", reply)
                if isinstance(mech, ScramClient) and not (mech.done and result.server_verified):
                    C.fail("SCRAM success without the server's signature", result)
            if result.challenges > MAX_AUTH_ROUNDS + 1:
                C.fail("too many rounds", result.challenges)
            return
        send = result


def _check_line(wire: bytes) -> None:
    if not wire.endswith(b"\r\n") or b"\n" in wire[:-2] or b"\r" in wire[:-2]:
        C.fail("client wrote something other than one CRLF line", wire)


if __name__ == "__main__":
    C.main(TestOneInput)
