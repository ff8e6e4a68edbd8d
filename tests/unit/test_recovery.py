"""Recovery (vclvirt/recovery.py) against the unit tier's doubles: the reconciler resumes
what has no live work behind it and leaves alone what has; the lease keeper stops a run
that lost its lease or its computer. Unit twins of tests/integration's recovery tests
and tests/e2e's worker-kill tests, which prove the same with real workers and Redis."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from kombu.transport.redis import Channel

from tests.unit._runs import HOST, SETTINGS, RecoveryClock, ToyWorld, toy_reservation
from vclvirt.cancellation import Cancelled
from vclvirt.config.settings import Settings
from vclvirt.errors import LeaseLost, Superseded
from vclvirt.locks import ResourceLock
from vclvirt.operation import StepContext
from vclvirt.recovery import (
    LeaseKeeper,
    Reconciler,
    Waiting,
    fail_if_abandoned,
    holder_is_dead,
    no_worker,
    queue_keys,
    queued_task_ids,
    task_id,
)
from vclvirt.state import keys
from vclvirt.state.computers import ComputerOwners
from vclvirt.state.leases import Holder, Leases
from vclvirt.workers.routing import host_queue


class WorkerKilled(BaseException):
    """What a killed worker process leaves: the run stops mid-step, nothing is caught."""


def crashing_once(ctx: StepContext) -> dict[str, Any]:
    if ctx.attempts("second") == 1:
        raise WorkerKilled
    return {"resumed": True}


def ran(steps: list[str]) -> Any:
    def body(ctx: StepContext) -> dict[str, Any]:
        steps.append("first")
        return {}

    return body


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_recovery_resumes_an_orphaned_run_at_the_step_that_was_interrupted(world: ToyWorld):
    """The worker dies in step two and its lease lapses: the reconciler dispatches the
    record again, and the next run resumes at step two (counted as interrupted) without
    running step one again."""
    first: list[str] = []
    op = world.operation("toy", {"first": ran(first), "second": crashing_once})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    with pytest.raises(WorkerKilled):
        world.runner.run(rid, generation)
    world.redis.delete(keys.lease(rid))  # its TTL ran out
    assert world.record().state == "running"

    world.reconciler().recover(HOST)

    assert world.published == [(rid, generation + 1, True)]
    assert world.runner.run(rid, generation + 1)["state"] == "succeeded"
    record = world.record()
    assert record.step_records["second"]["interrupted"] == 1
    assert record.step_records["second"]["result"] == {"resumed": True}
    assert first == ["first"]


def test_a_dead_holder_on_this_machine_is_recovered_before_its_lease_expires(world: ToyWorld):
    """The lease is still there, but its holder was a process of this machine that no
    longer exists: dispatched again at once, naming the dead holder."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    me = world.identity.holder()
    dead = Holder(me.node, me.boot, dead_pid())
    assert world.runner.leases.claim(rid, generation, dead).ok

    world.reconciler().recover(HOST)

    assert world.published == [(rid, generation + 1, True)]
    assert world.record().state == "queued"


def test_a_run_whose_holder_is_alive_is_left_alone(world: ToyWorld):
    """A live holder on this machine (here: a process of the test's own) keeps its run
    however long its step takes: nothing is dispatched again, the record untouched, and
    the holder is only looked at, never signalled."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    me = world.identity.holder()
    # A child that any signal ends (one started under nohup would ignore SIGHUP), ready
    # once it says so.
    child = (
        "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
        "print('ready', flush=True); time.sleep(60)"
    )
    with subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        try:
            alive = Holder(me.node, me.boot, process.pid)
            assert world.runner.leases.claim(rid, generation, alive).ok
            before = world.redis.hgetall(keys.record(rid))

            world.reconciler().recover(HOST)

            assert world.published == []
            assert world.redis.hgetall(keys.record(rid)) == before
            with pytest.raises(subprocess.TimeoutExpired):  # a signal lands a moment later
                process.wait(timeout=0.3)
        finally:
            process.kill()


def test_recovery_sends_an_operation_again_only_once(world: ToyWorld):
    """Two reconcilers see the same orphan: the re-dispatch is a compare-and-set on the
    generation, so only the first sends it again."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    assert world.records.redispatch(rid, generation, "first reconciler") == generation + 1
    assert world.records.redispatch(rid, generation, "second reconciler") is None
    assert world.record().generation == generation + 1


