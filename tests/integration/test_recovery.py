"""The recovery loop on a real Redis: what it dispatches again, what it leaves alone, and
when a reservation that no worker can take fails."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from tests import holder
from tests.conftest import make_reservation
from vclvirt.config.settings import Settings
from vclvirt.identity import Identity
from vclvirt.models import parse_reservation
from vclvirt.recovery import (
    Reconciler,
    fail_if_abandoned,
    no_worker,
    queue_keys,
    task_id,
)
from vclvirt.state import keys
from vclvirt.state.leases import Holder, Leases, WorkerRegistry
from vclvirt.state.records import RecordStore, ReservationStatus

HOST = "rec-host"

ME = Identity.client()  # this test process, as a client claims leases


class Published(list[tuple[int, int, bool]]):
    """What the reconciler sent: (reservation, generation, resumed)."""

    def __call__(self, record: ReservationStatus, generation: int, resumed: bool) -> None:
        self.append((record.reservation_id, generation, resumed))


@pytest.fixture
def published() -> Published:
    return Published()


def _reconciler(client: Any, published: Published, **settings: Any) -> Reconciler:
    return Reconciler(
        client, Settings(broker_url="redis://unused", **settings), [HOST], ME.holder(), published
    )


def _begin(client: Any, rid: int) -> int:
    reservation = parse_reservation(make_reservation(rid, f"rec-{rid}", "linux-R-1-v0", host=HOST))
    return RecordStore(client).begin(reservation, "load", ["a", "b"])


def _message(rid: int, generation: int) -> str:
    """A message as kombu's Redis transport keeps it in a queue list."""
    return json.dumps({"body": "", "headers": {"id": task_id(rid, generation)}, "properties": {}})


def test_a_running_record_whose_lease_expired_is_dispatched_again(state_redis, published) -> None:
    """Running, no lease any more (its worker died): the next generation goes out, ahead."""
    generation = _begin(state_redis, 9301)
    Leases(state_redis, ttl_seconds=30).claim(9301, generation, Holder("w@far", "b", 1))
    state_redis.delete(keys.lease(9301))  # expired

    _reconciler(state_redis, published).cycle()

    assert published == [(9301, generation + 1, True)]
    record = RecordStore(state_redis).get(9301)
    assert record is not None and (record.state, record.generation) == ("queued", generation + 1)


def test_a_live_holder_elsewhere_is_left_alone_however_long_it_runs(state_redis, published) -> None:
    """A step that runs for hours keeps its lease renewed: never handed to a second worker."""
    generation = _begin(state_redis, 9302)
    Leases(state_redis, ttl_seconds=30).claim(9302, generation, Holder("w@far", "b", 1))
    reconciler = _reconciler(state_redis, published)
    for _ in range(3):
        reconciler.cycle()
    assert published == []


def test_a_dead_process_on_this_machine_is_replaced_without_waiting(state_redis, published) -> None:
    """A restarted worker resumes its predecessor's work at once (Nova's _init_instance):
    the holder ran on this machine and its process is gone."""
    generation = _begin(state_redis, 9303)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = Holder(ME.holder().node, "old-boot", gone.pid)
    Leases(state_redis, ttl_seconds=30).claim(9303, generation, dead)

    _reconciler(state_redis, published).cycle()

    assert published == [(9303, generation + 1, True)]
    assert state_redis.get(keys.lease(9303)) is None


def test_a_queued_record_whose_message_the_broker_lost_is_sent_again(
    state_redis, published
) -> None:
    """Queued past the grace and not in the host's queue (a broker that lost its last
    writes, or a publisher that died after begin): sent again. One still in the queue
    waits its turn."""
    lost = _begin(state_redis, 9304)
    waiting = _begin(state_redis, 9305)
    state_redis.lpush(queue_keys(HOST)[1], _message(9305, waiting))
    old = time.time() - 31
    for rid in (9304, 9305):
        state_redis.hset(keys.record(rid), "dispatched_at", old)

    _reconciler(state_redis, published).cycle()

    assert published == [(9304, lost + 1, True)]


