"""Per-host concurrency, counted across every worker that serves the host.

A host's `max_concurrent_loads` is a leased semaphore in Redis: a sorted set of the runs
holding a slot, each scored with the time its lease on the slot expires (Redis's own
clock). A run renews its slot with its lease (recovery.LeaseKeeper); a run that dies or
pauses loses it when the lease would. So a second worker started for a host by mistake,
or both workers of a rolling restart, never run more operations on it than its limit.
"""

from __future__ import annotations

import redis

from vclvirt.state import keys

_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""
_TAKE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)
_RENEW = (
    _NOW_MS
    + """
local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expires or tonumber(expires) <= now then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)


class HostSlot:
    """One run's claim on one of the host's operation slots."""

    def __init__(
        self, client: redis.Redis, host: str, owner: str, *, limit: int, ttl: float
    ) -> None:
        self.key = keys.host_slots(host)
        self.redis = client
        self.owner = owner
        self.limit = limit
        self.ttl_ms = int(ttl * 1000)
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)

    def acquire(self) -> bool:
        """Take a slot now if the host has one free."""
        return bool(self._take(keys=[self.key], args=[self.owner, self.limit, self.ttl_ms]))

    def holders(self) -> list[str]:
        """Who holds the host's slots (expired ones included until the next take)."""
        return sorted(
            m.decode() if isinstance(m, bytes) else str(m)
            for m in self.redis.zrange(self.key, 0, -1)
        )

    def renew(self) -> bool:
        """False when the slot expired (this run paused or lost the broker too long)."""
        return bool(self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def release(self) -> None:
        self.redis.zrem(self.key, self.owner)
