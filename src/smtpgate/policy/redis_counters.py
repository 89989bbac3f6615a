"""``RateCounters`` in Redis: one hourly limit for several nodes (docs/scale-out.md).

Per key ``K`` (``acct:NAME``, ``app:ID``), under the configured prefix ``P``:
``P rate:K`` is a hash with fields ``m:BUCKET`` and ``r:BUCKET`` (messages and
recipients), ``P rateb:K`` a sorted set of the buckets present. ``add_usage`` is
one Lua script for all keys (``HINCRBY``; buckets more than ``KEEP_BUCKETS``
older than the one added are deleted; the keys expire after the newest bucket's
keep time), ``usage`` one script that sums the buckets of the window, ``add_within`` one
that does both, adding only if no limit would be passed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from smtpgate.policy.rate_counters import BUCKET_SECONDS, KEEP_BUCKETS, RateCountersError

# What the scripts share, as Lua functions each script starts with: a key's
# hash of counts by bucket (``rate:NAME``) and the sorted set of its buckets
# (``rateb:NAME``), both kept ``keep`` buckets past the newest.
_FUNCTIONS = r"""
local function bump(h, z, bucket, m, r, keep, secs)
  redis.call('HINCRBY', h, 'm:' .. bucket, m)
  redis.call('HINCRBY', h, 'r:' .. bucket, r)
  redis.call('ZADD', z, bucket, bucket)
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. (bucket - keep))) do
    redis.call('HDEL', h, 'm:' .. old, 'r:' .. old)
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. (bucket - keep))
  local top = tonumber(redis.call('ZRANGE', z, -1, -1)[1])
  local at = (top + keep + 1) * secs
  redis.call('EXPIREAT', h, at)
  redis.call('EXPIREAT', z, at)
end
local function sums(h, z, since)
  local m, r = 0, 0
  for _, b in ipairs(redis.call('ZRANGEBYSCORE', z, since, '+inf')) do
    local v = redis.call('HMGET', h, 'm:' .. b, 'r:' .. b)
    m = m + (tonumber(v[1]) or 0)
    r = r + (tonumber(v[2]) or 0)
  end
  return m, r
end
"""

_ADD = _FUNCTIONS + r"""
local P, bucket, m, r = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local keep, secs = tonumber(ARGV[5]), tonumber(ARGV[6])
for i = 7, #ARGV do
  bump(P .. 'rate:' .. ARGV[i], P .. 'rateb:' .. ARGV[i], bucket, m, r, keep, secs)
end
return 1
"""

_USAGE = _FUNCTIONS + r"""
local P, since = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
  local m, r = sums(P .. 'rate:' .. ARGV[i], P .. 'rateb:' .. ARGV[i], since)
  table.insert(out, m)
  table.insert(out, r)
end
return out
"""


# add_within: the sums of _USAGE, the test of ``rate_counters.over_limit``, then
# the adds of _ADD, in one script (Redis runs a script alone: nothing in between).
# ARGV: P, bucket, m, r, keep, secs, since, then per key: name, max_m, max_r.
_ADD_WITHIN = _FUNCTIONS + r"""
local P, bucket, m, r = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local keep, secs, since = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local used, over = {}, false
for i = 8, #ARGV, 3 do
  local k, max_m, max_r = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local um, ur = sums(P .. 'rate:' .. k, P .. 'rateb:' .. k, since)
  table.insert(used, um)
  table.insert(used, ur)
  if (max_m > 0 and m > 0 and um + m > max_m) or (max_r > 0 and r > 0 and ur + r > max_r) then
    over = true
  end
end
if over then return used end
for i = 8, #ARGV, 3 do
  bump(P .. 'rate:' .. ARGV[i], P .. 'rateb:' .. ARGV[i], bucket, m, r, keep, secs)
end
return {}
"""


class RedisRateCounters:
    """See the module docstring; every method raises ``RateCountersError`` when
    Redis fails or does not answer within the client's timeout."""

    def __init__(self, client: redis.Redis, prefix: str = "smtpgate:") -> None:
        self._prefix = prefix
        self._closed = False
        self._add: Callable[..., Any] = client.register_script(_ADD)
        self._usage: Callable[..., Any] = client.register_script(_USAGE)
        self._add_within: Callable[..., Any] = client.register_script(_ADD_WITHIN)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        if self._closed:
            raise RateCountersError("the sending counters (Redis) are closed")
        try:
            yield
        except redis.RedisError as e:
            raise RateCountersError(f"Redis: {e}") from e

    def add_usage(self, keys: Sequence[str], bucket: int, messages: int, recipients: int) -> None:
        if not keys:
            return
        with self._errors():
            self._add(args=[self._prefix, bucket, messages, recipients, KEEP_BUCKETS,
                            BUCKET_SECONDS, *keys])

    def usage(self, keys: Sequence[str], since_bucket: int) -> dict[str, tuple[int, int]]:
        if not keys:
            return {}
        with self._errors():
            sums = self._usage(args=[self._prefix, since_bucket, *keys])
        return {k: (int(sums[2 * i]), int(sums[2 * i + 1])) for i, k in enumerate(keys)}

    def add_within(
        self, limits: Mapping[str, tuple[int, int]], bucket: int, since_bucket: int,
        messages: int, recipients: int,
    ) -> dict[str, tuple[int, int]] | None:
        keys = list(limits)
        if not keys:
            return None
        per_key = [x for k in keys for x in (k, limits[k][0], limits[k][1])]
        with self._errors():
            sums = self._add_within(args=[self._prefix, bucket, messages, recipients,
                                          KEEP_BUCKETS, BUCKET_SECONDS, since_bucket, *per_key])
        if not sums:
            return None
        return {k: (int(sums[2 * i]), int(sums[2 * i + 1])) for i, k in enumerate(keys)}

    def close(self) -> None:
        self._closed = True