def test_a_fresh_queued_record_is_not_looked_for_before_the_grace(state_redis, published) -> None:
    """A message just published may not be in the list yet: nothing happens within the grace."""
    _begin(state_redis, 9306)
    _reconciler(state_redis, published).cycle()
    assert published == []


def test_a_retry_is_dispatched_when_it_is_due_not_before(state_redis, published) -> None:
    """A waiting record goes out again once its time has come, exactly once."""
    generation = _begin(state_redis, 9307)
    holder.wait(state_redis, 9307, "retrying", time.time() + 3600, "later")
    reconciler = _reconciler(state_redis, published)
    reconciler.cycle()
    assert published == []
    state_redis.zadd(keys.due(HOST), {"9307": time.time() - 1})
    reconciler.cycle()
    reconciler.cycle()
    assert published == [(9307, generation + 1, True)]


def test_a_reconciler_beats_for_its_hosts(state_redis, published) -> None:
    """Its worker is live for its hosts while it cycles, and not after it leaves."""
    reconciler = _reconciler(state_redis, published)
    reconciler.cycle()
    registry = WorkerRegistry(state_redis, ttl_seconds=30)
    assert registry.live(HOST) == [ME.holder().node]
    reconciler.leave()
    assert registry.live(HOST) == []


def test_without_a_live_worker_a_reservation_waits_then_fails_no_worker(state_redis) -> None:
    """No worker serves the host: the record reads waiting, with since and the deadline
    (deployed: 900 s); past the deadline it fails NO_WORKER (here the deadline is 1 s)."""
    _begin(state_redis, 9309)
    records, registry = RecordStore(state_redis), WorkerRegistry(state_redis, ttl_seconds=30)
    record = records.get(9309)
    assert record is not None
    deployed = no_worker(record, registry, Settings(broker_url="redis://unused"))
    assert deployed is not None
    assert deployed.reason == f"no live worker for host {HOST}"
    assert deployed.fails_at == pytest.approx((record.dispatched_at or 0) + 900)
    assert not fail_if_abandoned(records, registry, Settings(broker_url="x"), record)

    short = Settings(broker_url="redis://unused", no_worker_deadline=1)
    time.sleep(1.1)  # the scenario: nobody came within the deadline
    assert fail_if_abandoned(records, registry, short, record)

    failed = records.get(9309)
    assert failed is not None and failed.state == "failed"
    assert failed.error and failed.error["code"] == "NO_WORKER"
    assert "vclvirt retry" in failed.error["hint"]
    assert records.in_flight(HOST) == []


def test_a_live_worker_means_no_waiting_and_no_failure(state_redis) -> None:
    """While a worker beats for the host, nothing is waiting for a worker."""
    _begin(state_redis, 9310)
    records, registry = RecordStore(state_redis), WorkerRegistry(state_redis, ttl_seconds=30)
    registry.beat("w@m", [HOST])
    record = records.get(9310)
    assert record is not None
    short = Settings(broker_url="redis://unused", no_worker_deadline=0.001)
    assert no_worker(record, registry, short) is None
    assert not fail_if_abandoned(records, registry, short, record)


def test_the_reconciler_of_any_worker_fails_abandoned_reservations(state_redis, published) -> None:
    """A host nobody serves: the reservations there fail at the deadline, failed by a
    worker of another host (one per cycle, whoever gets the lock)."""
    reservation = parse_reservation(make_reservation(9311, "rec-9311", "linux-R-1-v0", host="gone"))
    RecordStore(state_redis).begin(reservation, "load", ["a"])
    state_redis.hset(keys.record(9311), "dispatched_at", time.time() - 5)
    _reconciler(state_redis, published, no_worker_deadline=2).cycle()
    record = RecordStore(state_redis).get(9311)
    assert record is not None and record.state == "failed"
    assert record.error and record.error["code"] == "NO_WORKER"
