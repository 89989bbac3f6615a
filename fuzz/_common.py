"""What the fuzz targets share: the atheris entry point, input framing, reference math.

Each target is a module with ``TestOneInput(data: bytes)`` that raises on a broken
invariant (an uncaught exception is what atheris/libFuzzer report as a crash).
The reference computations here are written from the RFCs with ``hashlib``/``hmac``
only, never by calling smtpgate, so a target can check smtpgate's answer against
an independent one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import random
import sys
from collections.abc import Callable, Iterator

#: Separates the messages of one input (SASL responses, server challenges). It is
#: invalid UTF-8, so no well-formed SASL message needs it.
SEP = b"\xff\xfe"

#: The RFC 5802 §5 and RFC 7677 §3 example account; seeds replay those exchanges.
RFC_USER = "user"
RFC_PASSWORD = "pencil"
#: hash -> (salt, iterations, client nonce, server nonce part) of the RFC examples.
RFC_SCRAM = {
    "sha1": (base64.b64decode("QSXCR+Q6sek8bf92"), 4096, "fyko+d2lbbFgONRv9qkxdawL",
             "3rfcNHYJY1ZVvWVs7j"),
    "sha256": (base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096, "rOprNGfwEbeRWgbNEkqO",
               "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"),
}
RFC_TOKEN = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
CB_DATA = {"tls-exporter": b"E" * 32, "tls-server-end-point": b"S" * 32, "tls-unique": b"U" * 12}


def instrument(enabled: bool) -> contextlib.AbstractContextManager[object]:
    """Coverage-instrument the smtpgate modules imported inside, when run as a fuzzer
    (``enabled``); imported by the tests, the target uses plain modules."""
    if not enabled:
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=["smtpgate"])  # type: ignore[no-any-return]


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Run ``test_one_input`` under libFuzzer with the command line's options."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def messages(data: bytes) -> list[bytes]:
    return data.split(SEP)


def chunkings(
    data: bytes, seed: int, *, bytewise_limit: int = 2048, random_cuts: bool = True
) -> Iterator[list[bytes]]:
    """The same bytes cut several ways: whole, at random points (always when too
    long to go byte by byte, else if ``random_cuts``), and byte by byte (if at most
    ``bytewise_limit`` bytes, to stay cheap)."""
    yield [data]
    if random_cuts or len(data) > bytewise_limit:
        rng = random.Random(seed)
        n = min(len(data) - 1, 1 + seed % 8) if len(data) > 1 else 0
        cuts = sorted(rng.sample(range(1, len(data)), n)) if n > 0 else []
        yield [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    if len(data) <= bytewise_limit:
        yield [data[i : i + 1] for i in range(len(data))]


def expand(data: bytes) -> bytes:
    """``\\xfe\\xfe`` + one byte n repeats the byte before it 64*n times, so a short
    input can reach the long-line and size limits."""
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i : i + 2] == b"\xfe\xfe" and i + 2 < len(data) and out:
            out += out[-1:] * (64 * data[i + 2])
            i += 3
            continue
        out.append(data[i])
        i += 1
    return bytes(out)


# --- SCRAM reference (RFC 5802 §3) ------------------------------------------------


def salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac(hash_name, password.encode("utf-8"), salt, iterations)


def scram_proof_and_signature(
    hash_name: str, salted: bytes, auth_message: bytes
) -> tuple[bytes, bytes]:
    """(ClientProof, ServerSignature) for one AuthMessage."""
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    stored_key = hashlib.new(hash_name, client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hash_name).digest()
    client_signature = hmac.new(stored_key, auth_message, hash_name).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, client_signature, strict=True))
    return proof, hmac.new(server_key, auth_message, hash_name).digest()


def cram_md5_digest(password: str, challenge: bytes) -> bytes:
    """RFC 2195 §2: HMAC-MD5 keyed with the password over the challenge."""
    return hmac.new(password.encode("utf-8"), challenge, "md5").digest()


def fail(what: str, data: object) -> None:
    """A broken invariant: raise with enough context to read the crash report."""
    raise AssertionError(f"invariant broken: {what}: {data!r}"[:4000])
