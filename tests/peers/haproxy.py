"""A private HAProxy (Debian ``haproxy``) balancing the submission ports over
several smtpgate nodes in TCP mode with ``send-proxy-v2``, as docs/scale-out.md
sets it up. Round robin, so consecutive connections alternate between nodes;
``retries`` and ``option redispatch`` send a connection to the other node when
one is down (the kill -9 test)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.ports import free_port as _free_port

CONFIG = """\
global
    maxconn 2000

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch

frontend submission
    bind {bind}:{submission}{bind_options}
    default_backend submission_nodes

frontend submissions
    bind {bind}:{submissions}{bind_options}
    default_backend submissions_nodes

backend submission_nodes
    balance roundrobin
{submission_servers}

backend submissions_nodes
    balance roundrobin
{submissions_servers}
"""


class HAProxy:
    """``nodes``: (name, submission port, submissions port) of each smtpgate node;
    ``server_options`` ends each ``server`` line (``send-proxy`` for version 1, a
    ``check`` for health checks); ``dual_stack`` binds ``:::PORT v4v6``, where an IPv4
    client is an IPv4-mapped IPv6 address (``send-proxy`` then writes ``TCP6
    ::ffff:a.b.c.d``)."""

    def __init__(self, root: Path, nodes: list[tuple[str, int, int]], *,
                 server_options: str = "send-proxy-v2", dual_stack: bool = False) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.submission, self.submissions = _free_port(), _free_port()
        self.config = root / "haproxy.cfg"
        self.config.write_text(CONFIG.format(
            submission=self.submission, submissions=self.submissions,
            bind="::" if dual_stack else "127.0.0.1",
            bind_options=" v4v6" if dual_stack else "",
            submission_servers="\n".join(
                f"    server {name} 127.0.0.1:{sub} {server_options}" for name, sub, _ in nodes),
            submissions_servers="\n".join(
                f"    server {name} 127.0.0.1:{subs} {server_options}" for name, _, subs in nodes),
        ))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        with open(self.root / "haproxy.log", "ab") as log:
            self.proc = subprocess.Popen([binary, "-f", str(self.config), "-db"],
                                         stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        for port in (self.submission, self.submissions):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("haproxy did not start: " + (
                            self.root / "haproxy.log").read_text(errors="replace")) from None
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None
