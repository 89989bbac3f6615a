"""Sans-IO SASL mechanisms, server and client side.

``base`` holds the interface and the value types; ``registry`` maps mechanism
names to implementations (``plain``, ``login``, ``scram``, ``cram_md5``,
``oauth``); ``saslprep`` is RFC 4013. Nothing here does I/O or reads a clock
(``tests/unit/test_sasl_imports.py`` enforces it).
"""
