"""A block in Redis is a member of ``P blocks`` (scored by its end) and a hash
``P b:KIND\\0KEY`` (since, until, reason): two keys, and a hash gone (a key evicted
under memory pressure, deleted by hand) made ``snapshot`` and ``guard list`` skip the
block while ``P blocks`` still held it: a lockout silently lifted. It now blocks
until its end, with a reason saying its record was lost (a real Redis:
tests/peers/redis_server.py)."""

from __future__ import annotations

import time

from smtpgate.auth.guard_state import Block
from smtpgate.auth.redis_client import connect
from smtpgate.auth.redis_guard_state import RedisGuardState
from tests.peers.redis_server import PASSWORD, new_prefix, shared_redis


def test_a_block_whose_record_is_gone_still_blocks_until_its_end() -> None:
    server = shared_redis()
    prefix = new_prefix()
    client = connect(server.url, PASSWORD, 5.0)
    state = RedisGuardState(client, prefix)
    now = time.time()
    try:
        started = state.start_blocks([Block("account", "alice@example.org", now, now + 900,
                                            "5 failures")])
        assert len(started) == 1
        client.delete(prefix + "b:account\0alice@example.org")
        snap = state.snapshot("192.0.2.7", "192.0.2.0/24", "alice@example.org", now + 1, 600)
        assert [(b.kind, b.key, b.until) for b in snap.blocks] == [
            ("account", "alice@example.org", now + 900)]
        assert "record lost" in snap.blocks[0].reason
        listed = state.active_blocks(now + 1)
        assert [(b.key, b.until) for b in listed] == [("alice@example.org", now + 900)]
        # Its end still ends it, and unlock still lifts it.
        assert state.snapshot("192.0.2.7", "192.0.2.0/24", "alice@example.org",
                              now + 901, 600).blocks == ()
        assert state.unlock_account("alice@example.org") == 1
        assert state.active_blocks(now + 1) == []
    finally:
        state.close()
        client.close()
