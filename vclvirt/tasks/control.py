"""Tasks any worker runs from the shared control queue (e.g. sent from Flower)."""

from __future__ import annotations

from typing import Any

from vclvirt.workers.app import app


@app.task(name="vclvirt.run_reservation", acks_late=True)
def run_reservation(reservation_id: int, from_step: str | None = None) -> dict[str, Any]:
    """Re-run a failed reservation from its failed step (or `from_step`): Flower has no
    retry button, so operators send this task by name."""
    from vclvirt import dispatch

    handle = dispatch.retry(int(reservation_id), from_step)
    return {"reservation_id": handle.reservation_id, "task_id": handle.task_id}
