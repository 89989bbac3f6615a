"""``GuardState`` in Redis: one guard for several nodes (docs/scale-out.md).

Each call is one Lua script, so it is atomic (Redis runs one script at a time)
and one round trip: the common AUTH decision is one ``snapshot``, and a failure
one ``record_failure``, as the interface promises.

Keys, all under the configured prefix ``P`` (binary-safe; names and addresses
are used as they come):

- ``P seq``: the failure counter, making each failure's member unique.
- ``P af:ACCOUNT``: the account's failures that count toward it, a sorted set
  scored by time, members ``id|known|address|subnet``.
- ``P an:ACCOUNT``: time of its last failure from a new address (throttling).
- ``P xf:ADDRESS`` / ``P sf:SUBNET``: the failures from an address / a subnet,
  members ``id|address|account``.
- ``P xs:ADDRESS``: the address's subnet; ``P ap:ACCOUNT`` the failure sets holding
  the account's failures; ``P xa:KEY`` the accounts with failures from an address
  or subnet: what ``unlock_account`` and ``unblock`` need to forget failures.
- ``P pen:ADDRESS``: the penalty (``failures``, ``last``).
- ``P known``: sorted set of ``ACCOUNT\\0ADDRESS`` scored by the last login.
- ``P blocks``: sorted set of ``KIND\\0KEY`` scored by ``until``; ``P b:KIND\\0KEY``
  the block's hash (``since``, ``until``, ``reason``).
- ``P plus``: sorted set of addresses scored by the -PLUS fallback's end.

Failure sets are trimmed to their window on each write and expire (``EXPIREAT``)
a minute after their newest member leaves the window, so nothing grows without
bound; ``known``, ``blocks`` and ``plus`` are trimmed by ``prune``, which the
guard runs periodically (from any node: it is idempotent). Times are stored as
Python writes them (``repr``) and returned as stored, so nothing loses
precision on the way through Lua.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from smtpgate.auth.guard_state import (
    Block,
    FailureCounts,
    GuardStoreError,
    RecordedFailure,
    Snapshot,
    Windows,
)

#: Shared helpers prepended to each script.
_LIB = r"""
local P = ARGV[1]
local LOST = 'block record lost in Redis (evicted or deleted); kept until its end'
local function after(s, n)  -- the text after the n-th '|'
  local i = 0
  for _ = 1, n do
    i = string.find(s, '|', i + 1, true)
    if not i then return nil end
  end
  return string.sub(s, i + 1)
end
local function field(s, n)  -- the n-th '|'-separated field (1-based), not the last
  local rest = s
  for _ = 1, n - 1 do rest = after(rest, 1) end
  local j = string.find(rest, '|', 1, true)
  return j and string.sub(rest, 1, j - 1) or rest