def test_a_queued_record_whose_message_was_lost_is_dispatched_again(world: ToyWorld):
    """Queued past the grace, and its message is in none of the host's queues: sent again."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    patient = SETTINGS.model_copy(update={"lost_message_grace": 0.01})
    time.sleep(0.02)

    world.reconciler(patient).recover(HOST)

    assert world.published == [(rid, generation + 1, True)]
    assert world.redis.hget(keys.record(rid), "requeued") == b"message lost by the broker"


def test_a_host_without_a_live_worker_fails_its_reservations_at_the_deadline(world: ToyWorld):
    """No worker serves the host past no_worker_deadline: the reconciler of any worker
    fails its records NO_WORKER, and ends nothing a worker holds."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid, _ = toy_reservation().reservation_id, world.begin(op)
    strict = SETTINGS.model_copy(update={"no_worker_deadline": 0.01})
    time.sleep(0.02)
    reconciler = world.reconciler(strict)
    reconciler.hosts = ["another-host"]  # this worker serves another host only

    reconciler.fail_abandoned()

    record = world.record(rid)
    assert record.state == "failed"
    assert record.error is not None and record.error["code"] == "NO_WORKER"


def keeper(world: ToyWorld, rid: int, *, watch: bool) -> LeaseKeeper:
    return LeaseKeeper(
        Leases(world.redis, ttl_seconds=SETTINGS.lease_ttl),
        ComputerOwners(world.redis),
        rid,
        world.identity.holder(),
        ttl=SETTINGS.lease_ttl,
        watch_owner=(HOST, "unit-vm1") if watch else None,
    )


def cancelled_reason(kept: LeaseKeeper, within: float) -> Exception | None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            kept.token.check()
        except Cancelled as cancelled:
            return cancelled.reason
        time.sleep(0.05)
    return None


def test_the_lease_keeper_renews_the_lease_while_the_run_holds_it(world: ToyWorld):
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    assert world.runner.leases.claim(rid, generation, world.identity.holder()).ok
    with keeper(world, rid, watch=False) as kept:
        assert cancelled_reason(kept, within=2.5) is None  # past its first renewal
        assert world.redis.get(keys.lease(rid)) == str(world.identity.holder()).encode()
        assert world.redis.pttl(keys.lease(rid)) > 1000  # renewed: unrenewed, 500 ms were left
    assert not world.redis.exists(keys.lease(rid))  # released at the end


def test_the_lease_keeper_cancels_a_run_whose_lease_was_taken(world: ToyWorld):
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    assert world.runner.leases.claim(rid, generation, world.identity.holder()).ok
    with keeper(world, rid, watch=False) as kept:
        world.redis.set(keys.lease(rid), "node-b|boot|1")
        assert isinstance(cancelled_reason(kept, within=SETTINGS.lease_ttl), LeaseLost)
    assert world.redis.get(keys.lease(rid)) == b"node-b|boot|1"  # the new holder's


def test_the_lease_keeper_cancels_a_run_whose_computer_a_newer_reservation_owns(
    world: ToyWorld,
):
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    assert world.runner.leases.claim(rid, generation, world.identity.holder()).ok
    with keeper(world, rid, watch=True) as kept:
        kept.check()  # still ours
        world.redis.set(keys.computer_owner(HOST, "unit-vm1"), 9999)
        with pytest.raises(Cancelled) as stopped:
            kept.check()
    assert isinstance(stopped.value.reason, Superseded)


# -- the reconciler's decisions, one by one (killing `make mutation`'s survivors) ----------


def queued_message(client: Any, key: str, rid: int, generation: int) -> None:
    """A message as kombu leaves it in a host's queue list (only its id is read)."""
    client.lpush(key, json.dumps({"headers": {"id": task_id(rid, generation)}, "body": "…"}))


