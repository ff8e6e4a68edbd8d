"""Runs one dispatched operation of a reservation in this process: claim its lease, take
the computer, run the steps that have not completed, record every transition.

Independent of Celery (a task only hands over the message's reservation id and
generation). What happens when things go wrong is decided here and only here:
transient errors wait with backoff (retrypolicy.py) until their deadline,
permanent ones fail the operation at once, a newer reservation for the computer
supersedes it, and a lost lease stops it without another write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
import structlog

from vclvirt import cancellation
from vclvirt.cancellation import Cancelled
from vclvirt.config.settings import Settings
from vclvirt.errors import (
    InternalError,
    LeaseLost,
    StepInterrupted,
    Superseded,
    TransientError,
    VclvirtError,
)
from vclvirt.holdings import RunHoldings
from vclvirt.hooks import Hooks, LogHooks, MetricsHooks, RunHooks, StepEvent
from vclvirt.hypervisor.connection import cut_fenced
from vclvirt.identity import Identity
from vclvirt.locks import RunOwner
from vclvirt.models import parse_reservation
from vclvirt.operation import StepContext
from vclvirt.operations import operation
from vclvirt.provisioning.host import Host
from vclvirt.recovery import (
    CALL_DEADLINE,
    LeaseKeeper,
    holder_is_dead,
)
from vclvirt.retrypolicy import RetryPolicy
from vclvirt.state.client import deadline_client
from vclvirt.state.computers import ComputerOwners
from vclvirt.state.fence import FencedRecord, RecordFence, writing_as
from vclvirt.state.leases import Holder, Leases
from vclvirt.state.machine import State
from vclvirt.state.records import ReservationStatus, now
from vclvirt.state.steps import StepEntry
from vclvirt.state.stores import Stores

log = structlog.get_logger(__name__)


class Runner:
    """Runs operations for the hosts of one process (one per worker pool process)."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        hosts: Callable[[str], Host],
        *,
        identity: Identity | None = None,
        hooks: RunHooks | None = None,
        stores: Stores | None = None,
    ) -> None:
        self.redis = client
        self.settings = settings
        self.hosts = hosts
        self.identity = identity or Identity.client()
        self.hooks = hooks or Hooks([LogHooks(), MetricsHooks()])
        self.policy = RetryPolicy.from_settings(settings)
        stores = stores or Stores.on(client, settings)
        self.records, self.leases = stores.records, stores.leases
        # What keeps a lease alive fails fast instead of riding out a broker restart.
        self.keeping = deadline_client(client, settings.lease_ttl * CALL_DEADLINE)

    def run(
        self, reservation_id: int, generation: int, *, task_id: str | None = None
    ) -> dict[str, Any]:
        """Run the operation the record holds at `generation`, unless someone else does or
        did (a duplicate or stale message is dropped)."""
        me = self.identity.holder()
        claim = self.leases.claim(reservation_id, generation, me)
        if not claim.ok and claim.holder and holder_is_dead(claim.holder, me):
            claim = self.leases.claim(reservation_id, generation, me, take_over=claim.holder)
        if not claim.ok:
            log.info(
                "message_dropped",
                reservation_id=reservation_id,
                generation=generation,
                reason=claim.reason,
                holder=claim.holder,
            )
            return {"dropped": claim.reason}
        record = self.records.get(reservation_id)
        if record is None or record.generation != generation:  # changed since the claim
            return {"dropped": "missing" if record is None else "stale"}
        return OperationRun(self, record, me, task_id).execute()


