"""Recovery (vclvirt/recovery.py) against the unit tier's doubles: the reconciler resumes
what has no live work behind it and leaves alone what has; the lease keeper stops a run
that lost its lease or its computer. Unit twins of tests/integration's recovery tests
and tests/e2e's worker-kill tests, which prove the same with real workers and Redis."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import pytest

from tests.unit._runs import HOST, SETTINGS, ToyWorld, toy_reservation
from vclvirt.cancellation import Cancelled
from vclvirt.errors import LeaseLost, Superseded
from vclvirt.operation import StepContext
from vclvirt.recovery import LeaseKeeper
from vclvirt.state import keys
from vclvirt.state.computers import ComputerOwners
from vclvirt.state.leases import Holder, Leases


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
    """A live holder on this machine (here: the process that started the tests) keeps its
    run however long its step takes: nothing is dispatched again, the record untouched."""
    op = world.operation("toy", {"only": lambda ctx: {}})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    me = world.identity.holder()
    alive = Holder(me.node, me.boot, os.getppid())
    assert world.runner.leases.claim(rid, generation, alive).ok
    before = world.redis.hgetall(keys.record(rid))

    world.reconciler().recover(HOST)

    assert world.published == []
    assert world.redis.hgetall(keys.record(rid)) == before


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
