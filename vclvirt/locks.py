"""Redis locks named after the resource they protect (`computer:<host>:<name>`).

A lock lives for a short TTL that its holder keeps renewing (recovery.LeaseKeeper), so a
dead holder's lock frees itself. The owner is a holder, not a reservation: one run of one
generation (`r<reservation>.g<generation>|<worker>|<boot>|<pid>`). Renewing or releasing
checks the whole owner, so a holder that lost the lock cannot renew or delete the lock
its successor took. A newer generation of the same reservation takes the lock over at
once: it holds the reservation's lease, so the older generation's holder has lost it.

Each grant of a fenced lock also issues a fencing token: a number larger than any the
lock issued before (the Redis clock in microseconds, or one more than the last token),
so it keeps growing even if Redis loses its data. The host checks it (node/fence.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from vclvirt.state import keys
from vclvirt.state.owned import DELETE_IF_OWNED, RENEW_IF_OWNED

_TAKE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then
  local rid, gen = string.match(held, '^r(%d+)%.g(%d+)|')
  if ARGV[3] == '' or rid ~= ARGV[3] or tonumber(gen) >= tonumber(ARGV[4]) then
    return {0, held}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if KEYS[2] == '' then return {1, '0'} end
local clock = redis.call('TIME')
local token = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if token <= last then token = last + 1 end
redis.call('SET', KEYS[2], string.format('%.0f', token))
return {1, string.format('%.0f', token)}
"""


@dataclass(frozen=True)
class RunOwner:
    """One run of one generation of a reservation's operation, by one holder process."""

    reservation_id: int
    generation: int
    holder: str

    def __str__(self) -> str:
        return f"r{self.reservation_id}.g{self.generation}|{self.holder}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ResourceLock:
    """An exclusive, renewable lock on one resource; `fenced` locks issue a token."""

    def __init__(
        self,
        client: redis.Redis,
        resource: str,
        owner: RunOwner | str,
        *,
        ttl: float,
        fenced: bool = False,
    ) -> None:
        self.resource = resource
        self.owner = str(owner)
        self._run = owner if isinstance(owner, RunOwner) else None
        self.key = keys.lock(resource)
        self.fence_key = keys.fence(resource) if fenced else ""
        self.ttl_ms = int(ttl * 1000)
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(RENEW_IF_OWNED)
        self._release = client.register_script(DELETE_IF_OWNED)
        self.held_by: str | None = None  # the other owner, after a failed acquire
        self.token: int | None = None  # the fencing token of the last grant

    def acquire(self, wait: float, poll: float = 0.1) -> bool:
        """Take the lock within `wait` seconds; False (and `held_by` set) if it stays busy."""
        run = self._run
        args: list[str | int] = [
            self.owner,
            self.ttl_ms,
            run.reservation_id if run else "",
            run.generation if run else 0,
        ]
        deadline = time.monotonic() + wait
        while True:
            taken, detail = self._take(keys=[self.key, self.fence_key], args=args)
            if int(taken) == 1:
                self.held_by = None
                self.token = int(_text(detail)) if self.fence_key else None
                return True
            self.held_by = _text(detail)
            if time.monotonic() + poll > deadline:
                return False
            time.sleep(poll)

    def renew(self) -> bool:
        """False when the lock is no longer ours (it expired and another took it)."""
        return bool(self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def release(self) -> None:
        """Delete the lock if this owner still holds it; a no-op otherwise."""
        self._release(keys=[self.key], args=[self.owner])
