"""The web admin: server-rendered pages over the admin service (docs/operations.md,
"Web admin").

Layering: below ``server/`` (which binds its socket and starts it in the process
that delivers) and above ``admin.py``, ``tools/``, ``queue/``, ``policy/`` and
``auth/``: every change goes through ``admin.AccountAdmin``, as the CLI's do,
with the logged-in admin as the admin log's actor.
"""
