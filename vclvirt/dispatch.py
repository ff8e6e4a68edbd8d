"""The scheduler's Python API: enqueue a reservation's load, read its status."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis

from vclvirt.config.inventory import get_inventory
from vclvirt.config.settings import get_settings
from vclvirt.errors import InvalidInput, ResourceBusy, UnknownReservation
from vclvirt.models import Reservation, parse_reservation
from vclvirt.status import ReservationStatus, StatusStore


@lru_cache(maxsize=1)
def _store() -> StatusStore:
    settings = get_settings()
    return StatusStore(
        redis.Redis.from_url(settings.broker_url), ttl_seconds=settings.status_ttl_days * 86400
    )


@dataclass(frozen=True)
class Handle:
    """What `load` and `run` return: the reservation id and the last task's id."""

    reservation_id: int
    task_id: str

    def status(self) -> ReservationStatus | None:
        return status(self.reservation_id)

    def wait(
        self,
        timeout: float = 3600.0,
        on_change: Callable[[ReservationStatus], None] | None = None,
        poll: float = 0.5,
    ) -> ReservationStatus:
        """Block until the reservation finishes; `on_change` sees every new status."""
        deadline = time.monotonic() + timeout
        seen: Any = None
        while True:
            current = status(self.reservation_id)
            if current is not None:
                snapshot = current.to_dict()
                if snapshot != seen and on_change is not None:
                    on_change(current)
                seen = snapshot
                if current.finished:
                    return current
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"reservation {self.reservation_id} did not finish in {timeout:.0f}s"
                )
            time.sleep(poll)


def _enqueue(
    reservation: Reservation | dict[str, Any] | str | bytes,
    operation: str,
    params: dict[str, Any] | None = None,
) -> Handle:
    from vclvirt.tasks.chains import signature_for, steps_of

    if not isinstance(reservation, Reservation):
        reservation = parse_reservation(reservation)
    get_inventory().host(reservation.host)  # unknown host: clear error, nothing enqueued
    current = _store().get(reservation.reservation_id)
    if current is not None and not current.finished:
        raise ResourceBusy(
            f"reservation {reservation.reservation_id} is still running {current.operation} "
            f"(step {current.current_step or 'queued'})",
            host=reservation.host,
            reservation_id=reservation.reservation_id,
            hint="Wait for it to finish (vclvirt status), then try again",
        )
    _store().begin(reservation, operation, steps_of(operation), params)
    result = signature_for(operation, reservation, params=params).apply_async()
    return Handle(reservation.reservation_id, result.id)


def load(reservation: Reservation | dict[str, Any] | str | bytes) -> Handle:
    """Validate and enqueue the load chain on the reservation's host queue."""
    return _enqueue(reservation, "load")


def capture(reservation: Reservation | dict[str, Any] | str | bytes) -> Handle:
    """Enqueue the capture chain; the reservation's state must be image or checkpoint."""
    if not isinstance(reservation, Reservation):
        reservation = parse_reservation(reservation)
    if reservation.state not in ("image", "checkpoint"):
        raise InvalidInput(
            f"state: a capture needs state image or checkpoint, not {reservation.state!r}"
        )
    return _enqueue(reservation, "capture")


def run(
    reservation: Reservation | dict[str, Any] | str | bytes,
    operation: str,
    params: dict[str, Any] | None = None,
) -> Handle:
    """Enqueue a single operation: node_status, power_status, power_on, power_off,
    power_reset, unload, post_maintenance_action or snapshot_{create,list,revert,delete}."""
    from vclvirt.tasks.operations import OPERATIONS

    if operation not in OPERATIONS:
        raise InvalidInput(f"unknown operation {operation!r}; known: {', '.join(OPERATIONS)}")
    return _enqueue(reservation, operation, params)


def retry(reservation_id: int, from_step: str | None = None) -> Handle:
    """Run a failed reservation again from the step that failed (or `from_step`), reusing
    what the earlier steps recorded."""
    from vclvirt.tasks.chains import signature_for

    record = _store().get(reservation_id)
    if record is None:
        raise UnknownReservation(
            f"no status record for reservation {reservation_id}", reservation_id=reservation_id
        )
    if record.state != "failed":
        raise InvalidInput(
            f"reservation {reservation_id} is {record.state}; only failed reservations are retried",
            reservation_id=reservation_id,
            hint="Enqueue the operation again instead (vclvirt load ...)",
        )
    step = from_step or record.failed_step or record.steps[0]
    if step not in record.steps:
        raise InvalidInput(
            f"from_step: {step!r} is not a step of {record.operation} ({', '.join(record.steps)})",
            reservation_id=reservation_id,
        )
    reservation = parse_reservation(record.reservation)
    owner = _store().owner_of(reservation.host, reservation.computer.short_name)
    if owner not in (None, reservation_id):
        raise ResourceBusy(
            f"computer {reservation.computer.short_name} now belongs to reservation {owner}",
            host=reservation.host,
            reservation_id=reservation_id,
            hint="The newer reservation owns the computer; nothing to retry",
        )
    steps = record.steps[record.steps.index(step) :]
    _store().restart_from(reservation_id, step)
    signature = signature_for(record.operation, reservation, steps, record.params or None)
    result = signature.apply_async()
    return Handle(reservation_id, result.id)


def failed(limit: int = 100) -> list[ReservationStatus]:
    """Reservations whose last operation failed, most recent first."""
    return _store().failed(limit)


def status(reservation_id: int) -> ReservationStatus | None:
    """The reservation's status record, or None if it was never enqueued (or expired)."""
    return _store().get(reservation_id)
