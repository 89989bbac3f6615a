"""Sans-IO SMTP server engine: bytes in, replies and events out (no sockets, no clock)."""