@pytest.mark.parametrize("step", range(len(queue_keys(HOST))))
def test_a_queued_record_whose_message_waits_in_any_priority_list_is_left_alone(
    world: ToyWorld, step: int
):
    """The message is there (in whichever of kombu's priority lists, behind other
    messages and a malformed one): the record is not dispatched again."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    key = queue_keys(HOST)[step]
    queued_message(world.redis, key, rid, generation)  # the oldest: at the list's end
    world.redis.lpush(key, b"not json", json.dumps({"headers": {}}))
    queued_message(world.redis, key, 7, 1)
    patient = SETTINGS.model_copy(update={"lost_message_grace": 0.01})
    time.sleep(0.02)

    world.reconciler(patient).recover(HOST)

    assert world.published == []
    assert queued_task_ids(world.redis, HOST) == {task_id(rid, generation), task_id(7, 1)}


def test_queue_keys_are_kombus_lists_for_that_host():
    """The first is the queue's own name; the others carry kombu's separator and step."""
    found = queue_keys("h1")
    assert found[0] == host_queue("h1")
    assert found[1:] == [f"host.h1{Channel.sep}{s}" for s in Channel.priority_steps[1:]]
    assert len(found) == len(Channel.priority_steps) > 1


def test_a_record_is_looked_for_in_the_broker_only_past_the_grace_and_once_per_grace(
    world: ToyWorld,
):
    """Younger than lost_message_grace: not looked for. From the grace on: looked for,
    then not again on this host until the grace has passed once more."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    world.begin(op)
    dispatched = world.record().dispatched_at
    assert dispatched is not None
    clock = RecoveryClock(world.monkeypatch, dispatched + 29)  # whole seconds: exact sums
    reconciler = world.reconciler(SETTINGS.model_copy(update={"lost_message_grace": 30}))
    scans: list[str] = []
    real = queued_task_ids
    world.monkeypatch.setattr(
        "vclvirt.recovery.queued_task_ids", lambda c, h: scans.append(h) or real(c, h)
    )
    queued_message(world.redis, queue_keys(HOST)[0], toy_reservation().reservation_id, 1)
    reconciler.recover(HOST)
    assert scans == []  # younger than the grace
    clock.advance(1)  # exactly the grace
    reconciler.recover(HOST)
    clock.advance(29)
    reconciler.recover(HOST)
    assert scans == [HOST]  # once per grace period
    clock.advance(1)
    reconciler.recover(HOST)
    assert scans == [HOST, HOST]
    assert world.published == []


@pytest.mark.parametrize(
    ("fails_in", "abandoned"), [(None, False), (60.0, False), (0.0, True), (-1.0, True)]
)
def test_waiting_reads_abandoned_from_the_deadline_on(
    world: ToyWorld, fails_in: float | None, abandoned: bool
):
    """Past (or at) fails_at the record reads as abandoned; before it, or without a
    deadline, it does not."""
    at = 1000.0
    world.monkeypatch.setattr("vclvirt.recovery.now", lambda: at)
    fails_at = None if fails_in is None else at + fails_in
    waiting = Waiting("no live worker for host h", 900.0, fails_at)
    assert waiting.to_dict() == {
        "reason": "no live worker for host h",
        "since": 900.0,
        "fails_at": fails_at,
        "abandoned": abandoned,
    }


