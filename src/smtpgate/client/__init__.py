"""Sans-IO SMTP client engine (the mirror of smtp/) and the one client SASL driver
(``auth.py``), used by relay delivery, ``smtpgate test`` and ``smtpgate audit``.

Nothing in this package touches a socket, TLS, a clock or asyncio; the one I/O
shell around it is ``smtpgate.queue.smtp_io``.
"""

from smtpgate.client.auth import AuthSend, ClientAuthExchange, ClientAuthResult
from smtpgate.client.engine import CLOSED, NEED_DATA, ClientEngine, Sentinel, dot_stuff, xtext
from smtpgate.client.errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    TruncatedReply,
)
from smtpgate.client.extensions import Extensions
from smtpgate.client.replies import ReplyParser, ServerReply

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "AuthSend",
    "ClientAuthExchange",
    "ClientAuthResult",
    "ClientEngine",
    "Extensions",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "ReplyParser",
    "Sentinel",
    "ServerReply",
    "TruncatedReply",
    "dot_stuff",
    "xtext",
]
