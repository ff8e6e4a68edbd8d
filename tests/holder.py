"""Ends or parks a record the way a worker does: under a claimed lease, through the
fenced writer (state/fence.py). For tests that need a record in a given state."""

from __future__ import annotations

from typing import Any

import redis

from vclvirt.state.fence import FencedRecord, RecordFence
from vclvirt.state.leases import Holder, Leases
from vclvirt.state.records import RecordStore

TEST_HOLDER = Holder("test@holder", "boot", 1)


def claimed(client: redis.Redis, reservation_id: int) -> FencedRecord:
    """Claim the record's lease at its generation; the writer of that claim."""
    record = RecordStore(client).get(reservation_id)
    assert record is not None, f"no record {reservation_id}"
    claim = Leases(client, ttl_seconds=30).claim(reservation_id, record.generation, TEST_HOLDER)
    assert claim.ok, claim
    fence = RecordFence(
        reservation_id, record.host, record.computer, record.generation, str(TEST_HOLDER)
    )
    return FencedRecord(client, fence)


def finish(client: redis.Redis, reservation_id: int, state: str, **details: Any) -> None:
    claimed(client, reservation_id).finish(state, **details)
    Leases(client, ttl_seconds=30).release(reservation_id, TEST_HOLDER)


def wait(client: redis.Redis, reservation_id: int, *args: Any) -> None:
    claimed(client, reservation_id).wait(*args)
    Leases(client, ttl_seconds=30).release(reservation_id, TEST_HOLDER)