def test_a_cycle_beats_for_every_host_and_looks_at_each(world: ToyWorld):
    """A cycle says this worker is alive for each of its hosts, dispatches what is due
    there and recovers what lost its worker; leave() takes the worker out at once."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid = toy_reservation().reservation_id
    world.begin(op)
    reconciler = world.reconciler()
    reconciler.hosts = [HOST, "other-host"]
    looked: list[tuple[str, str]] = []
    world.monkeypatch.setattr(reconciler, "dispatch_due", lambda h: looked.append(("due", h)))
    real_recover = reconciler.recover
    world.monkeypatch.setattr(
        reconciler, "recover", lambda h: looked.append(("recover", h)) or real_recover(h)
    )
    world.redis.delete(keys.lease(rid))

    reconciler.cycle()

    node = world.identity.holder().node
    assert reconciler.registry.live(HOST) == [node] == reconciler.registry.live("other-host")
    assert looked == [
        ("due", HOST),
        ("recover", HOST),
        ("due", "other-host"),
        ("recover", "other-host"),
    ]
    reconciler.leave()
    assert reconciler.registry.live(HOST) == [] == reconciler.registry.live("other-host")


def test_a_failing_cycle_is_logged_and_the_loop_goes_on(world: ToyWorld, logged):
    """The broker away during a cycle: reconcile_failed with the error, and the next
    cycle runs (the loop ends only when told to stop)."""
    reconciler = world.reconciler(SETTINGS.model_copy(update={"reconcile_interval": 0.01}))
    stop = threading.Event()
    calls: list[int] = []

    def cycle() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("broker away")
        stop.set()

    world.monkeypatch.setattr(reconciler, "cycle", cycle)
    with logged() as logs:
        reconciler.run(stop)
    assert len(calls) == 2
    assert {"event": "reconcile_failed", "error": "broker away", "log_level": "warning"} in logs


@pytest.mark.parametrize(
    ("mine", "theirs", "dead"),
    [
        ("celery@m1", "other@m1", True),  # another worker process of this machine
        ("celery@m1", "other@m2", False),  # another machine: its pids say nothing here
        ("celery@m1", "a@b@m1", True),  # the machine is what follows the last @
        ("m1", "other@m1", True),
        ("celery@m1", "m1", True),
    ],
)
def test_a_holder_is_dead_only_when_it_ran_on_this_machine(mine: str, theirs: str, dead: bool):
    me = Holder(mine, "boot", os.getpid())
    assert holder_is_dead(str(Holder(theirs, "boot", dead_pid())), me) is dead


def test_a_reservation_waits_for_a_worker_from_its_dispatch_or_the_last_heartbeat(
    world: ToyWorld,
):
    """Alive while the last heartbeat is at most three heartbeats old (the boundary
    included); then waiting since the later of its dispatch and that heartbeat, failing
    no_worker_deadline after it. An ended record waits for nothing."""
    world.begin(world.operation("toy", {"only": lambda ctx: {}}))
    record = world.record()
    assert record.dispatched_at is not None
    at = record.dispatched_at + 100.0
    world.monkeypatch.setattr("vclvirt.recovery.now", lambda: at)
    settings = SETTINGS.model_copy(update={"heartbeat_interval": 10.0, "no_worker_deadline": 60})
    assert no_worker(record, at - 30.0, settings) is None  # exactly three beats old
    late = no_worker(record, at - 30.5, settings)
    assert late == Waiting(f"no live worker for host {HOST}", at - 30.5, at + 29.5)
    early = no_worker(record, record.dispatched_at - 5, settings)
    assert early == Waiting(
        f"no live worker for host {HOST}", record.dispatched_at, record.dispatched_at + 60
    )
    never = no_worker(record, None, settings)
    assert never is not None and (never.since, never.fails_at) == (
        record.dispatched_at,
        record.dispatched_at + 60,
    )
    undispatched = dataclasses.replace(record, dispatched_at=None)
    assert no_worker(undispatched, None, settings) == Waiting(
        f"no live worker for host {HOST}", 0.0, 60.0
    )
    ended = dataclasses.replace(record, state="succeeded")
    assert ended.finished and no_worker(ended, None, settings) is None


def test_a_record_is_abandoned_at_its_deadline_exactly_and_says_so(world: ToyWorld, logged):
    """Before fails_at nothing is written; at it the record fails NO_WORKER at the step it
    had reached, the error naming host, reservation, deadline and since when (UTC), and
    the log says so. Once failed, it is not failed again."""
    op = world.operation("toy", {"first": lambda ctx: {}, "second": lambda ctx: {}})
    rid = toy_reservation().reservation_id
    world.begin(op)
    record = world.record()
    since = 1_000_000.0  # 1970-01-12 13:46:40 UTC
    record = dataclasses.replace(record, dispatched_at=since)
    settings = SETTINGS.model_copy(update={"no_worker_deadline": 60})
    clock = [since + 59.9]
    world.monkeypatch.setattr("vclvirt.recovery.now", lambda: clock[0])
    assert fail_if_abandoned(world.records, None, settings, record) is False
    assert world.record().state == "queued"

    clock[0] = since + 60
    with logged() as logs:
        assert fail_if_abandoned(world.records, None, settings, record) is True
    failed = world.record()
    assert (failed.state, failed.failed_step) == ("failed", "first")
    assert failed.error is not None
    assert failed.error["code"] == "NO_WORKER"
    assert (failed.error["host"], failed.error["reservation_id"]) == (HOST, rid)
    assert failed.error["message"] == (
        f"no live worker served host {HOST} for 60s (waiting since 1970-01-12 13:46:40 UTC)"
    )
    assert world.redis.hget(keys.record(rid), "requeued") == b"no live worker"
    assert {
        "event": "reservation_abandoned",
        "reservation_id": rid,
        "code": "NO_WORKER",
        "log_level": "error",
    } in logs
    assert fail_if_abandoned(world.records, None, settings, world.record()) is False


def test_only_hosts_without_a_live_worker_have_their_records_failed(world: ToyWorld):
    """Two hosts past the deadline: the one with a live worker keeps its record, the other
    fails its own; an ended record is dropped from the in-flight index; the run takes the
    cycle's lock at once, in this worker's name, and another worker skips the cycle."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    live_host, dead_host = "a-live-host", HOST
    kept = toy_reservation(computer="unit-vm2", computer_id=32, host=live_host)
    lost = toy_reservation()
    ended = toy_reservation(computer="unit-vm3", computer_id=33)
    for reservation in (kept, lost, ended):
        world.begin(op, reservation)
    world.redis.hset(keys.record(ended.reservation_id), "state", "succeeded")
    strict = SETTINGS.model_copy(update={"no_worker_deadline": 0.01})
    time.sleep(0.02)
    other_worker = Reconciler(world.redis, strict, [live_host], Holder("b@m2", "x", 1), print)
    other_worker.registry.beat("b@m2", [live_host])
    reconciler = world.reconciler(strict)

    waits: list[float] = []
    real_acquire = ResourceLock.acquire
    world.monkeypatch.setattr(
        ResourceLock, "acquire", lambda lock, wait: waits.append(wait) or real_acquire(lock, wait)
    )
    other_worker.fail_abandoned()  # takes the cycle's lock
    assert world.redis.get(keys.lock("reconcile:abandoned")) == b"b@m2|x|1"
    reconciler.fail_abandoned()
    assert waits == [0, 0]  # neither waits for the lock: the next cycle comes soon
    assert world.record(kept.reservation_id).state == "queued"
    assert world.record(lost.reservation_id).state == "failed"
    assert world.records.in_flight(dead_host) == []
    assert world.records.in_flight(live_host) == [kept.reservation_id]


