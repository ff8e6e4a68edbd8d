"""The reservation record on a real Redis: atomic begin, generations, retry, waiting."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests import holder
from tests.conftest import make_reservation
from vclvirt.errors import InvalidInput, ResourceBusy
from vclvirt.models import parse_reservation
from vclvirt.state import keys
from vclvirt.state.computers import ComputerOwners
from vclvirt.state.records import RecordStore
from vclvirt.state.steps import StepEntry


def _reservation(rid: int = 9001, computer: str = "rec-vm1", **kw: Any) -> Any:
    return parse_reservation(make_reservation(rid, computer, "linux-RecImage-1-v0", **kw))


def test_begin_writes_a_queued_record_with_generation_one(state_redis) -> None:
    """A new record is queued at generation 1, in the host's in-flight set and the index."""
    store = RecordStore(state_redis)
    assert store.begin(_reservation(), "load", ["a", "b"]) == 1
    record = store.get(9001)
    assert record is not None
    assert (record.state, record.generation, record.steps) == ("queued", 1, ["a", "b"])
    assert store.in_flight("node-a") == [9001]
    assert state_redis.zscore(keys.INDEX, "9001") is not None


def test_second_begin_while_in_flight_is_refused_and_changes_nothing(state_redis) -> None:
    """While an operation is in flight, begin raises ResourceBusy; the record is untouched."""
    store = RecordStore(state_redis)
    store.begin(_reservation(), "load", ["a"])
    before = state_redis.hgetall(keys.record(9001))
    with pytest.raises(ResourceBusy):
        store.begin(_reservation(), "power_off", ["power_off"])
    assert state_redis.hgetall(keys.record(9001)) == before


