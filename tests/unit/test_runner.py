"""The runner (vclvirt/runner.py) against the unit tier's doubles: what happens when
things go wrong is decided there, and each outcome is checked here on the record it
writes. Unit twins of tests/integration's runner and fencing tests, which prove the same
on real Redis, libvirtd and hosts."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from tests.unit._runs import HOST, SETTINGS, ToyWorld, toy_reservation
from vclvirt import cancellation
from vclvirt.config.settings import Settings
from vclvirt.errors import CommandFailed, CommandTimeout, NodeUnreachable, Superseded
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.hooks import StepEvent
from vclvirt.locks import ResourceLock, RunOwner
from vclvirt.operation import StepContext
from vclvirt.retrypolicy import RetryPolicy
from vclvirt.runner import Runner
from vclvirt.state import keys
from vclvirt.state.fence import FencedRecord
from vclvirt.state.leases import Holder
from vclvirt.state.slots import HostSlot


def ok(ctx: StepContext) -> dict[str, Any]:
    return {"ran": True}


def on_host(*argv: str) -> Any:
    """A step that runs one command on the host (the fake transport)."""

    def body(ctx: StepContext) -> dict[str, Any]:
        result = ctx.host().access.node.run(list(argv), timeout=0.2)
        return {"out": result.text}

    return body


def test_an_operation_runs_to_succeeded_behind_the_computers_fencing_token(world: ToyWorld):
    """Every step succeeds: the record says succeeded, each step its result; every host
    command carried the computer's token, which the host recorded first (fence_host)."""
    world.node.on("hostname", stdout=b"unit-host\n")
    op = world.operation("toy", {"first": ok, "second": on_host("hostname")})
    generation = world.begin(op)

    summary = world.runner.run(toy_reservation().reservation_id, generation)

    assert summary["state"] == "succeeded"
    record = world.record()
    assert record.state == "succeeded"
    assert record.step_records["second"]["result"] == {"out": "unit-host\n"}
    assert [c.argv for c in world.node.calls] == [("true",), ("hostname",)]
    token = world.node.calls[0].token
    assert token is not None and all(c.token == token for c in world.node.calls)
    assert world.node.tokens == {f"{world.config.fence_dir}/unit-vm1": token}
    assert not world.redis.exists(keys.lease(record.reservation_id))  # released


def test_a_transient_error_retries_later_then_succeeds(world: ToyWorld):
    """A hung command times out (transient): the record waits in `retrying`, due on the
    host's due set; recovery dispatches it when due, and the next run succeeds from the
    step that failed."""
    world.node.on("virsh", "list", hang=True, times=1)
    op = world.operation("toy", {"first": ok, "second": on_host("virsh", "list")})
    rid = toy_reservation().reservation_id
    generation = world.begin(op)

    summary = world.runner.run(rid, generation)

    assert summary["state"] == "retrying"
    record = world.record()
    assert record.state == "retrying"
    assert record.step_records["second"]["error"]["code"] == CommandTimeout.code
    assert world.redis.zscore(keys.due(HOST), rid) is not None

    world.redis.zadd(keys.due(HOST), {str(rid): 0})  # its backoff is over
    world.reconciler().dispatch_due(HOST)
    assert len(world.published) == 1
    _, again, resumed = world.published[0]
    assert again == generation + 1 and resumed

    assert world.runner.run(rid, again)["state"] == "succeeded"
    record = world.record()
    assert record.step_records["first"]["attempt"] == 1  # not run again
    assert record.step_records["second"]["attempt"] == 2
    assert world.node.argvs("virsh") == [("virsh", "list")] * 2


def test_a_permanent_error_fails_the_operation_and_runs_on_abandon(world: ToyWorld):
    """A command that exits non-zero fails the operation at once (no retry); on_abandon
    removes what it made, and the record says what failed, where and the cleanup."""
    world.node.on("qemu-img", "create", exit_status=1, stderr=b"disk full-ish")
    abandoned: list[str] = []

    def undo(ctx: StepContext) -> dict[str, Any]:
        abandoned.append(ctx.reservation.computer.short_name)
        return {"removed_files": ["overlay"]}

    op = world.operation(
        "toy", {"first": ok, "second": on_host("qemu-img", "create"), "third": ok}, on_abandon=undo
    )
    summary = world.runner.run(toy_reservation().reservation_id, world.begin(op))

    assert summary["state"] == "failed" and summary["failed_step"] == "second"
    record = world.record()
    assert (record.state, record.failed_step) == ("failed", "second")
    assert record.error is not None and record.error["code"] == CommandFailed.code
    assert record.error["host"] == HOST
    assert record.error["cleanup"] == {"removed_files": ["overlay"]}
    assert abandoned == ["unit-vm1"]
    assert "third" not in record.step_records
    assert world.redis.zscore(keys.due(HOST), record.reservation_id) is None  # no retry


def test_a_duplicate_message_is_dropped(world: ToyWorld):
    """The broker delivers the same message twice: the second finds the operation ended
    and runs nothing."""
    op = world.operation("toy", {"only": on_host("touch", "x")})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    assert world.runner.run(rid, generation)["state"] == "succeeded"
    before = world.redis.hgetall(keys.record(rid))

    assert world.runner.run(rid, generation) == {"dropped": "succeeded"}
    assert world.redis.hgetall(keys.record(rid)) == before
    assert world.node.argvs("touch") == [("touch", "x")]


def test_a_message_of_a_stale_generation_is_dropped(world: ToyWorld):
    """A message of an older generation (the record was dispatched again since) runs
    nothing: only the newest generation's message may claim the lease."""
    op = world.operation("toy", {"only": on_host("touch", "x")})
    rid, old = toy_reservation().reservation_id, world.begin(op)
    assert world.records.redispatch(rid, old, "test: dispatched again") == old + 1
    before = world.redis.hgetall(keys.record(rid))

    assert world.runner.run(rid, old) == {"dropped": "stale"}
    assert world.redis.hgetall(keys.record(rid)) == before
    assert world.node.calls == []