@pytest.mark.parametrize("gone", ["ended", "expired"])
def test_an_ended_or_expired_record_leaves_the_in_flight_index(world: ToyWorld, gone: str):
    """The index of a host's in-flight records loses a record that ended or expired; the
    other records of the host stay in it."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    other = toy_reservation(computer="unit-vm2", computer_id=32)
    world.begin(op)
    world.begin(op, other)
    rid = toy_reservation().reservation_id
    if gone == "ended":
        world.redis.hset(keys.record(rid), "state", "succeeded")
    else:
        world.redis.delete(keys.record(rid))

    world.reconciler().recover(HOST)

    assert world.records.in_flight(HOST) == [other.reservation_id]


def test_a_holder_that_may_not_be_signalled_is_not_called_dead():
    """A process of another user (os.kill: PermissionError) exists: it is not dead."""
    me = Holder("celery@m1", "boot", os.getpid())

    def refused(pid: int, signal: int) -> None:
        raise PermissionError(pid)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("vclvirt.recovery.os.kill", refused)
        assert holder_is_dead(str(Holder("other@m1", "boot", 4242)), me) is False


def test_a_record_someone_else_moved_meanwhile_is_not_abandoned(world: ToyWorld):
    """The record changed generation since it was read (a worker claimed it), or a worker
    claims the new generation before it is failed: nothing is failed."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid = toy_reservation().reservation_id
    world.begin(op)
    stale = world.record()
    assert world.records.redispatch(rid, stale.generation, "a worker was faster") is not None
    strict = SETTINGS.model_copy(update={"no_worker_deadline": 0.01})
    time.sleep(0.02)
    assert fail_if_abandoned(world.records, None, strict, stale) is False
    assert world.record().state == "queued"

    current = world.record()
    world.monkeypatch.setattr(
        "vclvirt.recovery.FencedRecord.finish",
        lambda *_a, **_k: (_ for _ in ()).throw(Cancelled(LeaseLost("claimed meanwhile"))),
    )
    assert fail_if_abandoned(world.records, None, strict, current) is False


