#!/usr/bin/env python3
"""A TCP proxy that holds every chunk the server sends for ``--delay`` seconds: a
slow directory, for the login benchmark's "directory answers in 200 ms" figures.

What the client sends goes through at once; what the server sends is released
``delay`` after it arrived, in order, without queueing one delay behind another
(a search answer sent as two chunks costs one delay, not two). So every LDAP
round trip (bind, search, StartTLS) takes ``delay`` longer, whatever the
protocol carries: the proxy never parses it. Loopback only; runs until SIGTERM.

Usage: ``delay_proxy.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --delay 0.2``
(prints ``ready`` on stdout once it listens).
"""

from __future__ import annotations

import argparse
import asyncio
import signal


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise argparse.ArgumentTypeError("loopback only")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Client to server, at once; the client's EOF is passed on as a half-close."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def _delayed_pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def release() -> None:
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    releaser = asyncio.create_task(release())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((loop.time() + delay, b""))
    await releaser


async def serve(listen: tuple[str, int], upstream: tuple[str, int], delay: float) -> None:
    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection(*upstream)
        except OSError:
            c_writer.close()
            return
        await asyncio.gather(_pipe(c_reader, u_writer), _delayed_pipe(u_reader, c_writer, delay))
        u_writer.close()

    server = await asyncio.start_server(handle, *listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", type=_hostport, required=True)
    p.add_argument("--upstream", type=_hostport, required=True)
    p.add_argument("--delay", type=float, default=0.2)
    a = p.parse_args()
    asyncio.run(serve(a.listen, a.upstream, a.delay))


if __name__ == "__main__":
    main()
