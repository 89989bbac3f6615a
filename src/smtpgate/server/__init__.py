"""asyncio I/O layer: listeners that move bytes between sockets and the engine."""
