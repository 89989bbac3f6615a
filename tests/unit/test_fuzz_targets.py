"""The coverage-guided fuzz targets of fuzz/ (docs/security.md, "Fuzzing").

Each target runs for a short bounded time under atheris (a fixed libFuzzer seed,
3,000 inputs or 6 s, whichever comes first) and the test fails when it
finds a crash or a broken invariant, printing the reproducer's path. `make fuzz`
runs the same targets for long. The seeds must pass, and each invariant check
must be able to fail: a few hand-made violations prove the checks are not empty.
"""

from __future__ import annotations

import base64
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "fuzz"
TARGETS = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))
#: Inputs per target in `make test` (the time bound below ends it first on
#: a loaded machine).
RUNS = 3000
SECONDS = 6


def load(target: str) -> ModuleType:
    """Import a target as plain Python (not instrumented) to call its checks."""
    name = f"fuzz_{target}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_every_target_has_seeds() -> None:
    assert {"smtp_engine", "sasl_server", "sasl_client", "client_replies", "config"} <= set(
        TARGETS
    )
    for target in TARGETS:
        assert any((FUZZ / "corpus" / target).iterdir()), target


@pytest.mark.parametrize("target", TARGETS)
def test_seeds_pass(target: str) -> None:
    module = load(target)
    for seed in sorted((FUZZ / "corpus" / target).iterdir()):
        module.TestOneInput(seed.read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_briefly(target: str, tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    dictionary = FUZZ / "dict" / f"{target}.dict"
    extra = [f"-dict={dictionary}"] if dictionary.exists() else []
    proc = subprocess.run(
        [
            sys.executable, str(FUZZ / f"fuzz_{target}.py"),
            f"-runs={RUNS}", f"-max_total_time={SECONDS}", "-seed=1", "-max_len=1024",
            "-timeout=20", *extra, f"-artifact_prefix={tmp_path}/", str(work),
            str(FUZZ / "corpus" / target),
        ],
        check=False, capture_output=True, text=True, timeout=SECONDS * 12, cwd=ROOT,
    )
    found = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    tail = "\n".join(ln for ln in proc.stderr.splitlines() if "Instrumenting" not in ln)[-3000:]
    assert proc.returncode == 0 and not found, f"{target} found {found}:\n{tail}"
    assert "Done " in proc.stderr, tail


# --- the checks can fail ------------------------------------------------------------


def test_engine_output_check_refuses_malformed_replies() -> None:
    check = load("smtp_engine").check_output
    good = b"220 mx.test ESMTP\r\n250 2.0.0 OK\r\n"
    check(good)
    for bad in (
        b"220 mx.test ESMTP\r\n250 2.0.0 OK",  # no CRLF at the end
        b"220 mx.test ESMTP\r\n250 OK\r\n",  # no enhanced code
        b"220 mx.test ESMTP\r\n550 2.0.0 no\r\n",  # enhanced code of another class
        b"220 mx.test ESMTP\r\n250-2.0.0 a\r\n251 2.0.0 b\r\n",  # code changes mid-reply
        b"220 mx.test ESMTP\r\n221 2.0.0 Bye\r\n250 2.0.0 OK\r\n",  # output after 221
        b"220 mx.test ESMTP\r\n250 2.0.0 " + b"x" * 600 + b"\r\n",  # over 512 octets
        b"220 x\r\n25 bad\r\n",
    ):
        with pytest.raises(AssertionError, match="invariant broken"):
            check(bad)


def test_engine_data_end_check_fires() -> None:
    """A DATA end the engine reported where no CRLF.CRLF is, is caught."""
    m = load("smtp_engine")
    s = m.Session(1)
    s.fed = bytearray(b"DATA\r\nx\n.\n")
    s.data_start = 6
    s.engine.state = m.ServerEngine(s.settings).state  # not in DATA: it "left" DATA
    with pytest.raises(AssertionError, match="DATA ended before"):
        s.track(was_in_data=True)


def test_sasl_server_check_refuses_a_forged_scram_proof() -> None:
    m = load("sasl_server")
    s = m.Session("SCRAM-SHA-256", 0, {})
    s.client = [b"n,,n=user,r=abc", b"c=biws,r=abcdef,p=" + base64.b64encode(b"\0" * 32)]
    s.server_first = b"r=abcdef,s=c2FsdA==,i=4096"
    with pytest.raises(AssertionError, match="without a valid proof"):
        s.check_scram("user")
    with pytest.raises(AssertionError, match="nobody proved"):
        m.check_success(s, m.S.Success(identity="user"))


def test_sasl_client_check_refuses_a_wrong_server_signature() -> None:
    m = load("sasl_client")
    check = m.ScramCheck("SCRAM-SHA-1", b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL", {})
    with pytest.raises(AssertionError, match="accepted a server signature"):
        check.verified_by(b"v=AAAA")


def test_reply_check_refuses_a_reply_of_another_class() -> None:
    m = load("client_replies")
    with pytest.raises(AssertionError, match="another class"):
        m.check_reply(m.ServerReply(250, "5.0.0", ("x",)))
