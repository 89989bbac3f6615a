"""Fuzz the nginx ``auth_http`` request parser (frontdoor/auth_http.py).

Input: byte 0 seeds the random cut points; the rest is what arrives on the
auth_http socket (``_common.expand`` applies). Invariants, beyond "only
AuthHttpError":

* the header block cut differently gives the same request or the same refusal;
* a request has a valid Client-IP, an attempt count of at most 6 ASCII digits,
  and no control character but TAB in the fields that reach the log;
* the CRAM-MD5 salt splitter and the answer formatter never raise on what the
  parser let through, and an answer is one header block.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

with C.instrument(__name__ == "__main__"):
    from smtpgate.frontdoor.auth_http import (
        AuthHttpAnswer,
        AuthHttpError,
        AuthHttpParser,
        AuthHttpRequest,
        format_answer,
        split_salt,
    )


def run(chunks: list[bytes]) -> AuthHttpRequest | str:
    parser = AuthHttpParser()
    try:
        for chunk in chunks:
            request = parser.receive_data(chunk)
            if request is not None:
                return request
    except AuthHttpError:
        return "refused"
    return "incomplete"


def check(req: AuthHttpRequest) -> None:
    ipaddress.ip_address(req.client_ip)
    if not 0 <= req.attempt <= 999_999:
        C.fail("attempt count out of range", req)
    for name in ("method", "salt", "protocol", "client_ip", "client_host", "helo", "smtp_from",
                 "smtp_to"):
        value = getattr(req, name)
        if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in value):
            C.fail(f"control character in {name}", req)
    split_salt(req.salt)
    answer = AuthHttpAnswer(ok=False, text="Invalid login or password", error_code="535 5.7.8",
                            wait=min(req.attempt, 3))
    wire = format_answer(answer)
    if not wire.endswith(b"\r\n\r\n") or wire.count(b"\r\n\r\n") != 1:
        C.fail("answer is not one header block", wire)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    stream = C.expand(data[1:])
    whole = run([stream])
    if isinstance(whole, AuthHttpRequest):
        check(whole)
    # Bytes after the header block are refused in one read, and left unread once the
    # request came out of an earlier one: compare up to the end of the block.
    end = stream.find(b"\r\n\r\n")
    head = stream[: end + 4] if end >= 0 else stream
    results = [run(chunks) for chunks in C.chunkings(head, data[0], bytewise_limit=1024)]
    if any(r != results[0] for r in results[1:]):
        C.fail("chunking changes the request", results)


if __name__ == "__main__":
    C.main(TestOneInput)
