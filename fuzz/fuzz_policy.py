"""Fuzz the Postfix policy delegation parser (frontdoor/policy.py).

Input: byte 0 seeds the random cut points; the rest is what Postfix's
``check_policy_service`` client sends (``_common.expand`` applies). Invariants,
beyond "no exception" (a protocol error is ``parser.error``):

* the same bytes cut differently give the same requests and the same error;
* every request is an ``smtpd_access_policy`` one of at most MAX_ATTRIBUTES
  attributes, names without control characters, values without LF, and its derived
  facts (protocol_state, recipient_count, client_port) answer without raising;
* an action formatted for any reply is one ``action=`` line and a blank line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

with C.instrument(__name__ == "__main__"):
    from smtpgate.frontdoor.policy import (
        MAX_ATTRIBUTES,
        PolicyParser,
        PolicyRequest,
        action_for,
        format_action,
    )
    from smtpgate.smtp import replies as R


def run(chunks: list[bytes]) -> tuple[list[PolicyRequest], str]:
    parser = PolicyParser()
    out: list[PolicyRequest] = []
    for chunk in chunks:
        out += parser.receive_data(chunk)
    return out, parser.error or ""


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    stream = C.expand(data[1:])
    results = [run(chunks) for chunks in C.chunkings(stream, data[0], bytewise_limit=1024)]
    if any(r != results[0] for r in results[1:]):
        C.fail("chunking changes the requests", results)
    for req in results[0][0]:
        if req.get("request") != "smtpd_access_policy" or len(req.attrs) > MAX_ATTRIBUTES:
            C.fail("request of another kind or too many attributes", req)
        for name, value in req.attrs.items():
            # A value is Postfix's client's text (a control character included);
            # only LF, which ends it, cannot be in it.
            if not name or not name.isprintable() or "\n" in value:
                C.fail("empty name, control character in a name or LF in a value",
                       (name, value))
        if req.recipient_count < 0:
            C.fail("negative recipient count", req)
        if not 0 <= req.client_port <= 65535:
            C.fail("client port out of range", req)
        _ = req.protocol_state
    wire = format_action(action_for(R.SENDER_NOT_OWNED))
    if not wire.startswith(b"action=") or not wire.endswith(b"\n\n") or wire.count(b"\n") != 2:
        C.fail("action is not one line and a blank line", wire)


if __name__ == "__main__":
    C.main(TestOneInput)