def test_the_no_worker_deadline_runs_from_the_hosts_last_heartbeat(world: ToyWorld):
    """A host whose last worker beat (100 s ago) after the record was dispatched (200 s
    ago): with a deadline of 150 s it is not failed yet; it would be, counted from the
    dispatch."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid = toy_reservation().reservation_id
    world.begin(op)
    world.redis.hset(keys.record(rid), "dispatched_at", time.time() - 200)
    world.redis.zadd(keys.host_workers(HOST), {"gone@m9": time.time() - 100})
    reconciler = world.reconciler(SETTINGS.model_copy(update={"no_worker_deadline": 150}))
    reconciler.hosts = ["another-host"]

    reconciler.fail_abandoned()

    assert world.record().state == "queued"
    world.redis.zadd(keys.host_workers(HOST), {"gone@m9": time.time() - 160})
    world.redis.delete(keys.lock("reconcile:abandoned"))
    reconciler.fail_abandoned()
    assert world.record().state == "failed"


def test_a_lost_lease_cancels_with_the_reason_cuts_the_host_and_logs(world: ToyWorld, logged):
    """The keeper's loss: the run is cancelled with LEASE_LOST naming why, what it has open
    on the host is cut, and a cut that fails is only logged."""
    rid = toy_reservation().reservation_id

    def cut() -> None:
        raise OSError("connection already gone")

    kept = LeaseKeeper(
        Leases(world.redis, ttl_seconds=SETTINGS.lease_ttl),
        ComputerOwners(world.redis),
        rid,
        world.identity.holder(),
        ttl=SETTINGS.lease_ttl,
        watch_owner=None,
        on_lost=cut,
    )
    with logged() as logs:
        kept._lost("the lease was taken or expired")
    with pytest.raises(Cancelled) as stopped:
        kept.token.check()
    assert isinstance(stopped.value.reason, LeaseLost)
    assert stopped.value.reason.message == "the lease was taken or expired"
    assert logs == [
        {
            "event": "lease_lost",
            "reservation_id": rid,
            "reason": "the lease was taken or expired",
            "log_level": "warning",
        },
        {"event": "cut_failed", "error": "connection already gone", "log_level": "warning"},
    ]


def test_due_records_are_dispatched_each_once_even_when_another_worker_took_one(
    world: ToyWorld, logged
):
    """Two records due: another worker of the host took the first (its zrem fails); the
    second is still dispatched, with the reason "due", and logged."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    first, second = toy_reservation(), toy_reservation(computer="unit-vm2", computer_id=32)
    for reservation in (first, second):
        world.begin(op, reservation)
        world.redis.hset(keys.record(reservation.reservation_id), "state", "retrying")
        world.redis.zadd(keys.due(HOST), {str(reservation.reservation_id): 1})
    reconciler = world.reconciler()
    real_zrem = world.redis.zrem
    taken = str(first.reservation_id).encode()
    world.monkeypatch.setattr(
        world.redis, "zrem", lambda key, member: 0 if member == taken else real_zrem(key, member)
    )
    with logged() as logs:
        reconciler.dispatch_due(HOST)
    rid = second.reservation_id
    assert [p[0] for p in world.published] == [rid]
    assert world.redis.hget(keys.record(rid), "requeued") == b"due"
    assert logs == [
        {
            "event": "reservation_redispatched",
            "reservation_id": rid,
            "host": HOST,
            "generation": world.published[0][1],
            "reason": "due",
            "log_level": "info",
        }
    ]


