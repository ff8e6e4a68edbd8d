"""How every step runs: record, lock the computer, call the provisioner, classify errors.

Retry policy lives here and only here: transient errors are retried with
exponential backoff and jitter, permanent ones fail the reservation at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import structlog
from celery import Task
from celery.canvas import Signature

from vclvirt.config.settings import get_settings
from vclvirt.errors import (
    InternalError,
    PermanentError,
    Superseded,
    TransientError,
    VclvirtError,
    WrongWorker,
)
from vclvirt.locks import resource_lock
from vclvirt.metrics import STEP_DURATION, STEP_FAILURES
from vclvirt.models import Reservation, parse_reservation
from vclvirt.provisioner import Provisioner
from vclvirt.status import StatusStore
from vclvirt.workers.app import app
from vclvirt.workers.context import provisioner_for, status_store, worker_hosts
from vclvirt.workers.routing import host_queue

log = structlog.get_logger(__name__)

StepBody = Callable[[Provisioner, Reservation, dict[str, Any]], dict[str, Any]]


class MissingStepResult(PermanentError):
    """A step needs what an earlier step recorded, and it is not there."""

    code = "MISSING_STEP_RESULT"
    default_hint = "Run the whole operation again"


class StepTask(Task):  # type: ignore[misc]
    """Base of all step tasks: late ack, redelivered if its worker dies."""

    acks_late = True
    reject_on_worker_lost = True
    max_retries = get_settings().max_retries


def retry_countdown(retries: int) -> float:
    """Exponential backoff with full jitter, at least one second."""
    settings = get_settings()
    ceiling = min(settings.retry_backoff_max, settings.retry_backoff * (2**retries))
    return max(1.0, random.uniform(0, ceiling))  # noqa: S311 - jitter, not security


def run_step(
    task: StepTask,
    step: str,
    reservation_data: dict[str, Any],
    body: StepBody,
    params: dict[str, Any] | None = None,
) -> Any:
    """Run one step of a reservation and keep its status record true."""
    reservation = parse_reservation(reservation_data)
    rid, host = reservation.reservation_id, reservation.host
    store = status_store()
    computer = reservation.computer.short_name
    attempt = task.request.retries + 1
    try:
        serving = worker_hosts()
        if serving is not None and host not in serving:
            raise WrongWorker(
                f"step {step} for host {host} reached the worker of {', '.join(sorted(serving))}"
            )
        with resource_lock(store.redis, f"computer:{host}:{computer}", task.request.id or step):
            owner = store.owner_of(host, computer)
            if owner is not None and owner != rid:
                raise Superseded(f"reservation {owner} now owns computer {computer}")
            record = store.get(rid)
            last = record is not None and record.last_step == step
            if not store.planned(rid, step):
                store.step_skipped(rid, step, last=last)
                log.info("step_skipped", reason="node_status says it is not needed")
                return {"skipped": True}
            started = time.monotonic()
            store.step_started(
                rid, step, task_id=task.request.id, worker=task.request.hostname, attempt=attempt
            )
            log.info("step_started", attempt=attempt)
            result = body(provisioner_for(host), reservation, params or {})
        store.step_succeeded(rid, step, result, last=last)
        STEP_DURATION.labels(step=step, host=host).observe(time.monotonic() - started)
        log.info("step_succeeded", attempt=attempt, last=last)
        return {k: v for k, v in result.items() if k != "xml"}
    except TransientError as error:
        error.with_context(host=host, reservation_id=rid)
        if task.request.retries < task.max_retries:
            countdown = retry_countdown(task.request.retries)
            store.step_retrying(rid, step, error.to_dict(), countdown)
            log.warning(
                "step_retrying",
                error=str(error),
                code=error.code,
                attempt=attempt,
                retry_in_s=round(countdown, 1),
            )
            raise task.retry(exc=error, countdown=countdown) from None
        _fail(store, rid, step, error, host)
        raise
    except VclvirtError as error:
        error.with_context(host=host, reservation_id=rid)
        _fail(store, rid, step, error, host)
        raise
    except Exception as error:
        wrapped = InternalError(f"{type(error).__name__}: {error}", host=host, reservation_id=rid)
        log.exception("step_crashed")
        _fail(store, rid, step, wrapped, host)
        raise wrapped from error


def _fail(store: StatusStore, rid: int, step: str, error: VclvirtError, host: str) -> None:
    state = "superseded" if isinstance(error, Superseded) else "failed"
    STEP_FAILURES.labels(step=step, host=host, code=error.code).inc()
    store.step_failed(rid, step, error.to_dict(), state=state)
    log.error("step_failed", error=str(error), code=error.code)


def copy_progress(reservation: Reservation, step: str) -> Callable[[int, int], None]:
    """A progress callback writing bytes done / total into the step's record, at most 1/s."""
    store, rid = status_store(), reservation.reservation_id
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or done >= total:
            last[0] = now
            store.step_progress(rid, step, done_bytes=done, total_bytes=total)

    return report


def step_task(prefix: str, step: str, body: StepBody) -> Any:
    """Register `<prefix>.<step>` as a Celery task running `body` through run_step."""

    @app.task(name=f"{prefix}.{step}", base=StepTask, bind=True)
    def task(
        self: StepTask, reservation: dict[str, Any], params: dict[str, Any] | None = None
    ) -> Any:
        return run_step(self, step, reservation, body, params)

    task.__doc__ = f"Step {step!r} of a reservation ({prefix})."
    return task


def describe(reservation: Reservation) -> str:
    """What Flower shows instead of the argument dict: readable and secret-free."""
    return (
        f"reservation={reservation.reservation_id} request={reservation.request_id} "
        f"computer={reservation.computer.hostname} image={reservation.image.name} "
        f"host={reservation.host}"
    )


def routed(task: Any, reservation: Reservation, params: dict[str, Any] | None = None) -> Signature:
    """An immutable signature of the task for this reservation, on its host's queue."""
    kwargs: dict[str, Any] = {"reservation": reservation.model_dump(mode="json")}
    if params:
        kwargs["params"] = params
    summary = describe(reservation) + "".join(f" {k}={v}" for k, v in (params or {}).items())
    return task.si(**kwargs).set(queue=host_queue(reservation.host), kwargsrepr=summary)
