"""Redis locks named after the resource they protect (`computer:<host>:<name>`).

A lock lives for a short TTL that its holder keeps renewing (recovery.LeaseKeeper), so a
dead holder's lock frees itself. The owner is the reservation, not the process: a
reservation whose operation is resumed elsewhere takes over its own lock at once (its
lease already guarantees that only one process runs it).
"""

from __future__ import annotations

import time

import redis

from vclvirt.state import keys

_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ''
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ResourceLock:
    """An exclusive, renewable lock on one resource."""

    def __init__(self, client: redis.Redis, resource: str, owner: str, *, ttl: float) -> None:
        self.resource = resource
        self.owner = owner
        self.key = keys.lock(resource)
        self.ttl_ms = int(ttl * 1000)
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self.held_by: str | None = None  # the other owner, after a failed acquire

    def acquire(self, wait: float, poll: float = 0.1) -> bool:
        """Take the lock within `wait` seconds; False (and `held_by` set) if it stays busy."""
        deadline = time.monotonic() + wait
        while True:
            other = self._take(keys=[self.key], args=[self.owner, self.ttl_ms])
            if not other:
                self.held_by = None
                return True
            self.held_by = other.decode() if isinstance(other, bytes) else str(other)
            if time.monotonic() + poll > deadline:
                return False
            time.sleep(poll)

    def renew(self) -> bool:
        """False when the lock is no longer ours (it expired and another took it)."""
        return bool(self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.owner])