end
local function trim_and_expire(key, cutoff, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if top[2] then redis.call('EXPIREAT', key, math.ceil(tonumber(top[2]) + window + 60)) end
end
"""

_RECORD_FAILURE = _LIB + r"""
local t, ts, addr, sub, acct = tonumber(ARGV[2]), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local known, counts = ARGV[6], ARGV[7] == '1'
local lockout, spray, pen = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local keep = math.max(lockout, spray, 86400)
local id = redis.call('INCR', P .. 'seq')
local exp = math.ceil(t + keep + 60)

local pk = P .. 'pen:' .. addr
local last = redis.call('HGET', pk, 'last')
local n = 1
if last and tonumber(last) > t - pen then n = tonumber(redis.call('HGET', pk, 'failures')) + 1 end
redis.call('HSET', pk, 'failures', n, 'last', ts)
redis.call('EXPIREAT', pk, math.ceil(t + pen + 60))

local member = id .. '|' .. addr .. '|' .. acct
local xf, sf = P .. 'xf:' .. addr, P .. 'sf:' .. sub
redis.call('ZADD', xf, ts, member)
redis.call('ZADD', sf, ts, member)
redis.call('SET', P .. 'xs:' .. addr, sub, 'EXAT', exp)
trim_and_expire(xf, t - spray, spray)
trim_and_expire(sf, t - spray, spray)

local new, kn, sources = 0, 0, 0
if acct ~= '' then
  for _, k in ipairs({xf, sf}) do redis.call('SADD', P .. 'ap:' .. acct, k) end
  redis.call('EXPIREAT', P .. 'ap:' .. acct, exp)
  for _, k in ipairs({addr, sub}) do
    redis.call('SADD', P .. 'xa:' .. k, acct)
    redis.call('EXPIREAT', P .. 'xa:' .. k, exp)
  end
  if known == '0' then
    local an = P .. 'an:' .. acct
    local prev = redis.call('GET', an)
    if not prev or tonumber(prev) < t then redis.call('SET', an, ts, 'EXAT', exp) end
  end
  if counts then
    local af = P .. 'af:' .. acct
    redis.call('ZADD', af, ts, id .. '|' .. known .. '|' .. addr .. '|' .. sub)
    trim_and_expire(af, t - lockout, lockout)
    local seen = {}
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', af, '(' .. (t - lockout), '+inf')) do
      if field(m, 2) == '1' then kn = kn + 1 else
        new = new + 1
        local a = field(m, 3)
        if not seen[a] then seen[a] = true; sources = sources + 1 end
      end
    end
  end
end

local function distinct(key)
  local total, names, seen = 0, 0, {}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, '(' .. (t - spray), '+inf')) do
    total = total + 1
    local a = after(m, 2)
    if a ~= '' and not seen[a] then seen[a] = true; names = names + 1 end
  end
  return total, names
end
local total, names = distinct(xf)
local _, subnet_names = distinct(sf)
return {new, kn, sources, total, names, subnet_names}
"""

_SNAPSHOT = _LIB + r"""
local addr, sub, acct, now, pen = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local blocks = {}
local throttled = false
local wanted = {{'address', addr}, {'subnet', sub}}
if acct ~= '' then
  for _, kind in ipairs({'account', 'account-new', 'throttle'}) do
    table.insert(wanted, {kind, acct})
  end
end
for _, w in ipairs(wanted) do
  local m = w[1] .. '\0' .. w[2]
  local untl = redis.call('ZSCORE', P .. 'blocks', m)
  if untl and tonumber(untl) > now then
    local h = redis.call('HMGET', P .. 'b:' .. m, 'since', 'until', 'reason')
    -- A block whose record is gone (a key evicted, deleted by hand) still blocks
    -- until its end in P blocks: it was silently skipped, a lockout lifted.
    if not h[1] then h = {ARGV[5], untl, LOST} end
    table.insert(blocks, {w[1], w[2], h[1], h[2], h[3]})
    if w[1] == 'throttle' then throttled = true end
  end
end
local known = false
if acct ~= '' then known = redis.call('ZSCORE', P .. 'known', acct .. '\0' .. addr) end
local h = redis.call('HMGET', P .. 'pen:' .. addr, 'failures', 'last')
local penalty = 0
if h[1] and tonumber(h[2]) > now - pen then penalty = tonumber(h[1]) end
local last_new = false
if throttled then last_new = redis.call('GET', P .. 'an:' .. acct) end
return {blocks, known or '', penalty, last_new or ''}
"""

_START_BLOCKS = _LIB + r"""
local started = {}
local i = 2
local n = 0
while ARGV[i] do
  n = n + 1
  local kind, key, since, untl, reason = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local m = kind .. '\0' .. key
  local cur = redis.call('ZSCORE', P .. 'blocks', m)
  if not cur or tonumber(cur) <= tonumber(since) then
    redis.call('ZADD', P .. 'blocks', untl, m)
    redis.call('DEL', P .. 'b:' .. m)
    redis.call('HSET', P .. 'b:' .. m, 'since', since, 'until', untl, 'reason', reason)
    table.insert(started, n)
  end
  i = i + 5
