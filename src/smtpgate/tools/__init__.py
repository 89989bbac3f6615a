"""Administrator tools built on the client side: ``smtpgate test`` and ``smtpgate audit``.

``wire`` moves bytes (asyncio sockets, sans-IO TLS); ``session`` runs the SMTP
client engine and SASL over it with a ``transcript``; ``tester`` and ``audit``
are the two commands' logic; ``findings`` is the auditor's catalogue and
``report`` renders it.
"""
