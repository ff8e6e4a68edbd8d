"""Tasks any worker runs from the shared control queue (e.g. sent from Flower)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery

from vclvirt.recovery import task_id
from vclvirt.restart import restart

if TYPE_CHECKING:
    from vclvirt.composition import Root


def register(app: Celery, root: Root) -> None:
    @app.task(name="vclvirt.run_reservation", acks_late=True)
    def run_reservation(reservation_id: int, from_step: str | None = None) -> dict[str, Any]:
        """Re-run a failed reservation from its failed step (or `from_step`): Flower has
        no retry button, so operators send this task by name."""
        rid = int(reservation_id)
        generation = restart(root.records, root.publisher, rid, from_step)
        return {"reservation_id": rid, "task_id": task_id(rid, generation)}