def taking_the_lease(world: ToyWorld, rid: int, snapshot: dict[bytes, bytes], *, report: bool):
    """A long step during which another holder takes the lease; it reports progress (a
    record write) or only checks whether it was cancelled."""

    def body(ctx: StepContext) -> dict[str, Any]:
        world.redis.set(keys.lease(rid), "node-b|boot|1")  # taken over meanwhile
        snapshot.update(world.redis.hgetall(keys.record(rid)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if report:
                ctx.progress(1, 2)
            cancellation.check()
            time.sleep(0.05)
        raise AssertionError("the run was not cancelled")

    return body


@pytest.mark.parametrize(
    "report", [True, False], ids=["its-next-write-is-refused", "its-keeper-notices"]
)
def test_a_lost_lease_stops_the_run_with_no_write(world: ToyWorld, report: bool):
    """Another holder takes the lease while a step runs: the step's next record write is
    refused, or (no write) the keeper notices at its next renewal and cancels the run.
    Either way the run writes nothing more, runs no further host command and leaves the
    new holder's lease alone."""
    rid = toy_reservation().reservation_id
    snapshot: dict[bytes, bytes] = {}
    body = taking_the_lease(world, rid, snapshot, report=report)
    op = world.operation("toy", {"long": body, "after": on_host("touch", "x")})
    summary = world.runner.run(rid, world.begin(op))

    assert summary["state"] == "lease_lost"
    assert ("record write refused" in summary["error"]) is report
    assert world.redis.hgetall(keys.record(rid)) == snapshot
    assert world.node.argvs("touch") == []
    assert world.redis.get(keys.lease(rid)) == b"node-b|boot|1"  # not released by us


def newer_owner_begins(world: ToyWorld, reservation_id: int = 9999) -> None:
    """Another reservation begins a load on the same computer: it owns it from now on."""
    world.records.begin(
        toy_reservation(reservation_id=reservation_id, request_id=9998),
        "toy",
        ["first", "second"],
        owns_computer=True,
    )


@pytest.mark.parametrize("newer_id", [9999, 7])
def test_a_superseded_reservation_stops_and_cleans_up(world: ToyWorld, newer_id: int):
    """A newer reservation takes the computer while a load runs: the run stops before its
    next step, ends as superseded and removes what it made. Newer means begun later, not
    a larger id: VCL's ids are not ordered in time (#23.5), so a smaller one supersedes too."""
    abandoned: list[int] = []

    def newer_reservation_arrives(ctx: StepContext) -> dict[str, Any]:
        newer_owner_begins(world, newer_id)
        return {}

    def undo(ctx: StepContext) -> dict[str, Any]:
        abandoned.append(ctx.reservation.reservation_id)
        return {}

    op = world.operation(
        "toy",
        {"first": newer_reservation_arrives, "second": on_host("touch", "x")},
        on_abandon=undo,
    )
    rid = toy_reservation().reservation_id
    summary = world.runner.run(rid, world.begin(op))

    assert summary["state"] == "superseded"
    record = world.record(rid)
    assert record.state == "superseded"
    assert record.error is not None and f"reservation {newer_id}" in record.error["message"]
    assert abandoned == [rid]
    assert world.node.argvs("touch") == []


def test_a_command_refused_by_the_hosts_fence_stops_the_run_with_no_write(world: ToyWorld):
    """The host has seen a newer token for the computer (a newer holder took it): the
    command is refused there and runs nothing, and the run stops as one that lost its
    lease: the record is the newer holder's now, so it writes nothing more."""
    world.node.tokens[f"{world.config.fence_dir}/unit-vm1"] = 2**62
    op = world.operation("toy", {"only": on_host("touch", "x")})
    rid = toy_reservation().reservation_id
    summary = world.runner.run(rid, world.begin(op))

    assert summary["state"] == "lease_lost"
    assert "refused fencing token" in summary["error"]
    record = world.record()
    assert (record.state, record.step_records["only"]["state"]) == ("running", "running")
    # The first command (fence_host's) was refused, so the step's never went out.
    assert [c.argv for c in world.node.calls] == [("true",)]
    assert world.node.tokens[f"{world.config.fence_dir}/unit-vm1"] == 2**62


def test_a_load_runs_to_succeeded_on_a_real_host_of_the_unit_tier(tmp_path, monkeypatch):
    """The real load operation, every step, through the runner: on libvirt's test driver
    with real qemu-img (no service), from enqueue to a running domain on its overlay."""
    from tests.unit._runs import load_world
    from vclvirt.operations import operation
    from vclvirt.operations.load import LOAD_STEPS

    world, unit = load_world(tmp_path, monkeypatch)
    rid, generation = toy_reservation().reservation_id, world.begin(operation("load"))

    summary = world.runner.run(rid, generation)

    assert summary["state"] == "succeeded", world.record().to_dict()
    record = world.record()
    assert [record.step_records[s]["state"] for s in LOAD_STEPS] == ["succeeded"] * 7
    domain = unit.conn.lookupByName(record.step_records["define"]["result"]["domain"])
    assert domain.isActive()
    assert (unit.vms / "unit-vm1_11-v0.qcow2").exists()
    image = world.redis.get(keys.computer_image(HOST, "unit-vm1"))
    assert image is not None and b"linux-Unit-11-v0" in image


def test_a_computer_held_by_another_reservation_is_waited_for(world: ToyWorld):
    """One operation at a time per computer: while another reservation holds its lock the
    run takes no step, frees its worker slot and waits (due again later), saying why."""
    other = ResourceLock(
        world.redis, f"computer:{HOST}:unit-vm1", RunOwner(555, 1, "n|b|1"), ttl=30, fenced=True
    )
    assert other.acquire(wait=0)
    op = world.operation("toy", {"only": on_host("touch", "x")})
    rid = toy_reservation().reservation_id

    summary = world.runner.run(rid, world.begin(op))

    assert summary["state"] == "waiting"
    record = world.record()
    assert record.state == "waiting" and record.waiting is not None
    assert "busy (r555.g1|n|b|1)" in record.waiting["reason"]
    assert world.redis.zscore(keys.due(HOST), rid) is not None
    assert world.node.calls == []


def test_a_host_at_its_limit_frees_the_worker_process_and_the_computer(world: ToyWorld):
    """The host runs max_concurrent_loads operations (other workers' runs hold its slots):
    the run takes no step and returns at once (its worker process is free for another
    host's loads), lets go of the computer, says why and is due again in a second; once a
    slot is free, the next dispatch runs it to the end."""
    limit = world.config.max_concurrent_loads
    others = [
        HostSlot(world.redis, HOST, f"r{900 + i}.g1|n|b|1", limit=limit, ttl=30)
        for i in range(limit)
    ]
    assert all(slot.acquire() for slot in others)
    op = world.operation("toy", {"only": on_host("touch", "x")})
    rid = toy_reservation().reservation_id
    generation = world.begin(op)

    started = time.monotonic()
    summary = world.runner.run(rid, generation)

    assert time.monotonic() - started < 1.0  # not waited out inside the worker
    assert summary["state"] == "waiting"
    record = world.record()
    assert record.waiting is not None
    assert f"runs {limit} operations already" in record.waiting["reason"]
    due = world.redis.zscore(keys.due(HOST), rid)
    assert due is not None and 0 < due - time.time() <= 1.0
    assert world.node.calls == []
    assert not world.redis.exists(keys.lock(f"computer:{HOST}:unit-vm1"))

    others[0].release()
    world.redis.zadd(keys.due(HOST), {str(rid): 0})
    world.reconciler().dispatch_due(HOST)
    (_, again, _) = world.published[0]
    assert world.runner.run(rid, again)["state"] == "succeeded"


def test_transient_errors_fail_the_step_at_their_deadline(world: ToyWorld):
    """Retried with backoff, but not for ever: past transient_deadline the step fails,
    and the error says how long it was retried and how to retry it."""
    world.node.on("virsh", error=NodeUnreachable("no route to host"))
    op = world.operation("toy", {"only": on_host("virsh", "list")})
    strict = Runner(
        world.redis,
        SETTINGS.model_copy(update={"transient_deadline": 0.5}),
        lambda _name: world.host,
        identity=world.identity,
    )
    summary = strict.run(toy_reservation().reservation_id, world.begin(op))

    assert summary["state"] == "failed"
    record = world.record()
    assert record.error is not None and record.error["code"] == NodeUnreachable.code
    assert "Retried for 0s without success" in record.error["hint"]
    assert f"vclvirt retry {toy_reservation().reservation_id}" in record.error["hint"]


def test_a_message_for_a_run_a_live_holder_holds_is_dropped(world: ToyWorld):
    """Two workers never run the same operation at once: a holder on another machine has
    the lease (it may be alive), so a second message for it runs nothing."""
    op = world.operation("toy", {"only": on_host("touch", "x")})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    elsewhere = Holder("worker@other-machine", "boot", 4242)
    assert world.runner.leases.claim(rid, generation, elsewhere).ok
    before = world.redis.hgetall(keys.record(rid))

    assert world.runner.run(rid, generation)["dropped"] == "held"
    assert world.redis.hgetall(keys.record(rid)) == before
    assert world.node.calls == []


def test_a_run_whose_record_was_dispatched_again_writes_nothing(world: ToyWorld):
    """A worker paused mid-step while recovery gave its record a new generation: its
    writes carry the old generation and are refused; the run stops as one that lost its
    lease."""
    rid = toy_reservation().reservation_id
    snapshot: dict[bytes, bytes] = {}

    def paused_meanwhile(ctx: StepContext) -> dict[str, Any]:
        world.redis.hincrby(keys.record(rid), "generation", 1)
        snapshot.update(world.redis.hgetall(keys.record(rid)))
        return {"done": True}

    op = world.operation("toy", {"only": paused_meanwhile})
    assert world.runner.run(rid, world.begin(op))["state"] == "lease_lost"
    assert world.redis.hgetall(keys.record(rid)) == snapshot


def test_nothing_is_written_into_a_record_after_it_ended(world: ToyWorld):
    """The record ended while the step ran (here: failed by the reconciler): the step's
    success and the operation's end are not written over it."""
    rid = toy_reservation().reservation_id
    snapshot: dict[bytes, bytes] = {}

    def ended_meanwhile(ctx: StepContext) -> dict[str, Any]:
        world.redis.hset(keys.record(rid), "state", "failed")
        snapshot.update(world.redis.hgetall(keys.record(rid)))
        return {"done": True}

    op = world.operation("toy", {"only": ended_meanwhile})
    assert world.runner.run(rid, world.begin(op))["state"] == "lease_lost"
    assert world.redis.hgetall(keys.record(rid)) == snapshot


def test_a_message_that_arrives_before_its_record_runs_nothing_and_recovery_sends_it_again(
    world: ToyWorld,
):
    """Record before message, reversed: the message of generation 1 is consumed before the
    record exists (as if published first). It runs nothing and writes no record. Once the
    record is written, the message is missing from the broker: at the default grace
    (lost_message_grace, 30 s) recovery leaves it alone, and past it sends it again; that
    run succeeds, once."""
    op = world.operation("toy", {"only": on_host("touch", "x")})
    rid = toy_reservation().reservation_id

    dropped = world.runner.run(rid, 1)

    assert "dropped" in dropped and world.redis.exists(keys.record(rid)) == 0
    assert world.node.calls == []
    assert world.begin(op) == 1
    world.reconciler().recover(HOST)  # within the grace: the message may be on its way
    assert world.published == []
    grace = SETTINGS.lost_message_grace
    assert grace == 30.0  # the deployed default
    world.redis.hset(keys.record(rid), "dispatched_at", time.time() - grace - 1)
    world.reconciler().recover(HOST)
    (published,) = world.published
    assert published[:2] == (rid, 2)
    assert world.runner.run(rid, 2)["state"] == "succeeded"
    assert world.node.argvs("touch") == [("touch", "x")]


# -- the runner's decisions, value by value (killing `make mutation`'s survivors) ----------


def dispatch_again(world: ToyWorld, rid: int) -> int:
    """Its wait is over: recovery dispatches it; the new generation."""
    world.redis.zadd(keys.due(HOST), {str(rid): 0})
    world.published.clear()
    world.reconciler().dispatch_due(HOST)
    ((_, generation, _),) = world.published
    return generation


def test_each_wait_for_a_busy_computer_is_counted_and_lasts_longer(world: ToyWorld, logged):
    """The first wait lasts busy_delay(1) = 1 s, the second 2 s: the record counts them,
    the due set says when, the summary and the log say why."""
    other = ResourceLock(
        world.redis, f"computer:{HOST}:unit-vm1", RunOwner(555, 1, "n|b|1"), ttl=30, fenced=True
    )
    assert other.acquire(wait=0)
    op = world.operation("toy", {"only": ok})
    rid = toy_reservation().reservation_id
    generation = world.begin(op)
    why = "computer unit-vm1 is busy (r555.g1|n|b|1)"
    for waits, delay in ((1, 1.0), (2, 2.0)):
        with logged() as logs:
            started = time.time()
            summary = world.runner.run(rid, generation)
        assert summary == {
            "reservation_id": rid,
            "state": "waiting",
            "reason": why,
            "steps": {"only": "pending"},
        }
        record = world.record()
        assert (record.waits, record.waiting and record.waiting["reason"]) == (waits, why)
        due = world.redis.zscore(keys.due(HOST), rid)
        assert due is not None and started + delay - 0.01 <= due <= time.time() + delay
        busy = [e for e in logs if e["event"] == "computer_busy"]
        assert busy == [
            {
                "event": "computer_busy",
                "held_by": "r555.g1|n|b|1",
                "retry_in_s": delay,
                "log_level": "info",
            }
        ]
        generation = dispatch_again(world, rid)


def test_each_transient_failure_of_a_step_is_counted_from_its_first(world: ToyWorld):
    """Two transient failures in a row: the step's record counts them (the backoff grows
    with the count), keeps when the first was, and the record says why it waits and until
    when; the error names the host and the reservation."""
    world.node.on("virsh", error=NodeUnreachable("no route to host"))
    op = world.operation("toy", {"only": on_host("virsh", "list")})
    steady = Runner(  # backoff 0.5 s: every delay is its floor, 1 s
        world.redis,
        SETTINGS.model_copy(update={"retry_backoff": 0.5, "retry_backoff_max": 0.5}),
        lambda _name: world.host,
        identity=world.identity,
    )
    asked: list[int] = []
    real_delay = RetryPolicy.delay
    world.monkeypatch.setattr(
        RetryPolicy, "delay", lambda policy, n: asked.append(n) or real_delay(policy, n)
    )
    rid = toy_reservation().reservation_id
    generation = world.begin(op)
    firsts = []
    for failures in (1, 2):
        started = time.time()
        summary = steady.run(rid, generation)
        assert summary["state"] == "retrying" and summary["retry_in_s"] == 1.0
        record = world.record()
        step = record.step_records["only"]
        assert step["transient_failures"] == failures
        firsts.append(step["transient_since"])
        assert step["error"]["host"] == HOST and step["error"]["reservation_id"] == rid
        assert record.waiting is not None
        assert record.waiting["reason"] == "step only failed (NODE_UNREACHABLE); retried in 1s"
        due = world.redis.zscore(keys.due(HOST), rid)
        assert due is not None and started + 0.99 <= due <= time.time() + 1.0
        generation = dispatch_again(world, rid)
    assert asked == [1, 2]
    assert firsts[0] == firsts[1]  # the deadline runs from the first failure


LOGGED = {
    "cleanup_failed": "disk gone",
    "cleanup_fenced": "[SUPERSEDED] the host refused fencing token 3. Nothing to do: the "
    "newer reservation owns the computer",
}


def failing(ctx: StepContext) -> dict[str, Any]:
    raise CommandFailed("qemu-img create exited 1", host=HOST)


@pytest.mark.parametrize(
    ("undo_raises", "cleanup", "event"),
    [
        (RuntimeError("disk gone"), {"failed": "disk gone"}, "cleanup_failed"),
        (
            cancellation.Cancelled(Superseded("the host refused fencing token 3")),
            {"fenced": "the host refused fencing token 3"},
            "cleanup_fenced",
        ),
    ],
    ids=["cleanup-fails", "cleanup-fenced"],
)
def test_a_cleanup_that_fails_is_recorded_with_the_failure(
    world: ToyWorld, undo_raises: BaseException, cleanup: dict[str, str], event: str, logged
):
    """on_abandon raising (or refused by the host's fence) does not hide the step's error:
    the record keeps it and says what became of the cleanup, and the log says so too."""

    def undo(ctx: StepContext) -> dict[str, Any]:
        raise undo_raises

    op = world.operation("toy", {"only": failing}, on_abandon=undo)
    with logged() as logs:
        world.runner.run(toy_reservation().reservation_id, world.begin(op))
    record = world.record()
    assert record.error is not None and record.error["code"] == CommandFailed.code
    assert record.error["cleanup"] == cleanup
    warned = [e for e in logs if e["event"] == event]
    assert warned == [{"event": event, "error": LOGGED[event], "log_level": "warning"}]


def test_a_failed_step_is_recorded_whole(world: ToyWorld, logged):
    """The failing step's record holds the error (with host and reservation), the
    operation's error has no cleanup entry when on_abandon returned nothing, the summary
    names step and error."""

    def undo(ctx: StepContext) -> dict[str, Any]:
        ctx.progress(3, 3)
        return {}

    op = world.operation("toy", {"first": ok, "second": failing}, on_abandon=undo)
    rid = toy_reservation().reservation_id
    with logged() as logs:
        summary = world.runner.run(rid, world.begin(op))
    assert summary == {
        "reservation_id": rid,
        "state": "failed",
        "failed_step": "second",
        "error": summary["error"],
        "steps": {"first": "succeeded", "second": "failed"},
    }
    assert summary["error"].startswith(f"[COMMAND_FAILED] qemu-img create exited 1 (host {HOST}")
    record = world.record()
    step = record.step_records["second"]
    assert step["state"] == "failed"
    assert (step["error"]["code"], step["error"]["host"]) == (CommandFailed.code, HOST)
    assert step["error"]["reservation_id"] == rid
    assert step["progress"] == {"done_bytes": 3, "total_bytes": 3}
    assert "progress" not in record.step_records["first"]
    assert record.error is not None and "cleanup" not in record.error
    assert record.error["reservation_id"] == rid
    failed = [e for e in logs if e["event"] == "step_failed"]
    assert [(e["state"], e["code"]) for e in failed] == [("failed", CommandFailed.code)]


def test_a_superseded_run_cleans_up_to_the_end_and_records_the_step_it_stopped_at(
    world: ToyWorld, logged
):
    """The run's own token is cancelled (superseded), yet its cleanup runs to its end
    under a fresh one; the step it stopped before is the one that records why."""
    cleaned: list[str] = []

    def newer_reservation_arrives(ctx: StepContext) -> dict[str, Any]:
        newer_owner_begins(world)
        return {}

    def undo(ctx: StepContext) -> dict[str, Any]:
        cancellation.check()  # not cancelled: the cleanup's own token
        ctx.progress(1, 1)
        cleaned.append("all")
        return {"removed": 1}

    op = world.operation("toy", {"first": newer_reservation_arrives, "second": ok}, on_abandon=undo)
    rid = toy_reservation().reservation_id
    with logged() as logs:
        summary = world.runner.run(rid, world.begin(op))
    assert (summary["state"], summary["failed_step"]) == ("superseded", "second")
    assert cleaned == ["all"]
    record = world.record(rid)
    assert record.error is not None and record.error["cleanup"] == {"removed": 1}
    second = record.step_records["second"]
    assert second["state"] == "superseded" and second["error"]["code"] == "SUPERSEDED"
    assert record.step_records["first"]["state"] == "succeeded"
    failed = [e for e in logs if e["event"] == "step_failed"]
    assert [e["state"] for e in failed] == ["superseded"]


def test_a_lost_lease_is_logged_with_its_code(world: ToyWorld, logged):
    rid = toy_reservation().reservation_id
    body = taking_the_lease(world, rid, {}, report=True)
    op = world.operation("toy", {"long": body})
    with logged() as logs:
        summary = world.runner.run(rid, world.begin(op))
    lost = [e for e in logs if e["event"] == "lease_lost" and "code" in e]
    assert lost == [
        {
            "event": "lease_lost",
            "error": summary["error"],
            "code": "FENCED",  # its next record write was refused
            "log_level": "warning",
        }
    ]


def test_the_transient_deadline_runs_from_the_steps_first_failure(world: ToyWorld):
    """The second failure, 99.7 s after the first, gives up with a 100 s deadline (its 1 s
    retry would pass it), though it came 0 s after the last write; the wait it would have
    had is rounded to a tenth of a second in the summary; an error without a host is
    given the run's."""

    def unreachable(ctx: StepContext) -> dict[str, Any]:
        raise NodeUnreachable("no route to host")  # no host: the runner adds it

    op = world.operation("toy", {"only": unreachable})
    strict = Runner(
        world.redis,
        SETTINGS.model_copy(update={"transient_deadline": 100}),
        lambda _name: world.host,
        identity=world.identity,
    )
    world.monkeypatch.setattr("vclvirt.retrypolicy.random.uniform", lambda low, high: 1.2345)
    clock = [time.time()]
    world.monkeypatch.setattr("vclvirt.runner.now", lambda: clock[0])
    rid = toy_reservation().reservation_id
    summary = strict.run(rid, world.begin(op))
    assert (summary["state"], summary["retry_in_s"]) == ("retrying", 1.2)
    step = world.record().step_records["only"]
    assert (step["error"]["host"], step["error"]["reservation_id"]) == (HOST, rid)

    clock[0] += 99.7
    summary = strict.run(rid, dispatch_again(world, rid))
    assert summary["state"] == "failed"
    record = world.record()
    assert record.error is not None and "Retried for 100s without success" in record.error["hint"]


def test_a_plan_set_by_a_step_skips_the_steps_left_out_and_is_recorded(world: ToyWorld, logged):
    """node_status's way: the first step names the steps still needed; the others are
    skipped in this run, and the plan is in the record for the next one. A step not run
    yet has made no attempt."""
    seen: list[int] = []

    def plan(ctx: StepContext) -> dict[str, Any]:
        seen.append(ctx.attempts("third"))
        ctx.set_plan(["first", "third"])
        return {}

    bound: list[dict[str, Any]] = []

    def third(ctx: StepContext) -> dict[str, Any]:
        bound.append(structlog.contextvars.get_contextvars())
        return {}

    op = world.operation("toy", {"first": plan, "second": ok, "third": third})
    r = toy_reservation()
    with logged() as logs:
        summary = world.runner.run(r.reservation_id, world.begin(op))
    assert summary["steps"] == {"first": "succeeded", "second": "skipped", "third": "succeeded"}
    record = world.record()
    assert record.plan == ["first", "third"]
    assert record.step_records["second"]["reason"] == "node_status says it is not needed"
    assert seen == [0]
    assert {"event": "operation_succeeded", "log_level": "info"} in logs
    assert {k: bound[0][k] for k in ("reservation_id", "request_id", "host", "computer")} == {
        "reservation_id": r.reservation_id,
        "request_id": r.request_id,
        "host": HOST,
        "computer": r.computer.hostname,
    }
    assert (bound[0]["operation"], bound[0]["step"]) == ("toy", "third")


def test_a_run_cancelled_for_another_reason_fails_at_its_step_with_that_reason(world: ToyWorld):
    def cancelled(ctx: StepContext) -> dict[str, Any]:
        raise cancellation.Cancelled(CommandFailed("the host is shutting down", host=HOST))

    op = world.operation("toy", {"first": ok, "second": cancelled})
    summary = world.runner.run(toy_reservation().reservation_id, world.begin(op))
    assert (summary["state"], summary["failed_step"]) == ("failed", "second")
    record = world.record()
    assert record.error is not None and record.error["message"] == "the host is shutting down"


def test_a_message_whose_lease_holder_died_here_is_taken_over(world: ToyWorld):
    """The lease's holder was a process of this machine that is gone: the message takes
    the lease over and runs the operation at once."""
    op = world.operation("toy", {"only": ok})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    me = world.identity.holder()
    process = subprocess.Popen(["true"])
    process.wait()
    assert world.runner.leases.claim(rid, generation, Holder(me.node, me.boot, process.pid)).ok

    assert world.runner.run(rid, generation, task_id="task-7")["state"] == "succeeded"
    step = world.record().step_records["only"]
    assert (step["task_id"], step["worker"], step["holder"]) == ("task-7", me.node, str(me))


def test_a_message_dropped_at_its_claim_is_logged(world: ToyWorld, logged):
    """Stale (no holder to name) or held (by the holder named)."""
    op = world.operation("toy", {"only": ok})
    rid, old = toy_reservation().reservation_id, world.begin(op)
    world.records.redispatch(rid, old, "dispatched again")
    with logged() as logs:
        world.runner.run(rid, old)
    assert logs == [
        {
            "event": "message_dropped",
            "reservation_id": rid,
            "generation": old,
            "reason": "stale",
            "holder": None,
            "log_level": "info",
        }
    ]
    new = old + 1
    assert world.runner.leases.claim(rid, new, Holder("worker@other-machine", "b", 4242)).ok
    with logged() as logs:
        world.runner.run(rid, new)
    assert [(e["reason"], e["holder"]) for e in logs] == [("held", "worker@other-machine|b|4242")]


@pytest.mark.parametrize("changed", ["missing", "stale"])
def test_a_record_changed_between_claim_and_read_runs_nothing(world: ToyWorld, changed: str):
    op = world.operation("toy", {"only": on_host("touch", "x")})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    record = world.record()
    moved = None if changed == "missing" else dataclasses.replace(record, generation=generation + 1)
    world.monkeypatch.setattr(world.runner.records, "get", lambda _rid: moved)
    assert world.runner.run(rid, generation) == {"dropped": changed}
    assert world.node.calls == []


class Recorded:
    """A step hook that keeps what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, StepEvent, Any]] = []

    def step_started(self, event: StepEvent) -> None:
        self.calls.append(("started", event, None))

    def step_succeeded(self, event: StepEvent, seconds: float, result: dict[str, Any]) -> None:
        self.calls.append(("succeeded", event, seconds))

    def step_retrying(self, event: StepEvent, error: Any, delay: float) -> None:
        self.calls.append(("retrying", event, delay))

    def step_failed(self, event: StepEvent, error: Any, state: str) -> None:
        self.calls.append(("failed", event, (error.code, error.message, state)))


def test_step_hooks_hear_each_step_with_its_attempt_and_a_crash_as_internal(
    world: ToyWorld, logged
):
    """The hooks (logs, metrics) get the reservation, host, step and attempt of each step
    and its duration; a step that crashes (not a vclvirt error) fails INTERNAL, naming the
    exception, and is logged as a crash."""

    def crash(ctx: StepContext) -> dict[str, Any]:
        raise ValueError("boom")

    hooks = Recorded()
    runner = Runner(
        world.redis, SETTINGS, lambda _n: world.host, identity=world.identity, hooks=hooks
    )
    op = world.operation("toy", {"first": ok, "second": crash})
    rid = toy_reservation().reservation_id
    with logged() as logs:
        summary = runner.run(rid, world.begin(op))
    assert summary["failed_step"] == "second"
    kinds = [(kind, e.reservation_id, e.host, e.step, e.attempt) for kind, e, _ in hooks.calls]
    assert kinds == [
        ("started", rid, HOST, "first", 1),
        ("succeeded", rid, HOST, "first", 1),
        ("started", rid, HOST, "second", 1),
        ("failed", rid, HOST, "second", 1),
    ]
    assert 0 <= hooks.calls[1][2] < 5
    assert hooks.calls[3][2] == ("INTERNAL_ERROR", "ValueError: boom", "failed")
    assert world.record().step_records["second"]["error"]["host"] == HOST
    assert any(e["event"] == "step_crashed" for e in logs)


def test_progress_is_written_at_most_once_a_second_and_always_at_the_end(world: ToyWorld):
    seen: list[Any] = []

    def copy(ctx: StepContext) -> dict[str, Any]:
        for done in (1, 2, 9):
            ctx.progress(done, 10)
            seen.append(world.record().step_records["copy"].get("progress"))
        ctx.progress(10, 10)
        seen.append(world.record().step_records["copy"].get("progress"))
        return {}

    op = world.operation("toy", {"copy": copy})
    world.runner.run(toy_reservation().reservation_id, world.begin(op))
    first = {"done_bytes": 1, "total_bytes": 10}
    assert seen == [first, first, first, {"done_bytes": 10, "total_bytes": 10}]


def test_a_step_whose_worker_is_lost_each_time_fails_at_the_limit(world: ToyWorld):
    """max_interruptions (3) losses of the step's worker: the third resume fails the step
    STEP_INTERRUPTED instead of running it again."""

    class Killed(BaseException):
        pass

    def dies(ctx: StepContext) -> dict[str, Any]:
        raise Killed

    op = world.operation("toy", {"only": dies})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    for _ in range(3):
        with pytest.raises(Killed):
            world.runner.run(rid, generation)
        world.redis.delete(keys.lease(rid))
        world.published.clear()
        world.reconciler().recover(HOST)
        ((_, generation, _),) = world.published
    summary = world.runner.run(rid, generation)
    assert (summary["state"], summary["failed_step"]) == ("failed", "only")
    record = world.record()
    assert record.error is not None and record.error["code"] == "STEP_INTERRUPTED"
    assert record.error["message"] == (
        "step only was interrupted 3 times: its worker was lost each time"
    )


def test_a_resumed_run_keeps_the_plan_an_earlier_run_recorded(world: ToyWorld):
    """The worker is lost after node_status planned the load: the resumed run skips what
    the plan left out, as the first run would have."""

    class Killed(BaseException):
        pass

    ran: list[str] = []

    def plan(ctx: StepContext) -> dict[str, Any]:
        if ctx.attempts("first") == 1:
            ctx.set_plan(["first", "third"])
            raise Killed  # after the plan was recorded
        return {}  # resumed: the plan is the record's

    def second(ctx: StepContext) -> dict[str, Any]:
        ran.append("second")
        return {}

    op = world.operation("toy", {"first": plan, "second": second, "third": ok})
    rid, generation = toy_reservation().reservation_id, world.begin(op)
    with pytest.raises(Killed):
        world.runner.run(rid, generation)
    world.redis.delete(keys.lease(rid))
    world.reconciler().recover(HOST)
    ((_, again, _),) = world.published
    summary = world.runner.run(rid, again)
    assert summary["steps"]["second"] == "skipped"
    assert ran == []


def test_a_host_at_its_limit_keeps_the_wait_count_logs_and_returns_why(world: ToyWorld, logged):
    """Waiting for a host slot is not a computer wait: the record's count of computer waits
    (which sets the next busy delay) stays as it was; the log line and the task's summary
    say the limit, the delay and the reason the record gives."""
    limit = world.config.max_concurrent_loads
    for i in range(limit):
        assert HostSlot(world.redis, HOST, f"r{900 + i}.g1|n|b|1", limit=limit, ttl=30).acquire()
    op = world.operation("toy", {"only": ok})
    rid = toy_reservation().reservation_id
    generation = world.begin(op)
    world.redis.hset(keys.record(rid), "waits", 3)  # three computer waits before this one

    with logged() as logs:
        summary = world.runner.run(rid, generation)

    record = world.record()
    assert record.waits == 3
    assert record.waiting is not None and summary["reason"] == record.waiting["reason"]
    delay = world.runner.policy.host_busy_delay
    (line,) = [e for e in logs if e["event"] == "waiting_for_host_slot"]
    assert (line["limit"], line["retry_in_s"]) == (limit, delay)


def test_a_run_superseded_before_its_first_step_stops_at_the_first_step(world: ToyWorld):
    """Superseded while it waits for its computer: no step ran, so the first step (not a
    later one) records why, and the cleanup reports its progress there."""
    other = ResourceLock(
        world.redis, f"computer:{HOST}:unit-vm1", RunOwner(555, 1, "n|b|1"), ttl=30, fenced=True
    )
    assert other.acquire(wait=0)

    def undo(ctx: StepContext) -> dict[str, Any]:
        ctx.progress(1, 2)
        return {"removed": 0}

    op = world.operation("toy", {"first": ok, "second": ok}, on_abandon=undo)
    rid = toy_reservation().reservation_id
    generation = world.begin(op)
    newer_owner_begins(world)

    summary = world.runner.run(rid, generation)

    assert (summary["state"], summary["failed_step"]) == ("superseded", "first")
    record = world.record(rid)
    assert record.step_records["first"]["state"] == "superseded"
    assert record.step_records["first"].get("progress") is not None
    assert "second" not in record.step_records


def test_a_run_cancelled_before_its_first_step_fails_at_the_first_step(
    world: ToyWorld, monkeypatch: pytest.MonkeyPatch
):
    """A cancellation that is neither a lost lease nor a newer owner, before any step ran
    (here while it takes its host slot): the run fails at its first step with that reason."""

    def refused(self: object) -> bool:
        raise cancellation.Cancelled(CommandFailed("the host is shutting down", host=HOST))

    monkeypatch.setattr("vclvirt.holdings.RunHoldings.take_host_slot", refused)
    hooks = Recorded()
    runner = Runner(
        world.redis, SETTINGS, lambda _n: world.host, identity=world.identity, hooks=hooks
    )
    op = world.operation("toy", {"first": ok, "second": ok})
    summary = runner.run(toy_reservation().reservation_id, world.begin(op))
    assert (summary["state"], summary["failed_step"]) == ("failed", "first")
    # the hooks hear of the failure at a step never attempted: attempt 0
    assert [(kind, e.step, e.attempt) for kind, e, _ in hooks.calls] == [("failed", "first", 0)]
    record = world.record()
    assert record.error is not None and record.error["message"] == "the host is shutting down"


def test_an_operation_that_does_not_own_the_computer_is_not_superseded_by_its_owner(
    world: ToyWorld,
):
    """Power, snapshots, node_status: they run for a reservation while another one owns
    the computer, and are not stopped because of it (only operations that take the
    computer watch who owns it)."""
    op = world.operation("toy", {"first": ok, "second": ok}, owns_computer=False)
    rid = toy_reservation().reservation_id
    generation = world.begin(op)
    newer_owner_begins(world)
    assert world.runner.run(rid, generation)["state"] == "succeeded"


def test_a_lost_lease_cuts_the_hosts_fenced_connections(world: ToyWorld, monkeypatch):
    """The keeper that finds the lease gone closes this process's fenced connections to
    the run's host (its libvirt tunnel), so nothing more reaches the host for the run."""
    cut: list[str] = []
    monkeypatch.setattr("vclvirt.runner.cut_fenced", cut.append)
    rid = toy_reservation().reservation_id
    op = world.operation("toy", {"long": taking_the_lease(world, rid, {}, report=False)})
    assert world.runner.run(rid, world.begin(op))["state"] == "lease_lost"
    assert cut == [HOST]


def test_the_computer_lock_names_the_run_that_holds_it(world: ToyWorld):
    """Reservation, generation and the worker process: what another run's record shows
    as the holder while it waits."""
    held: list[bytes | None] = []

    def look(ctx: StepContext) -> dict[str, Any]:
        held.append(world.redis.get(keys.lock(f"computer:{HOST}:unit-vm1")))
        return {}

    op = world.operation("toy", {"only": look})
    rid = toy_reservation().reservation_id
    generation = world.begin(op)
    world.runner.run(rid, generation)
    assert held == [f"r{rid}.g{generation}|{world.identity.holder()}".encode()]


def test_a_guest_key_pinned_after_the_lease_was_lost_is_refused(world: ToyWorld):
    """Writes deep inside a step (the guest's host key) go through the run's fence too:
    once another holder has the lease, the pin is refused and nothing is pinned."""
    rid = toy_reservation().reservation_id

    def pins_late(ctx: StepContext) -> dict[str, Any]:
        world.redis.set(keys.lease(rid), "node-b|boot|1")  # taken over meanwhile
        GuestHostKeys(world.redis).pin(rid, "ssh-ed25519 AAAAlate")
        return {}

    op = world.operation("toy", {"only": pins_late})
    assert world.runner.run(rid, world.begin(op))["state"] == "lease_lost"
    assert world.redis.get(keys.guest_host_key(rid)) is None


def test_a_run_whose_steps_all_ended_before_its_worker_died_just_finishes(
    world: ToyWorld, monkeypatch
):
    """The worker died between its last step and the record's end: the run sent again
    finds no step left, runs nothing and ends the operation."""
    ran: list[str] = []

    def only(ctx: StepContext) -> dict[str, Any]:
        ran.append("only")
        return {}

    class Killed(BaseException):
        pass

    real_finish = FencedRecord.finish
    deaths = [1]

    def dies_once(self: FencedRecord, *args: Any, **kwargs: Any) -> None:
        if deaths:
            deaths.pop()
            raise Killed
        real_finish(self, *args, **kwargs)

    monkeypatch.setattr(FencedRecord, "finish", dies_once)
    op = world.operation("toy", {"only": only})
    rid = toy_reservation().reservation_id
    with pytest.raises(Killed):
        world.runner.run(rid, world.begin(op))
    world.redis.delete(keys.lease(rid))
    world.reconciler().recover(HOST)
    ((_, again, _),) = world.published
    assert world.runner.run(rid, again)["state"] == "succeeded"
    assert ran == ["only"]


def test_progress_is_paced_by_the_second_exactly(world: ToyWorld, monkeypatch):
    """Written at the first report, not again within a second, again at one second."""
    clock = [1000.0]
    monkeypatch.setattr(
        "vclvirt.runner.time", SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    )
    seen: list[Any] = []

    def copy(ctx: StepContext) -> dict[str, Any]:
        for done, at in ((1, 1000.0), (2, 1000.999), (3, 1001.0), (4, 1001.5)):
            clock[0] = at
            ctx.progress(done, 10)
            seen.append(world.record().step_records["copy"]["progress"]["done_bytes"])
        return {}

    op = world.operation("toy", {"copy": copy})
    world.runner.run(toy_reservation().reservation_id, world.begin(op))
    assert seen == [1, 1, 3, 3]


def test_what_keeps_a_lease_fails_each_broker_call_within_a_tenth_of_the_ttl(world: ToyWorld):
    """The keeper's client: at the deployed lease (30 s) every call gives up within 3 s,
    so 0.6 of the TTL leaves room for several renewals before the lease could expire."""
    ttl = Settings.model_fields["lease_ttl"].default
    runner = Runner(
        world.redis,
        SETTINGS.model_copy(update={"lease_ttl": ttl}),
        lambda _n: world.host,
        identity=world.identity,
    )
    kwargs = runner.keeping.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == ttl / 10 == 3.0