@pytest.mark.parametrize("earlier", [False, True], ids=["new", "after-an-ended-operation"])
def test_twelve_concurrent_begins_make_exactly_one_operation(state_redis, earlier) -> None:
    """12 threads begin the same reservation at once: exactly one wins (a scheduler
    retrying its call never gets two operations), for a new record as for one whose
    earlier operation has ended."""
    store = RecordStore(state_redis)
    if earlier:
        store.begin(_reservation(), "power_on", ["power_on"])
        holder.finish(state_redis, 9001, "succeeded")
    barrier = threading.Barrier(12)
    won: list[int] = []
    refused: list[str] = []

    def begin() -> None:
        barrier.wait()
        try:
            won.append(store.begin(_reservation(), "load", ["a"]))
        except ResourceBusy as error:
            refused.append(error.code)

    threads = [threading.Thread(target=begin) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert won == [2 if earlier else 1]
    assert refused == ["RESOURCE_BUSY"] * 11


def test_begin_after_the_end_keeps_history_and_advances_the_generation(state_redis) -> None:
    """An ended operation becomes one line of history; the next one has generation 2."""
    store = RecordStore(state_redis)
    store.begin(_reservation(), "load", ["a"])
    holder.finish(state_redis, 9001, "failed", step="a", error={"code": "X"})
    assert store.begin(_reservation(), "power_on", ["power_on"]) == 2
    record = store.get(9001)
    assert record is not None and record.operation == "power_on"
    assert [(h["operation"], h["state"], h["error_code"]) for h in record.history] == [
        ("load", "failed", "X")
    ]


def test_guest_host_key_outlives_operations_but_not_a_new_load(state_redis) -> None:
    """The pinned guest key (a key of its own, beside the record) stays for later
    operations of the reservation and expires with the record; a new load (a new guest)
    starts without it."""
    store = RecordStore(state_redis, ttl_seconds=500)
    store.begin(_reservation(), "load", ["a"])
    pin = keys.guest_host_key(9001)
    state_redis.set(pin, "ssh-ed25519 AAAA", ex=5)
    holder.finish(state_redis, 9001, "succeeded")
    store.begin(_reservation(), "power_off", ["power_off"])
    assert state_redis.get(pin) == b"ssh-ed25519 AAAA"
    assert 490 < state_redis.ttl(pin) <= 500  # as long as the record's
    assert b"guest_host_key" not in state_redis.hkeys(keys.record(9001))
    holder.finish(state_redis, 9001, "failed", step="power_off", error={"code": "X"})
    state_redis.expire(pin, 5)
    store.restart_from(9001, "power_off")
    assert 490 < state_redis.ttl(pin) <= 500
    holder.finish(state_redis, 9001, "succeeded")
    store.begin(_reservation(), "load", ["a"])
    assert state_redis.get(pin) is None


def test_only_loads_and_captures_take_the_computer(state_redis) -> None:
    """Ownership moves with a load (owns_computer), not with a power operation."""
    store, owners = RecordStore(state_redis), ComputerOwners(state_redis)
    store.begin(_reservation(9001), "load", ["a"], owns_computer=True)
    store.begin(_reservation(9002), "power_off", ["power_off"])
    assert owners.owner_of("node-a", "rec-vm1") == 9001
    store.begin(_reservation(9003), "load", ["a"], owns_computer=True)
    assert owners.owner_of("node-a", "rec-vm1") == 9003


def test_restart_from_runs_a_failed_record_again_from_a_step(state_redis) -> None:
    """A failed record restarts at the step: later step records cleared, earlier kept."""
    store = RecordStore(state_redis)
    store.begin(_reservation(), "load", ["a", "b", "c"])
    writes = holder.claimed(state_redis, 9001)
    for name in ("a", "b"):
        StepEntry(writes, name, {}).succeeded({"done": name})
    StepEntry(writes, "c", {}).failed({"code": "X"})
    writes.finish("failed", step="c", error={"code": "X"})

    generation = store.restart_from(9001, "b")

    record = store.get(9001)
    assert record is not None and generation == record.generation == 2
    assert (record.state, record.failed_step, record.error) == ("queued", None, None)
    assert list(record.step_records) == ["a"]
    assert record.next_step() == "b"
    assert store.in_flight("node-a") == [9001]


def test_restart_from_refuses_records_that_did_not_fail(state_redis) -> None:
    """Running: ResourceBusy (409); succeeded: InvalidInput (nothing to retry)."""
    store = RecordStore(state_redis)
    store.begin(_reservation(), "load", ["a"])
    with pytest.raises(ResourceBusy):
        store.restart_from(9001, "a")
    holder.finish(state_redis, 9001, "succeeded")
    with pytest.raises(InvalidInput):
        store.restart_from(9001, "a")


def test_redispatch_is_a_compare_and_set_on_the_generation(state_redis) -> None:
    """Only the generation looked at is dispatched again, once; an ended record never."""
    store = RecordStore(state_redis)
    store.begin(_reservation(), "load", ["a"])
    assert store.redispatch(9001, 1, "test") == 2
    assert store.redispatch(9001, 1, "test") is None  # someone got there first
    assert store.redispatch(9001, 2, "test") == 3
    holder.finish(state_redis, 9001, "succeeded")
    assert store.redispatch(9001, 3, "test") is None


def test_redispatch_leaves_a_live_holders_lease_alone(state_redis) -> None:
    """A lease held by someone other than the named dead holder blocks the redispatch."""
    store = RecordStore(state_redis)
    store.begin(_reservation(), "load", ["a"])
    state_redis.set(keys.lease(9001), "w@m|b|1")
    assert store.redispatch(9001, 1, "test") is None
    assert store.redispatch(9001, 1, "test", dead_holder="w@m|b|1") == 2
    assert state_redis.get(keys.lease(9001)) is None


def test_wait_records_why_and_when_in_the_hosts_due_set(state_redis) -> None:
    """A waiting record says why and until when; the host's due set holds it."""
    store = RecordStore(state_redis)
    store.begin(_reservation(), "load", ["a"])
    holder.wait(state_redis, 9001, "retrying", 1234.5, "step a failed", 3)
    record = store.get(9001)
    assert record is not None and record.state == "retrying"
    assert record.waiting == {"reason": "step a failed", "until": 1234.5}
    assert record.waits == 3
    assert state_redis.zscore(keys.due("node-a"), "9001") == 1234.5
    assert store.redispatch(9001, 1, "due") == 2  # what recovery does when it is due
    holder.finish(state_redis, 9001, "failed")
    assert state_redis.zscore(keys.due("node-a"), "9001") is None
    assert store.in_flight("node-a") == []