class Taken:
    """Something a run holds (a lock, a host slot) that another holder took."""

    def renew(self) -> bool:
        return False

    def release(self) -> None:
        pass


class BrokerAway(Leases):
    """Leases whose broker stopped answering after the claim."""

    def renew(self, reservation_id: int, holder: Holder) -> bool:
        raise redis.ConnectionError("broker away")


@pytest.mark.parametrize(
    ("cause", "reason"),
    [
        ("taken", "the lease was taken or expired"),
        ("held", "the computer lock or the host slot was taken"),
        ("broker", "cannot renew the lease: broker away"),
    ],
)
def test_the_lease_keeper_stops_the_run_saying_why(world: ToyWorld, cause: str, reason: str):
    """Within the lease's TTL (3 s here) of the cause, the run is cancelled (LEASE_LOST)
    with the reason: its lease taken, what it holds taken, or the broker away longer than
    it may be."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    me = world.identity.holder()
    assert world.runner.leases.claim(rid, generation, me).ok
    leases = (BrokerAway if cause == "broker" else Leases)(
        world.redis, ttl_seconds=SETTINGS.lease_ttl
    )
    kept = LeaseKeeper(
        leases, ComputerOwners(world.redis), rid, me, ttl=SETTINGS.lease_ttl, watch_owner=None
    )
    with kept:
        if cause == "held":
            kept.hold(Taken())
        if cause == "taken":
            world.redis.set(keys.lease(rid), "node-b|boot|1")
        stopped = cancelled_reason(kept, within=SETTINGS.lease_ttl + 1)
    assert isinstance(stopped, LeaseLost) and stopped.message == reason


def test_a_worker_on_a_freshly_booted_machine_beats_and_scans_in_its_first_cycle(
    world: ToyWorld,
):
    """The monotonic clock starts near 0 at boot: a worker started at once still says it
    is alive in its first cycle, and looks for an old queued message in the broker at the
    first look past the grace (neither waits for the clock to pass the interval)."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    world.begin(op)
    dispatched = world.record().dispatched_at
    assert dispatched is not None
    clock = RecoveryClock(world.monkeypatch, dispatched + SETTINGS.lost_message_grace)
    clock.mono = 0.0
    scans: list[str] = []
    real = queued_task_ids
    world.monkeypatch.setattr(
        "vclvirt.recovery.queued_task_ids", lambda c, h: scans.append(h) or real(c, h)
    )
    queued_message(world.redis, queue_keys(HOST)[0], toy_reservation().reservation_id, 1)
    reconciler = world.reconciler()

    reconciler.cycle()

    assert reconciler.registry.live(HOST) == [world.identity.holder().node]
    assert scans == [HOST]


def test_the_keeper_looks_every_second_and_renews_every_third_of_the_ttl(
    monkeypatch: pytest.MonkeyPatch,
):
    """At the deployed lease (30 s): the computer's owner is looked at every second, the
    lease renewed from 10 s after the last renewal on (not before, and not later), on the
    keeper's monotonic clock (here a test clock that moves only when told)."""
    ttl = Settings.model_fields["lease_ttl"].default
    assert ttl == 30
    clock = RecoveryClock(monkeypatch, 1_000_000.0)
    start = clock.mono
    renewals: list[float] = []
    looks: list[float] = []

    class Counted:
        def renew(self, reservation_id: int, holder: Holder) -> bool:
            renewals.append(clock.mono)
            return True

        def release(self, reservation_id: int, holder: Holder) -> None:
            pass

        def owner_of(self, host: str, computer: str) -> int | None:
            looks.append(time.monotonic())
            return None

    counted: Any = Counted()
    holder = Holder("n", "b", os.getpid())
    with LeaseKeeper(counted, counted, 7, holder, ttl=ttl, watch_owner=(HOST, "vm1")):
        started = time.monotonic()
        time.sleep(3.6)
        assert len(looks) >= 3 and looks[0] - started < 1.5  # once a second
        assert renewals == []  # no time passed on the keeper's clock
        clock.advance(ttl / 3)  # exactly a third of the TTL
        deadline = time.monotonic() + 5
        while not renewals and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)
    assert renewals == [start + ttl / 3]


