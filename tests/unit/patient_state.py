"""A ``[state]`` (and a rate limiter's timeout) for tests that are not about the state
timing out.

The default ``timeout`` (0.25 s) is what a login may wait for the guard's SQLite file
in production; on the test machines a commit (an fsync) under the suite's own load
has taken longer, and the guard then rightly answers without its database: a test
about penalties or the -PLUS fallback failed for a slow disk. Tests of the timeout
itself (test_guard_unavailable.py) set their own.
"""

from __future__ import annotations

from smtpgate.config import StateConfig

PATIENT_STATE = StateConfig(timeout=10.0)
