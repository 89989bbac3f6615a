"""The certificate and key a reload (SIGHUP, ``smtpgate reload``) puts in service.

Found by replacing the files of a running server certbot-style and sending
SIGHUP: a key protected by a passphrase made OpenSSL ask for it
("Enter PEM pass phrase:") on the terminal of a server run in the foreground,
where the reloading process then waited for ever (SIGTERM only asked again).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tests.unit.test_server_processes import _cfg as write_config

#: Loads the config given as argv[1] as a reload does, then prints the outcome.
RELOAD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from smtpgate.config import load_config
    from smtpgate.server import reload as reloading
    path = Path(sys.argv[1])
    try:
        reloading.load(path, load_config(path))
    except reloading.ReloadError as e:
        print("refused", e.key, e)
    else:
        print("reloaded")
""")


def _encrypt_key(key_file: Path, traditional: bool) -> None:
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    fmt = (serialization.PrivateFormat.TraditionalOpenSSL if traditional
           else serialization.PrivateFormat.PKCS8)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt,
                                           serialization.BestAvailableEncryption(b"secret")))


def _reload_elsewhere(path: Path) -> subprocess.CompletedProcess[str]:
    """The reload in a process of its own, with no terminal to be prompted on
    (without the fix it would otherwise wait on the test runner's terminal)."""
    return subprocess.run(
        [sys.executable, "-c", RELOAD, str(path)], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, start_new_session=True, timeout=60, check=False,
    )


def test_a_key_with_a_passphrase_fails_the_reload_and_is_never_asked_for(tmp_path: Path) -> None:
    for traditional in (False, True):
        path = write_config(tmp_path)
        _encrypt_key(tmp_path / "tls" / "key.pem", traditional)
        done = _reload_elsewhere(path)
        assert done.stdout.startswith("refused tls.key "), (done.stdout, done.stderr)
        assert "protected by a passphrase" in done.stdout
        assert "pass phrase" not in done.stderr.lower()
        (tmp_path / "tls" / "cert.pem").unlink()  # a new pair for the other format