end
return started
"""

_RECORD_SUCCESS = _LIB + r"""
local addr, acct, now, reset = ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
redis.call('ZADD', P .. 'known', 'GT', now, acct .. '\0' .. addr)
if reset then redis.call('DEL', P .. 'pen:' .. addr) end
return 1
"""

_ACTIVE_BLOCKS = _LIB + r"""
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'blocks', '(' .. ARGV[2], '+inf')) do
  local h = redis.call('HMGET', P .. 'b:' .. m, 'since', 'until', 'reason')
  local z = string.find(m, '\0', 1, true)
  if not h[1] then h = {ARGV[2], redis.call('ZSCORE', P .. 'blocks', m), LOST} end
  table.insert(out, {string.sub(m, 1, z - 1), string.sub(m, z + 1), h[1], h[2], h[3]})
end
return out
"""

_UNLOCK_ACCOUNT = _LIB + r"""
local acct = ARGV[2]
local n = 0
for _, kind in ipairs({'account', 'account-new', 'throttle'}) do
  local m = kind .. '\0' .. acct
  n = n + redis.call('ZREM', P .. 'blocks', m)
  redis.call('DEL', P .. 'b:' .. m)
end
for _, k in ipairs(redis.call('SMEMBERS', P .. 'ap:' .. acct)) do
  for _, m in ipairs(redis.call('ZRANGE', k, 0, -1)) do
    if after(m, 2) == acct then redis.call('ZREM', k, m) end
  end
end
redis.call('DEL', P .. 'af:' .. acct, P .. 'an:' .. acct, P .. 'ap:' .. acct)
return n
"""

_UNBLOCK = _LIB + r"""
local key = ARGV[2]
local n = 0
for _, kind in ipairs({'address', 'subnet'}) do
  local m = kind .. '\0' .. key
  n = n + redis.call('ZREM', P .. 'blocks', m)
  redis.call('DEL', P .. 'b:' .. m)
end
-- Failures from it, as an address or as a subnet, wherever they are counted.
for _, acct in ipairs(redis.call('SMEMBERS', P .. 'xa:' .. key)) do
  local af = P .. 'af:' .. acct
  for _, m in ipairs(redis.call('ZRANGE', af, 0, -1)) do
    if field(m, 3) == key or after(m, 3) == key then redis.call('ZREM', af, m) end
  end
end
local sub = redis.call('GET', P .. 'xs:' .. key)
if sub then
  local sf = P .. 'sf:' .. sub
  for _, m in ipairs(redis.call('ZRANGE', sf, 0, -1)) do
    if field(m, 2) == key then redis.call('ZREM', sf, m) end
  end
end
redis.call('DEL', P .. 'xf:' .. key, P .. 'sf:' .. key, P .. 'pen:' .. key, P .. 'xa:' .. key)
return n
"""

_PRUNE = _LIB + r"""
local now, keep, known = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', P .. 'plus', '-inf', '(' .. ARGV[2])
redis.call('ZREMRANGEBYSCORE', P .. 'known', '-inf', '(' .. (now - known))
local cutoff = '(' .. (now - keep)
for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'blocks', '-inf', cutoff)) do
  redis.call('DEL', P .. 'b:' .. m)
