"""What the tests of slow and many connections share (web admin, metrics, doors)."""

from __future__ import annotations

import asyncio


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server ends the connection within ``seconds`` (all it sends is read)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True
