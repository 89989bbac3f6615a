"""One PING to the shared state's Redis, for ``config check`` and ``serve``'s
start-up (``preflight.check_state``).

Why: a node whose Redis refuses it (a wrong ``password_file``, a certificate
``ca_file`` does not verify, a client certificate Redis does not accept) starts,
and serves every login as though Redis were down (``on_unavailable``: 454 for
every address the process has not seen) for as long as it runs, while the log
says "not answering", which reads like an outage to wait out. Such a refusal is
the configuration's, as a refused PostgreSQL login is, so it is an error here,
naming the key to fix; a Redis that does not answer (stopped, starting, a
network cut) is an outage, a warning: the node starts and recovers by itself.

A Redis that answers is also asked whether it may evict keys (``maxmemory`` set
and a ``maxmemory-policy`` other than ``noeviction``, the usual set-up of a
Redis shared with a cache, and of managed services): it would then drop the
guard's keys silently once full (a block's record, an account's failures, a
penalty; ``allkeys-*`` any key, ``volatile-*`` those with an expiry), and a
lockout in force or the failures counted toward one would be gone without a
word, an attacker's budget reset by filling memory. That is an error: with
``noeviction`` a full Redis refuses writes, which the guard notices and answers
as an outage (``on_unavailable``), so nothing is lost silently.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtpgate.config import Config

if TYPE_CHECKING:
    import redis

#: The least a check waits for Redis's answer: ``state.timeout`` bounds a login's
#: wait (0.25 s by default), too short to tell a slow first TLS handshake from none.
_MIN_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class Finding:
    """``refused``: Redis answered, and refused this configuration; else it did not
    answer. ``key``: the config key to look at."""

    refused: bool
    key: str
    message: str
    #: False: not an outage either, something to check by hand (a warning).
    outage: bool = True


def _cause(e: BaseException) -> BaseException:
    """The exception at the bottom of the chain (redis-py wraps the ssl module's)."""
    while True:
        inner = e.__cause__ or e.__context__
        if inner is None:
            return e
        e = inner


def _text(e: BaseException) -> str:
    """redis-py's message on one line, without its closing full stop."""
    return " ".join(str(e).split()).rstrip(".")


def ping(cfg: Config) -> Finding | None:
    """None when Redis answers PING as configured; else what is wrong. Never raises
    for anything Redis or the network does (the password file's own errors are
    the caller's to check first)."""
    import redis

    from smtpgate.auth.state_backend import redis_client

    client = redis_client(cfg, timeout=max(cfg.state.timeout, _MIN_WAIT))
    st = cfg.state
    where = f"Redis at {st.redis_url}"
    try:
        client.ping()
    except redis.AuthenticationError as e:
        if st.password_file is None:
            return Finding(True, "state.password_file", f"{where} asks for a password "
                           f"({_text(e)}): put it in state.password_file")
        return Finding(True, "state.password_file", f"{where} refused the password "
                       f"({_text(e)})")
    except redis.ResponseError as e:
        text = _text(e)
        if text.startswith(("NOAUTH", "WRONGPASS")) or "AUTH" in text:
            return Finding(True, "state.password_file", f"{where} refused the login: {text}")
        return Finding(True, "state.redis_url", f"{where} answered PING with an error: {text}")
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        root = _cause(e)
        if isinstance(root, ssl.SSLCertVerificationError):
            return Finding(True, "state.ca_file", f"{where}: its certificate does not "
                           f"verify ({root.verify_message}); state.ca_file names the CA that "
                           "signed it, and redis_url the name in it")
        if isinstance(root, ssl.SSLError):
            return Finding(True, "state.cert_file", f"{where}: the TLS handshake failed "
                           f"({root.reason or root}); a Redis with tls-auth-clients yes wants "
                           "state.cert_file and key_file")
        return Finding(False, "state.redis_url", f"{where} does not answer ({_text(e)})")
    except redis.RedisError as e:
        return Finding(False, "state.redis_url", f"{where}: {e}")
    else:
        return eviction(client, where)
    finally:
        client.close()


#: Policies under which Redis never drops a key on its own to make room.
_KEEPS_KEYS = ("noeviction",)


def eviction(client: redis.Redis, where: str) -> Finding | None:
    """An error when Redis may evict keys (module docstring); a warning when the
    login may not read its memory settings (an ACL without ``INFO``). Also asked
    by a node's heartbeat when Redis answers again (``server/heartbeat.py``)."""
    import redis

    try:
        memory = client.info("memory")
    except redis.exceptions.NoPermissionError as e:
        return Finding(False, "state.redis_url", f"{where}: cannot read its maxmemory-policy "
                       f"({_text(e)}); make sure it is noeviction, or a full Redis drops "
                       "guard blocks and failure counts without a word", outage=False)
    except redis.RedisError as e:
        return Finding(False, "state.redis_url", f"{where} does not answer ({_text(e)})")
    policy = _s(memory.get("maxmemory_policy", ""))
    limit = int(memory.get("maxmemory", 0) or 0)
    if limit == 0 or policy in _KEEPS_KEYS or not policy:
        return None
    return Finding(True, "state.redis_url", f"{where} evicts keys when full (maxmemory "
                   f"{limit}, maxmemory-policy {policy}): it would drop guard blocks, "
                   "lockouts and failure counts without a word; set maxmemory-policy "
                   "noeviction (a full Redis then refuses writes, and logins follow "
                   "state.on_unavailable), or give smtpgate a Redis of its own")


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