def test_a_host_with_a_live_worker_is_never_failed_as_abandoned(world: ToyWorld):
    """Even with a no-worker deadline shorter than a worker's life (3 heartbeats): the
    host's worker beat 25 s ago, it is alive (30 s), so its reservation waits for it."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid = toy_reservation().reservation_id
    world.begin(op)
    world.redis.hset(keys.record(rid), "dispatched_at", time.time() - 200)
    world.redis.zadd(keys.host_workers(HOST), {"slow@m9": time.time() - 25})
    settings = SETTINGS.model_copy(update={"heartbeat_interval": 10, "no_worker_deadline": 20})
    reconciler = world.reconciler(settings)
    reconciler.hosts = ["another-host"]
    assert reconciler.registry.live(HOST) == ["slow@m9"]

    reconciler.fail_abandoned()

    assert world.record().state == "queued"
    assert (
        fail_if_abandoned(  # and the deadline itself never counts a live host
            world.records, time.time() - 25, settings, world.record()
        )
        is False
    )


class Scripted:
    """Leases and owners whose renewals answer as the test says: True, or the broker away."""

    def __init__(self) -> None:
        self.away = False
        self.renewed = 0
        self.release_fails = False

    def renew(self, reservation_id: int, holder: Holder) -> bool:
        if self.away:
            raise redis.ConnectionError("broker away")
        self.renewed += 1
        return True

    def release(self, reservation_id: int, holder: Holder) -> None:
        if self.release_fails:
            raise redis.ConnectionError("broker away at release")

    def owner_of(self, host: str, computer: str) -> int | None:
        return None


def wait_until(condition: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_with_the_broker_away_the_keeper_gives_up_0_6_ttl_after_its_last_renewal(
    monkeypatch: pytest.MonkeyPatch,
):
    """At the deployed lease (30 s), on a test clock: renewed at 10 s; the broker goes
    away; the run is still kept at 18 s after that renewal, and stopped just past it."""
    ttl = Settings.model_fields["lease_ttl"].default
    clock = RecoveryClock(monkeypatch, 1_000_000.0)
    scripted: Any = Scripted()
    kept = LeaseKeeper(
        scripted, scripted, 7, Holder("n", "b", os.getpid()), ttl=ttl, watch_owner=None
    )
    with kept:
        clock.advance(ttl / 3)
        assert wait_until(lambda: scripted.renewed == 1, within=3)
        scripted.away = True
        clock.advance(ttl * 0.6)  # exactly the deadline after the renewal: not past it
        time.sleep(2.2)
        assert not kept.token.cancelled
        clock.advance(0.5)
        assert wait_until(lambda: kept.token.cancelled, within=3)
    assert kept.token.reason is not None
    assert kept.token.reason.message == "cannot renew the lease: broker away"


def test_the_keeper_thread_is_named_and_never_holds_its_process_up(world: ToyWorld):
    """Named for thread dumps; a daemon, so a worker process that exits without leaving
    the keeper's block is not kept alive by it."""
    with keeper(world, toy_reservation().reservation_id, watch=False):
        (thread,) = [t for t in threading.enumerate() if t.name == "lease-keeper"]
        assert thread.daemon


def test_a_release_the_broker_refuses_is_logged_and_left_to_expire(world: ToyWorld, logged):
    scripted: Any = Scripted()
    scripted.release_fails = True
    kept = LeaseKeeper(
        scripted, scripted, 7, world.identity.holder(), ttl=SETTINGS.lease_ttl, watch_owner=None
    )
    with logged() as logs, kept:
        pass
    assert logs == [
        {"event": "lease_release_failed", "error": "broker away at release", "log_level": "warning"}
    ]
