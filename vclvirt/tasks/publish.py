"""Hand an operation's message to its host's queue: the one place messages are made."""

from __future__ import annotations

from typing import Any

from celery import Celery

from vclvirt.models import Reservation, parse_reservation
from vclvirt.operations import operation
from vclvirt.recovery import task_id
from vclvirt.state.records import ReservationStatus
from vclvirt.workers.routing import host_queue

# kombu's Redis transport consumes lower priority numbers first: an operation already
# under way (resumed, retried, waited) goes before one that has not started.
NEW, RESUMED = 5, 0


def describe(reservation: Reservation) -> str:
    """What Flower shows instead of the arguments: readable and secret-free."""
    return (
        f"reservation={reservation.reservation_id} request={reservation.request_id} "
        f"computer={reservation.computer.hostname} image={reservation.image.name} "
        f"host={reservation.host}"
    )


class Publisher:
    """Sends operations' messages through one Celery app."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish(
        self,
        operation_name: str,
        reservation: Reservation,
        generation: int,
        *,
        resumed: bool = False,
        producer: Any = None,
    ) -> str:
        """Send the operation's message for this generation; returns the task id."""
        identifier = task_id(reservation.reservation_id, generation)
        self.app.send_task(
            operation(operation_name).task_name,
            kwargs={
                "reservation_id": reservation.reservation_id,
                "generation": generation,
                "host": reservation.host,
                "computer": reservation.computer.hostname,
                "request_id": reservation.request_id,
            },
            queue=host_queue(reservation.host),
            task_id=identifier,
            priority=RESUMED if resumed else NEW,
            kwargsrepr=f"{describe(reservation)} generation={generation}",
            producer=producer,
        )
        return identifier

    def publish_many(self, messages: list[tuple[str, Reservation, int]]) -> None:
        """Send many operations' messages in pipelined batches (a bulk enqueue)."""
        with self.app.producer_or_acquire() as producer, producer.batch():
            for operation_name, reservation, generation in messages:
                self.publish(operation_name, reservation, generation, producer=producer)

    def publish_record(self, record: ReservationStatus, generation: int, resumed: bool) -> None:
        """Recovery's publisher: the operation a record holds, sent again."""
        reservation = parse_reservation(record.reservation)
        self.publish(record.operation, reservation, generation, resumed=resumed)