end
redis.call('ZREMRANGEBYSCORE', P .. 'blocks', '-inf', cutoff)
return 1
"""


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _block(row: Sequence[bytes]) -> Block:
    kind, key, since, until, reason = (_s(v) for v in row)
    return Block(kind, key, float(since), float(until), reason)


class RedisGuardState:
    """See the module docstring. ``client`` is shared with the sending counters;
    ``prefix`` separates several smtpgate clusters (or tests) on one Redis.

    Every method raises ``GuardStoreError`` when Redis fails or does not answer
    within the client's timeout.
    """

    def __init__(self, client: redis.Redis, prefix: str = "smtpgate:") -> None:
        self._client = client
        self._prefix = prefix
        self._closed = False
        scripts = {
            "record_failure": _RECORD_FAILURE, "snapshot": _SNAPSHOT,
            "start_blocks": _START_BLOCKS, "record_success": _RECORD_SUCCESS,
            "active_blocks": _ACTIVE_BLOCKS, "unlock_account": _UNLOCK_ACCOUNT,
            "unblock": _UNBLOCK, "prune": _PRUNE,
        }
        self._scripts: dict[str, Callable[..., Any]] = {
            name: client.register_script(text) for name, text in scripts.items()
        }

    @contextmanager
    def _errors(self) -> Iterator[None]:
        if self._closed:
            raise GuardStoreError("the guard state (Redis) is closed")
        try:
            yield
        except redis.RedisError as e:
            raise GuardStoreError(f"Redis: {e}") from e

    def _run(self, name: str, *args: object) -> Any:
        with self._errors():
            return self._scripts[name](args=[self._prefix, *(_arg(a) for a in args)])

    def snapshot(
        self, address: str, subnet: str, account: str, now: float, penalty_window: float
    ) -> Snapshot:
        rows, known, penalty, last_new = self._run(
            "snapshot", address, subnet, account, now, penalty_window)
        return Snapshot(
            tuple(_block(r) for r in rows),
            float(known) if known else None,
            int(penalty),
            float(last_new) if last_new else None,
        )

    def record_failure(self, failure: RecordedFailure, windows: Windows) -> FailureCounts:
        f = failure
        counts = self._run(
            "record_failure", f.time, f.address, f.subnet, f.account, int(f.known),
            int(f.counts_account), windows.lockout, windows.spray, windows.penalty)
        return FailureCounts(*(int(c) for c in counts))

    def start_blocks(self, blocks: Sequence[Block]) -> list[Block]:
        if not blocks:
            return []
        flat: list[object] = []
        for b in blocks:
            flat += [b.kind, b.key, b.since, b.until, b.reason]
        started = self._run("start_blocks", *flat)
        return [blocks[int(i) - 1] for i in started]

    def record_success(self, address: str, account: str, now: float, *, reset_penalty: bool) -> None:
        self._run("record_success", address, account, now, int(reset_penalty))

    def active_blocks(self, now: float) -> list[Block]:
        found = [_block(r) for r in self._run("active_blocks", now)]
        return sorted(found, key=lambda b: (b.since, b.kind, b.key))

    def unlock_account(self, account: str) -> int:
        return int(self._run("unlock_account", account))

    def unblock(self, key: str) -> int:
        return int(self._run("unblock", key))

    def forget_addresses(self, account: str) -> int:
        # ZSCAN, not a script over the whole set: every account's known addresses are
        # in one sorted set, which a script would hold Redis for while it walked.
        key = self._prefix + "known"
        prefix = account.encode() + b"\0"
        pattern = _glob_escape(prefix) + b"*"
        gone = 0
        with self._errors():
            batch: list[bytes] = []
            for member, _ in self._client.zscan_iter(key, match=pattern, count=500):
                if isinstance(member, bytes) and member.startswith(prefix):
                    batch.append(member)
                if len(batch) >= 500:
                    gone += int(self._client.zrem(key, *batch))
                    batch = []
            if batch:
                gone += int(self._client.zrem(key, *batch))
        return gone

    def plus_fallback(self, address: str, now: float) -> float | None:
        with self._errors():
            until = self._client.zscore(self._prefix + "plus", address)
        return None if until is None or until <= now else float(until)

    def set_plus_fallback(self, address: str, until: float | None) -> None:
        with self._errors():
            if until is None:
                self._client.zrem(self._prefix + "plus", address)
            else:
                self._client.zadd(self._prefix + "plus", {address: until})

    def prune(self, now: float, keep_seconds: float, known_seconds: float) -> None:
        self._run("prune", now, keep_seconds, known_seconds)

    def close(self) -> None:
        """This instance is done; the client (shared) is closed by its owner."""
        self._closed = True


def _glob_escape(text: bytes) -> bytes:
    """``text`` matched literally by a Redis MATCH pattern (``*?[]\\`` escaped)."""
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", text)


def _arg(value: object) -> str | bytes:
    """Floats as Python writes them (full precision), the rest as text."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value
    return str(value)