class OperationRun:
    """One claimed run of a reservation's operation."""

    def __init__(
        self, runner: Runner, record: ReservationStatus, me: Holder, task_id: str | None
    ) -> None:
        self.runner, self.record, self.me, self.task_id = runner, record, me, task_id
        self.settings, self.policy = runner.settings, runner.policy
        self.rid, self.host = record.reservation_id, record.host
        self.reservation = parse_reservation(record.reservation)
        self.computer = self.reservation.computer.short_name
        self.operation = operation(record.operation)
        self.plan = record.plan
        # Every write below carries this run's fencing token (state/fence.py).
        self.writes = FencedRecord(
            runner.redis,
            RecordFence(self.rid, self.host, self.computer, record.generation, str(me)),
        )
        self.entries = {
            step: StepEntry(self.writes, step, record.step_records.get(step, {}))
            for step in record.steps
        }
        self.current: str | None = None
        self.keeper: LeaseKeeper
        self.holdings: RunHoldings
        self.host_fenced = False

    def execute(self) -> dict[str, Any]:
        structlog.contextvars.bind_contextvars(
            reservation_id=self.rid,
            request_id=self.reservation.request_id,
            host=self.host,
            computer=self.reservation.computer.hostname,
            operation=self.operation.name,
        )
        watch = (self.host, self.computer) if self.operation.owns_computer else None
        keeping = self.runner.keeping
        with LeaseKeeper(
            Leases(keeping, ttl_seconds=self.settings.lease_ttl),
            ComputerOwners(keeping),
            self.rid,
            self.me,
            ttl=self.settings.lease_ttl,
            watch_owner=watch,
            on_lost=lambda: cut_fenced(self.host),
        ) as keeper:
            self.keeper = keeper
            self.holdings = RunHoldings(
                self.runner.keeping,
                keeper,
                host=self._host.config,
                computer=self.computer,
                owner=RunOwner(self.rid, self.record.generation, str(self.me)),
                ttl=self.settings.lease_ttl,
            )
            try:
                with cancellation.scope(keeper.token), writing_as(self.writes):
                    if self.operation.locks_computer and not self.holdings.take_computer():
                        return self._wait_for_computer()
                    if not self.holdings.take_host_slot():
                        return self._wait_for_host()
            except Cancelled as cancelled:
                return self._cancelled(cancelled.reason)
            # From here to the end, failure and cleanup included, the host sees our token.
            with self.holdings.behind_the_fence(), writing_as(self.writes):
                try:
                    with cancellation.scope(keeper.token):
                        return self._run_steps()
                except Cancelled as cancelled:
                    return self._cancelled(cancelled.reason)

    @property
    def _host(self) -> Host:
        return self.runner.hosts(self.host)

    def _wait_for_computer(self) -> dict[str, Any]:
        """Another reservation works on the computer: free this slot, come back later."""
        self.keeper.check()  # superseded while waiting: end now instead
        waits = self.record.waits + 1
        delay = self.policy.busy_delay(waits)
        held_by = self.holdings.held_by
        why = f"computer {self.computer} is busy ({held_by})"
        self.writes.wait(State.WAITING, time.time() + delay, why, waits)
        log.info("computer_busy", held_by=held_by, retry_in_s=delay)
        return self._summary(State.WAITING, reason=why)

    def _wait_for_host(self) -> dict[str, Any]:
        """The host runs as many operations as it may: free this worker process (and the
        computer) and come back shortly, so that a full or slow host never holds a process
        another host's loads need."""
        self.keeper.check()
        limit = self._host.config.max_concurrent_loads
        delay = self.policy.host_busy_delay
        why = f"host {self.host} runs {limit} operations already (its limit)"
        self.writes.wait(State.WAITING, time.time() + delay, why, self.record.waits)
        log.info("waiting_for_host_slot", limit=limit, retry_in_s=delay)
        return self._summary(State.WAITING, reason=why)

    # -- steps -------------------------------------------------------------------------

    def _run_steps(self) -> dict[str, Any]:
        first = self.record.next_step()
        todo = self.record.steps[self.record.steps.index(first) :] if first else []
        for name in todo:
            self.current = name  # cancelled from here on: this step records why
            self.keeper.check()
            entry = self.entries[name]
            if self.plan is not None and name not in self.plan:
                entry.skipped("node_status says it is not needed")
                continue
            if entry.state == "running":  # the worker running it was lost
                entry.data["interrupted"] = int(entry.data.get("interrupted", 0)) + 1
                if self.policy.interrupted_too_often(entry.data["interrupted"]):
                    return self._fail(
                        name,
                        StepInterrupted(
                            f"step {name} was interrupted {entry.data['interrupted']} times: "
                            "its worker was lost each time"
                        ),
                    )
            ended = self._run_step(name, entry)
            if ended is not None:
                return ended
        self.writes.finish(State.SUCCEEDED)
        log.info("operation_succeeded")
        return self._summary(State.SUCCEEDED)

    def _run_step(self, name: str, entry: StepEntry) -> dict[str, Any] | None:
        """Run one step; None when it succeeded, else how the operation ended for now."""
        self.current = name
        structlog.contextvars.bind_contextvars(step=name)
        started = time.monotonic()
        entry.started(task_id=self.task_id, worker=self.me.node, holder=str(self.me))
        self.runner.hooks.step_started(self._event(name))
        try:
            if self.holdings.fence is not None and not self.host_fenced:
                # The host records our token before the first step acts, ending an older
                # holder's processes there; an unreachable host is this step's error.
                self._host.access.fence_host()
                self.host_fenced = True
            result = self.operation.body(name)(self._context(entry))
        except TransientError as error:
            return self._transient(name, entry, error)
        except VclvirtError as error:
            return self._fail(name, error)
        except Exception as error:
            log.exception("step_crashed")
            return self._fail(name, InternalError(f"{type(error).__name__}: {error}"))
        entry.succeeded(result)
        self.runner.hooks.step_succeeded(self._event(name), time.monotonic() - started, result)
        return None

    def _event(self, step: str) -> StepEvent:
        attempt = int(self.entries[step].data.get("attempt", 0))
        return StepEvent(self.rid, self.host, step, attempt)

    def _context(self, entry: StepEntry) -> StepContext:
        writes = self.writes

        def set_plan(steps: list[str]) -> None:
            self.plan = steps
            writes.set_plan(steps)

        return StepContext(
            self.runner.hosts,
            self.reservation,
            self.record.params,
            result_of=lambda step: self.entries[step].data.get("result"),
            attempts=lambda step: int(self.entries[step].data.get("attempt", 0)),
            progress=self._progress(entry),
            set_plan=set_plan,
            set_outcome=writes.set_outcome,
            set_computer_image=writes.set_computer_image,
        )

    def _progress(self, entry: StepEntry) -> Callable[[int, int], None]:
        """Bytes done / total into the step's record at most once a second; a cancelled
        operation stops here, in the middle of a copy."""
        last = [0.0]

        def report(done: int, total: int) -> None:
            cancellation.check()
            if time.monotonic() - last[0] >= 1.0 or done >= total:
                last[0] = time.monotonic()
                entry.progress(done_bytes=done, total_bytes=total)

        return report

    # -- how an operation ends ---------------------------------------------------------

    def _summary(self, state: str, **details: Any) -> dict[str, Any]:
        """What the task returns (Flower shows it): the outcome and every step's state."""
        steps = {name: entry.state or "pending" for name, entry in self.entries.items()}
        return {"reservation_id": self.rid, "state": state, **details, "steps": steps}

    def _transient(self, name: str, entry: StepEntry, error: TransientError) -> dict[str, Any]:
        error.with_context(host=self.host, reservation_id=self.rid)
        failures = int(entry.data.get("transient_failures", 0)) + 1
        entry.data["transient_failures"] = failures
        delay = self.policy.delay(failures)
        first = float(entry.data.get("transient_since") or now())
        if self.policy.gives_up(first, delay, now()):
            error.hint = (
                f"{error.hint}. Retried for {now() - first:.0f}s without success; once the "
                f"cause is fixed, retry the reservation (vclvirt retry {self.rid})"
            )
            return self._fail(name, error)
        entry.retrying(error.to_dict(), delay)
        why = f"step {name} failed ({error.code}); retried in {delay:.0f}s"
        self.writes.wait(State.RETRYING, time.time() + delay, why)
        self.runner.hooks.step_retrying(self._event(name), error, delay)
        return self._summary(State.RETRYING, retry_in_s=round(delay, 1))

    def _fail(
        self, name: str, error: VclvirtError, *, state: State = State.FAILED
    ) -> dict[str, Any]:
        error.with_context(host=self.host, reservation_id=self.rid)
        self.entries[name].failed(error.to_dict(), state=state)
        cleanup = self._abandon()
        details = {**error.to_dict(), **({"cleanup": cleanup} if cleanup else {})}
        self.writes.finish(state, step=name, error=details)
        self.runner.hooks.step_failed(self._event(name), error, state)
        return self._summary(state, failed_step=name, error=str(error))

    def _abandon(self) -> dict[str, Any]:
        """What the operation created is removed when it fails or is superseded."""
        if self.operation.on_abandon is None:
            return {}
        try:
            with cancellation.scope(cancellation.CancelToken()):  # cleanup runs to its end
                return self.operation.on_abandon(
                    self._context(self.entries[self.current or self.record.steps[0]])
                )
        except Cancelled as refused:  # the host's fence: a newer holder has the computer
            log.warning("cleanup_fenced", error=str(refused.reason))
            return {"fenced": refused.reason.message}
        except Exception as error:
            log.warning("cleanup_failed", error=str(error))
            return {"failed": str(error)}

    def _cancelled(self, reason: VclvirtError) -> dict[str, Any]:
        if isinstance(reason, LeaseLost):
            # Someone else may run it now: write nothing, touch nothing.
            log.warning("lease_lost", error=str(reason), code=reason.code)
            return self._summary("lease_lost", error=str(reason))
        if isinstance(reason, Superseded):
            return self._fail(self.current or self.record.steps[0], reason, state=State.SUPERSEDED)
        return self._fail(self.current or self.record.steps[0], reason)
