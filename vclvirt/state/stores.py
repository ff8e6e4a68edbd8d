"""The three stores every part of vclvirt reads and writes in Redis, built in one place
from one client and the settings: the records, the leases, the worker registry."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from vclvirt.config.settings import Settings
from vclvirt.state.leases import Leases, WorkerRegistry
from vclvirt.state.records import RecordStore

WORKER_LIFE_BEATS = 3  # a worker counts as alive for three heartbeats


@dataclass(frozen=True)
class Stores:
    records: RecordStore
    leases: Leases
    registry: WorkerRegistry

    @classmethod
    def on(cls, client: redis.Redis, settings: Settings) -> Stores:
        return cls(
            records=RecordStore(client, ttl_seconds=settings.status_ttl_days * 86400),
            leases=Leases(client, ttl_seconds=settings.lease_ttl),
            registry=WorkerRegistry(
                client, ttl_seconds=WORKER_LIFE_BEATS * settings.heartbeat_interval
            ),
        )
