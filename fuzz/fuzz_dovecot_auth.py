"""Fuzz the Dovecot auth protocol engine (frontdoor/dovecot.py), the server side
Postfix and Exim talk to, with whole connections.

Input: byte 0 sets the behaviour (bits 0-1: the mechanisms enabled; bit 2: the
auth store is down; bit 3: the MTA hangs up at the end, so every exchange under
way must end), byte 1 seeds the random cut points, the rest is what the MTA sends
(``_common.expand`` applies). The driver answers every event as the front door's
shell does, with a fixed account table. Invariants, beyond "no exception":

* the same bytes cut differently give the same events and output;
* the output is LF-terminated lines of known commands (VERSION, MECH, SPID, CUID,
  COOKIE, DONE, CONT, OK, FAIL, CANCELLED), TAB-separated, with no other control
  character, at most MAX_OUT_LINE long, a CONT's data in base64;
* ``OK`` only for an identity the auth service granted, and only as the answer
  of a request whose exchange ended in success; no mechanism error masked;
* after the MTA hangs up, every exchange still under way ends exactly once.
"""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

with C.instrument(__name__ == "__main__"):
    from smtpgate.frontdoor.dovecot import (
        MAX_OUT_LINE,
        NEED_DATA,
        CredentialsNeeded,
        Disconnect,
        DovecotServer,
        DovecotSettings,
        ExchangeEnded,
        RequestRefused,
    )
    from smtpgate.sasl import base as S
    from smtpgate.sasl.cram_md5 import cram_md5_secret_from_password
    from smtpgate.sasl.exchange import AuthResult
    from smtpgate.sasl.registry import create_server_mechanism
    from smtpgate.sasl.scram import scram_credentials_from_password

PASSWORDS = {C.RFC_USER: C.RFC_PASSWORD, "tim": "tanstaaftanstaaf"}
SCRAM_CREDS = {
    h: scram_credentials_from_password(C.RFC_PASSWORD, h, it, salt=salt)
    for h, (salt, it, _, _) in C.RFC_SCRAM.items()
}
MECH_SETS = (
    ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN", "CRAM-MD5"),
    ("PLAIN", "LOGIN"),
    ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "EXTERNAL", "OAUTHBEARER", "XOAUTH2", "PLAIN"),
    ("CRAM-MD5", "SCRAM-SHA-1", "LOGIN"),
)
_COMMANDS = {"VERSION", "MECH", "SPID", "CUID", "COOKIE", "DONE", "CONT", "OK", "FAIL",
             "CANCELLED"}
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _factory(name: str) -> S.ServerMechanism:
    if name.startswith("SCRAM-"):
        nonce = C.RFC_SCRAM["sha256" if "256" in name else "sha1"][3]
    else:
        nonce = "1896.697170952"
    return create_server_mechanism(
        name, channel_binding=S.ChannelBinding(), hostname="postoffice.reston.mci.net",
        nonce_factory=lambda: nonce, decoy_secret=b"fuzz-decoy", oauth_scope="mail",
    )


class Connection:
    def __init__(self, flags: int) -> None:
        mechs = MECH_SETS[flags & 3]
        self.server = DovecotServer(DovecotSettings(mechs, _factory, "100", "7", "0" * 32))
        self.store_down = bool(flags & 4)
        self.hang_up = bool(flags & 8)
        self.events: list[object] = []
        self.out = bytearray(self.server.handshake())
        self.granted: set[str] = set()
        #: Request id -> the identity its successful exchange proved.
        self.succeeded: dict[int, str] = {}
        self.ended: list[int] = []
        self.closed = False

    def run(self, chunks: list[bytes]) -> None:
        srv = self.server
        for chunk in chunks:
            if self.closed:
                break
            srv.receive_data(chunk)
            self.pump()
            self.out += srv.data_to_send()
        if self.hang_up and not self.closed:
            under_way = srv.pending
            lost = srv.connection_lost()
            self.events.append(("lost", lost))
            if len({e.request.id for e in lost}) != len(lost) or len(lost) > under_way:
                C.fail("an exchange ended twice at hang-up", lost)
            if any(e.answered for e in lost):
                C.fail("an exchange of a gone peer waits for an answer", lost)

    def pump(self) -> None:
        srv = self.server
        while not self.closed:
            ev = srv.next_event()
            if ev is NEED_DATA:
                return
            self.events.append(ev)
            if isinstance(ev, CredentialsNeeded):
                srv.answer(ev.request.id, self.answer(ev.query))
            elif isinstance(ev, ExchangeEnded):
                o = ev.outcome
                if o.reason.startswith("internal mechanism error"):
                    C.fail("a mechanism raised inside the exchange", ev)
                if o.result == AuthResult.SUCCESS:
                    if o.identity not in self.granted:
                        C.fail("success for an identity nobody granted", ev)
                    self.succeeded[ev.request.id] = o.identity
                if ev.answered:
                    srv.finish(ev.request.id, o.result, o.identity or o.username)
            elif isinstance(ev, Disconnect):
                self.closed = True
            elif not isinstance(ev, RequestRefused):
                C.fail("unknown event", ev)

    def answer(self, q: S.CredentialQuery) -> S.CredentialAnswer:
        if self.store_down:
            return S.NotFound("store down", temporary=True)
        if isinstance(q, S.VerifyPassword):
            ok = PASSWORDS.get(q.username) == q.password
            if ok:
                self.granted.add(q.username)
            return S.Verdict(ok=ok, identity=q.username if ok else "", reason="bad")
        if isinstance(q, S.LookupScram):
            return SCRAM_CREDS[q.hash_name] if q.username == C.RFC_USER else S.NotFound()
        if isinstance(q, S.LookupCramMd5):
            pw = PASSWORDS.get(q.username)
            return cram_md5_secret_from_password(pw) if pw else S.NotFound()
        if isinstance(q, S.ProofArrived):
            return S.Verdict(ok=True)  # the login path's guard re-check: go on
        if isinstance(q, S.ConfirmIdentity):
            self.granted.add(q.username)  # proven by the mechanism (fuzz_sasl_server.py)
            return S.Verdict(ok=True, identity=q.username)
        return S.NotFound()  # tokens, certificates: none valid here


def check_output(conn: Connection) -> None:
    out = bytes(conn.out)
    if out and not out.endswith(b"\n"):
        C.fail("output does not end with LF", out[-80:])
    for line in out.split(b"\n")[:-1]:
        if len(line) > MAX_OUT_LINE or _CONTROL.search(line):
            C.fail("line too long or with a control character", line[:120])
        fields = line.decode("utf-8").split("\t")
        if fields[0] not in _COMMANDS:
            C.fail("unknown command in the output", line[:120])
        if fields[0] == "CONT":
            base64.b64decode(fields[2], validate=True)
        if fields[0] == "OK":
            rid = int(fields[1])
            user = fields[2].removeprefix("user=") if len(fields) > 2 else ""
            if conn.succeeded.get(rid) != user or user not in conn.granted:
                C.fail("OK for a request that did not succeed", (line, conn.succeeded))


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, seed = data[0], data[1]
    stream = C.expand(data[2:])
    conns = []
    for chunks in C.chunkings(stream, seed, bytewise_limit=1024, random_cuts=False):
        conn = Connection(flags)
        conn.run(chunks)
        conns.append(conn)
    for conn in conns[1:]:
        if conn.events != conns[0].events or conn.out != conns[0].out:
            C.fail("chunking changes the connection", (conns[0].events, conn.events))
    check_output(conns[0])


if __name__ == "__main__":
    C.main(TestOneInput)
