"""Fuzz the From/Sender header check (policy/sender.py) against the spoofs it exists
to stop, with Python's own mail readers as the oracle.

Input: a message as the engine hands it over (any line ending becomes CRLF, as
DATA guarantees; ``_common.expand`` applies). The account owns
``alice@example.org`` only; the check runs in ``enforce`` mode. Invariants,
beyond "no exception":

* whatever a reader shows as the author or sender must be owned: if Python's
  ``email`` package (the modern ``headerregistry`` reader, or the classic
  ``getaddresses`` one) reads a From or Sender field of the message as an
  address the account does not own, the check refuses the message;
* a message in which those readers find a From field is not taken as one
  without (and one without any From is refused, 554 5.6.0);
* the addresses found are strings without CR or LF, and reading is deterministic.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import logging
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

with C.instrument(__name__ == "__main__"):
    from smtpgate.auth.sender_profile import SenderProfile
    from smtpgate.config import PolicyConfig
    from smtpgate.policy import sender as P
    from smtpgate.smtp import replies as R

PROFILE = SenderProfile("alice@example.org")
POLICY = PolicyConfig()
_EOL = re.compile(rb"\r\n|\r|\n")
# What a reader would show as a mail address: local part, "@", a dotted domain.
_SHOWN = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+\Z")


def oracle(message: bytes) -> tuple[list[str], bool]:
    """(the author/sender addresses Python's readers show, whether a From exists)."""
    shown: list[str] = []
    has_from = False
    for policy in (email.policy.default, email.policy.compat32):
        try:
            msg = email.message_from_bytes(message, policy=policy)
            for name in ("From", "Sender"):
                values = msg.get_all(name) or []
                has_from |= name == "From" and any(str(v).strip() for v in values)
                if policy is email.policy.default:
                    for v in values:
                        shown += [a.addr_spec for a in getattr(v, "addresses", ())]
                else:
                    shown += [a for _, a in email.utils.getaddresses([str(v) for v in values])]
        except Exception:  # noqa: BLE001, S112 - a message this reader cannot take
            continue
    # compat32 keeps undecodable bytes as surrogates; a reader shows U+FFFD there.
    shown = [a.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for a in shown]
    return [a for a in shown if _SHOWN.match(a)], has_from


#: Messages are cut to this many bytes: the oracle is Python's header parser, which
#: is quadratic on some values (docs/security.md, "What it found"; the check bounds
#: what it hands the parser, the oracle does not).
MAX_MESSAGE = 8 * 1024


def TestOneInput(data: bytes) -> None:
    message = _EOL.sub(b"\r\n", C.expand(data)[:MAX_MESSAGE])
    header = P.header_section(message)
    found = P.header_from_addresses(message)
    if found != P.header_from_addresses(message):
        C.fail("reading the same message twice differs", message[:200])
    if found is not None and any("\r" in a or "\n" in a for a in found):
        C.fail("an address with CR or LF", found)
    refusal = P.from_header_refusal(PROFILE, header, POLICY, where="fuzz")
    if found is None and refusal != R.FROM_MISSING:
        C.fail("a message without From not refused", (message[:200], refusal))
    shown, has_from = oracle(header + b"\r\n")
    if has_from and found is None:
        C.fail("a From field Python's reader sees was missed", header[:300])
    foreign = [a for a in shown if not PROFILE.owns(a)]
    if foreign and refusal is None:
        C.fail("a reader shows an address the account does not own", (foreign, header[:300]))


if __name__ == "__main__":
    # A refusal per input: no log line each. Only when fuzzing: imported by the
    # test suite, the module must leave the logger to the tests that follow.
    logging.getLogger("smtpgate.policy").disabled = True
    C.main(TestOneInput)
