"""The scheduler's Python API: enqueue a reservation's operations, read their status."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from vclvirt import composition
from vclvirt.config.inventory import get_inventory
from vclvirt.config.settings import get_settings
from vclvirt.errors import InvalidInput, UnknownReservation, VclvirtError
from vclvirt.models import Reservation, check_image_name, parse_reservation
from vclvirt.operations import operation
from vclvirt.recovery import no_worker, task_id
from vclvirt.restart import restart
from vclvirt.state.machine import State
from vclvirt.state.records import RecordStore, ReservationStatus, Viewed
from vclvirt.state.stages import Stage, StageStore
from vclvirt.workers.routing import host_queue

PUBLISH_CHUNK = 10  # messages per pipelined publish in a bulk enqueue

ReservationInput = Reservation | dict[str, Any] | str | bytes


def _client() -> redis.Redis:
    return composition.current().redis


def _records() -> RecordStore:
    return composition.current().records


@dataclass(frozen=True)
class Handle:
    """What an enqueue returns: the reservation id and its operation's task id."""

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


@dataclass(frozen=True)
class _Checked:
    """A request that passed validation: what `_send` needs."""

    reservation: Reservation
    operation: str
    params: dict[str, Any]


def _check(
    reservation: ReservationInput, operation_name: str, params: dict[str, Any] | None
) -> _Checked:
    """Everything that can be refused before anything is written or sent."""
    op = operation(operation_name)
    if not isinstance(reservation, Reservation):
        reservation = parse_reservation(reservation)
    get_inventory().host(reservation.host)  # unknown host: clear error, nothing enqueued
    return _Checked(reservation, op.name, op.check(reservation, params))


def _begin(checked: _Checked) -> int:
    """The record of the operation, begun (ResourceBusy if one is in flight)."""
    op = operation(checked.operation)
    return _records().begin(
        checked.reservation,
        op.name,
        list(op.step_names),
        checked.params,
        owns_computer=op.owns_computer,
    )


def _send(checked: _Checked) -> Handle:
    generation = _begin(checked)
    composition.current().publisher.publish(checked.operation, checked.reservation, generation)
    rid = checked.reservation.reservation_id
    return Handle(rid, task_id(rid, generation))


def load(reservation: ReservationInput) -> Handle:
    """Validate and enqueue the load on the reservation's host queue."""
    return _send(_check(reservation, "load", None))


def load_many(reservations: Sequence[ReservationInput]) -> list[Handle | VclvirtError]:
    """Validate every load first (one invalid: InvalidInput naming its index, nothing
    enqueued), then enqueue each; a reservation already in flight is answered with its
    error in its place, the others are enqueued."""
    checked: list[_Checked] = []
    for index, item in enumerate(reservations):
        try:
            checked.append(_check(item, "load", None))
        except InvalidInput as error:
            raise InvalidInput(
                f"[{index}]: {error.message}",
                field=f"[{index}]" + (f".{error.field}" if error.field else ""),
            ) from None
    answers: list[Handle | VclvirtError] = []
    # Sent a chunk at a time, so the first loads start while the rest are still being
    # begun; a message lost here is sent again by recovery (its record says queued).
    for start in range(0, len(checked), PUBLISH_CHUNK):
        begun = []
        for request in checked[start : start + PUBLISH_CHUNK]:
            try:
                generation = _begin(request)
            except VclvirtError as error:
                answers.append(error)
                continue
            rid = request.reservation.reservation_id
            begun.append((request.operation, request.reservation, generation))
            answers.append(Handle(rid, task_id(rid, generation)))
        composition.current().publisher.publish_many(begun)
    return answers


def capture(reservation: ReservationInput) -> Handle:
    """Enqueue the capture; the reservation's state must be image or checkpoint."""
    return _send(_check(reservation, "capture", None))


def run(
    reservation: ReservationInput, operation_name: str, params: dict[str, Any] | None = None
) -> Handle:
    """Enqueue any operation of vclvirt.operations by name, with its parameters."""
    return _send(_check(reservation, operation_name, params))


def retry(reservation_id: int, from_step: str | None = None) -> Handle:
    """Run a failed reservation again from the step that failed (or `from_step`), reusing
    what the earlier steps recorded. ResourceBusy while it is queued or running."""
    root = composition.current()
    generation = restart(root.records, root.publisher, reservation_id, from_step)
    return Handle(reservation_id, task_id(reservation_id, generation))


def status(reservation_id: int) -> ReservationStatus | None:
    """The reservation's status record, or None if it was never enqueued (or expired);
    read in one round trip, and never written (only the reconciler fails a record).

    While no live worker serves its host, `waiting` says so and the state reads
    "waiting"; past the deadline `waiting.abandoned` is true until a reconciler fails it."""
    viewed = _records().view([reservation_id])
    return _shown(viewed[0]) if viewed else None


def known_status(reservation_id: int) -> ReservationStatus:
    """The reservation's status record; UnknownReservation if there is none."""
    record = status(reservation_id)
    if record is None:
        raise UnknownReservation(
            f"no status record for reservation {reservation_id}", reservation_id=reservation_id
        )
    return record


def _shown(viewed: Viewed) -> ReservationStatus:
    """The record with what a reader needs to know beside it (a missing worker)."""
    record = viewed.record
    waiting = no_worker(record, viewed.last_seen, get_settings())
    if waiting is not None:
        record.state, record.waiting = State.WAITING, waiting.to_dict()
    return record


def failed(limit: int = 100) -> list[ReservationStatus]:
    """Reservations whose last operation failed, or that wait for a worker that is not
    there, most recent first (of the newest 1,000, read in one round trip)."""
    shown = (_shown(viewed) for viewed in _records().recent())
    return [record for record in shown if record.state in (State.FAILED, State.WAITING)][:limit]


# -- pre-staging (staging.py) ------------------------------------------------------------

STAGE_TASK = "vclvirt.stage"


def stage(image: str, hosts: Sequence[str] = ()) -> dict[str, Stage]:
    """Put image's master on hosts (all of the inventory's when none are named) ahead of
    their loads: one stage per host, joined when one is under way. The image name and
    every host are checked before anything is written."""
    check_image_name(image)
    inventory = get_inventory()
    chosen = list(dict.fromkeys(hosts)) or sorted(inventory.hosts)
    for name in chosen:
        inventory.host(name)  # UnknownHost, naming it, before anything is written
    root = composition.current()
    store = StageStore(root.redis)
    for name in chosen:
        stage_id, new = store.begin(image, name)
        if new:
            root.app.send_task(
                STAGE_TASK,
                kwargs={"image": image, "host": name, "stage": stage_id},
                queue=host_queue(name),
                task_id=f"vclvirt-stage-{stage_id}",
                kwargsrepr=f"image={image} host={name}",
            )
    return stages(image, chosen)


def stages(image: str, hosts: Sequence[str] = ()) -> dict[str, Stage]:
    """The stages of image on hosts (every host with one when none are named)."""
    check_image_name(image)
    store = StageStore(composition.current().redis)
    names = hosts or sorted(get_inventory().hosts)
    found = {name: store.get(image, name) for name in names}
    return {name: stage for name, stage in found.items() if stage is not None}
