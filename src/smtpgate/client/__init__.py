"""Sans-IO SMTP client engine (the mirror of smtp/), used by relay delivery and the tester.

Nothing in this package touches a socket, TLS, a clock or asyncio; the I/O
drivers live elsewhere (``smtpgate.queue.smtp_io``).
"""

from smtpgate.client.engine import CLOSED, NEED_DATA, ClientEngine, Sentinel, dot_stuff, xtext
from smtpgate.client.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from smtpgate.client.extensions import Extensions
from smtpgate.client.replies import ReplyParser, ServerReply

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "ClientEngine",
    "Extensions",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "ReplyParser",
    "Sentinel",
    "ServerReply",
    "dot_stuff",
    "xtext",
]
