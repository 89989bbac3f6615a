"""A TCP relay on loopback that can be frozen: a server host that goes silent.

Shared by the PostgreSQL and LDAP tests of a backend that stops answering
without closing its connections (a frozen host, a blackholed route, a firewall
that drops the replies), which no local server can be made to do by itself.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class FreezingRelay:
    """A TCP relay to a local server that can be frozen: while frozen it accepts
    connections and reads what comes, but nothing reaches the other side (a
    server host that accepts and never replies, or a blackholed route); thawed,
    what was held goes on. ``forget`` makes it a middlebox that forgot the
    connections open now (a NAT or firewall past its idle timeout): what they
    carry is dropped without a word either way, while new ones are relayed.
    One thread per direction and connection."""

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self._thawed = threading.Event()
        self._thawed.set()
        #: Connections accepted before the last ``forget`` carry nothing.
        self._epoch = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def forget(self) -> None:
        self._epoch += 1

    def close(self) -> None:
        self._thawed.set()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._relay, args=(client, self._epoch),
                             daemon=True).start()

    def _relay(self, client: socket.socket, epoch: int) -> None:
        server = None
        try:
            held = b""
            while not self._thawed.wait(0.1):  # frozen: read, answer nothing
                client.settimeout(0.1)
                with contextlib.suppress(TimeoutError):
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    held += chunk
            client.settimeout(None)
            server = socket.create_connection(("127.0.0.1", self._upstream))
            self._sockets.append(server)
            if held:
                server.sendall(held)
            back = threading.Thread(target=self._pump, args=(server, client, epoch),
                                    daemon=True)
            back.start()
            self._pump(client, server, epoch)
            back.join()
        except OSError:
            pass
        finally:
            for s in (client, server):
                if s is not None:
                    s.close()

    def _pump(self, src: socket.socket, dst: socket.socket, epoch: int) -> None:
        try:
            while chunk := src.recv(65536):
                self._thawed.wait()
                if epoch == self._epoch:
                    dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
