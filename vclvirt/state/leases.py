"""Leases (who runs a reservation's operation now) and worker heartbeats (who is alive).

A lease is a Redis string with a TTL that its holder keeps renewing; it is taken by
`claim`, atomically with the record's generation check, so two workers never run the
same operation at once however many messages for it exist. A holder is
`<worker node name>|<boot id>|<pid>`: enough to tell, on the same worker, a dead pool
process or a previous incarnation of the worker (see recovery.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from vclvirt.state import keys
from vclvirt.state.owned import DELETE_IF_OWNED, RENEW_IF_OWNED
from vclvirt.state.records import now
from vclvirt.state.writer import RecordWriter


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: a process of a worker incarnation."""

    node: str
    boot: str
    pid: int

    def __str__(self) -> str:
        return f"{self.node}|{self.boot}|{self.pid}"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        parts = text.split("|")
        if len(parts) != 3 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]))


@dataclass(frozen=True)
class Claim:
    ok: bool
    reason: str
    holder: str | None = None  # the current holder, when the lease is held by another


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Leases:
    def __init__(self, client: redis.Redis, *, ttl_seconds: float) -> None:
        self.redis = client
        self.ttl_ms = int(ttl_seconds * 1000)
        self._writer = RecordWriter(client)
        self._renew = client.register_script(RENEW_IF_OWNED)
        self._release = client.register_script(DELETE_IF_OWNED)

    def claim(
        self, reservation_id: int, generation: int, holder: Holder, *, take_over: str = ""
    ) -> Claim:
        """Take the lease for this generation of the record's operation; `take_over` names
        a holder known to be dead whose lease may be taken before it expires."""
        answer = self._writer.claim(
            reservation_id, generation, str(holder), self.ttl_ms, now(), take_over=take_over
        )
        taken, reason, *current = answer
        return Claim(int(taken) == 1, _text(reason), _text(current[0]) if current else None)

    def renew(self, reservation_id: int, holder: Holder) -> bool:
        """False when the lease is no longer ours (expired and taken, or deleted)."""
        return bool(self._renew(keys=[keys.lease(reservation_id)], args=[str(holder), self.ttl_ms]))

    def release(self, reservation_id: int, holder: Holder) -> None:
        self._release(keys=[keys.lease(reservation_id)], args=[str(holder)])

    def holder(self, reservation_id: int) -> str | None:
        value = self.redis.get(keys.lease(reservation_id))
        return _text(value) if value is not None else None


class WorkerRegistry:
    """Worker heartbeats per host: a worker is alive while its last beat is recent."""

    def __init__(self, client: redis.Redis, *, ttl_seconds: float) -> None:
        self.redis = client
        self.ttl = ttl_seconds

    def beat(self, node: str, hosts: list[str]) -> None:
        stamp = time.time()
        pipe = self.redis.pipeline()
        for host in hosts:
            pipe.zadd(keys.host_workers(host), {node: stamp})
            pipe.zremrangebyscore(keys.host_workers(host), 0, stamp - 7 * 86400)
        pipe.execute()

    def leave(self, node: str, hosts: list[str]) -> None:
        """A worker shutting down cleanly stops counting as alive at once."""
        pipe = self.redis.pipeline()
        for host in hosts:
            pipe.zrem(keys.host_workers(host), node)
        pipe.execute()

    def live(self, host: str) -> list[str]:
        """Node names of the workers whose last beat is younger than the TTL."""
        members = self.redis.zrangebyscore(keys.host_workers(host), time.time() - self.ttl, "+inf")
        return sorted(_text(m) for m in members)  # type: ignore[arg-type]

    def last_seen(self, host: str) -> float | None:
        """When a worker of the host last beat, if one ever did (within a week)."""
        top = self.redis.zrevrange(keys.host_workers(host), 0, 0, withscores=True)
        return float(top[0][1]) if top else None
