"""Sans-IO engines of the front doors: protocols in which another server (Postfix,
Exim) asks smtpgate to decide logins. Bytes in, lines and events out; the asyncio
shells in ``server/`` move the bytes (docs/integration.md)."""
