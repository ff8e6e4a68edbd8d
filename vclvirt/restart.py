"""Running a failed reservation again from a step: what `vclvirt retry`, the API and the
control task (sent from Flower) share."""

from __future__ import annotations

from vclvirt.errors import InvalidInput, UnknownReservation
from vclvirt.models import parse_reservation
from vclvirt.state.records import RecordStore, ReservationStatus
from vclvirt.tasks.publish import Publisher


def restart(
    records: RecordStore, publisher: Publisher, reservation_id: int, from_step: str | None
) -> int:
    """Begin the record's next generation at the step that failed (or `from_step`), reusing
    what earlier steps recorded, and send it ahead of new work; the generation.
    ResourceBusy while it is queued or running."""
    record = records.get(reservation_id)
    if record is None:
        raise UnknownReservation(
            f"no status record for reservation {reservation_id}", reservation_id=reservation_id
        )
    step = from_step or _restart_step(record)
    if step not in record.steps:
        raise InvalidInput(
            f"from_step: {step!r} is not a step of {record.operation} ({', '.join(record.steps)})",
            field="from_step",
            reservation_id=reservation_id,
        )
    generation = records.restart_from(reservation_id, step)
    reservation = parse_reservation(record.reservation)
    publisher.publish(record.operation, reservation, generation, resumed=True)
    return generation


def _restart_step(record: ReservationStatus) -> str:
    """The failed step, or earlier when the failure removed what later steps need (a load
    whose overlay was removed starts again by clearing the computer)."""
    step = record.failed_step or record.steps[0]
    cleanup = (record.error or {}).get("cleanup") or {}
    if record.operation == "load" and cleanup.get("removed_files"):
        return "delete_existing_domains"
    return step
