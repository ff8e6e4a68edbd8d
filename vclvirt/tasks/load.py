"""The load chain: delete_existing_domains → pre_define → generate_xml → define → power_on
→ post_load, every step routed to the host's queue.

pre_define runs before generate_xml so the disk bus and NIC model come from the
master's reference XML even on the first load on a host (fixes D1).
"""

from __future__ import annotations

from typing import Any

from celery import chain
from celery.canvas import Signature

from vclvirt.errors import PermanentError
from vclvirt.models import Reservation
from vclvirt.provisioner import Provisioner
from vclvirt.tasks.base import StepTask, run_step
from vclvirt.workers.app import app
from vclvirt.workers.context import status_store
from vclvirt.workers.routing import host_queue

LOAD_STEPS = [
    "delete_existing_domains",
    "pre_define",
    "generate_xml",
    "define",
    "power_on",
    "post_load",
]


def _define(p: Provisioner, r: Reservation) -> dict[str, Any]:
    generated = status_store().step_result(r.reservation_id, "generate_xml")
    if not generated or "xml" not in generated:
        raise PermanentError(
            "no generated XML recorded for this reservation",
            hint="Run the load again from generate_xml",
        )
    return p.define(r, generated["xml"])


_BODIES = {
    "delete_existing_domains": lambda p, r: p.delete_existing_domains(r),
    "pre_define": lambda p, r: p.pre_define(r),
    "generate_xml": lambda p, r: p.generate_xml(r),
    "define": _define,
    "power_on": lambda p, r: p.power_on(r),
    "post_load": lambda p, r: p.post_load(r),
}


def _register(step: str) -> Any:
    body = _BODIES[step]

    @app.task(name=f"vclvirt.load.{step}", base=StepTask, bind=True)
    def task(self: StepTask, reservation: dict[str, Any]) -> Any:
        return run_step(self, step, reservation, body)

    task.__doc__ = f"Load step {step!r} of a reservation."
    return task


TASKS = {step: _register(step) for step in LOAD_STEPS}


def describe(reservation: Reservation) -> str:
    """What Flower shows instead of the argument dict: readable and secret-free."""
    return (
        f"reservation={reservation.reservation_id} request={reservation.request_id} "
        f"computer={reservation.computer.hostname} image={reservation.image.name} "
        f"host={reservation.host}"
    )


def load_chain(reservation: Reservation, steps: list[str] | None = None) -> Signature:
    """The chain of step signatures, each explicitly routed (a chain routes only its first)."""
    data = reservation.model_dump(mode="json")
    queue = host_queue(reservation.host)
    return chain(
        *(
            TASKS[step].si(reservation=data).set(queue=queue, kwargsrepr=describe(reservation))
            for step in (steps or LOAD_STEPS)
        )
    )
