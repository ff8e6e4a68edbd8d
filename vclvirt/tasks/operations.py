"""Single-step operations on a reservation's computer, each a task on the host's queue."""

from __future__ import annotations

from typing import Any

from vclvirt.models import Reservation
from vclvirt.provisioner import Provisioner
from vclvirt.tasks.base import step_task
from vclvirt.workers.context import status_store


def _emptied(p: Provisioner, r: Reservation) -> dict[str, Any]:
    result = p.unload(r)
    status_store().set_computer_image(r.host, r.computer.short_name, None)
    return {**result, "computer_image": "noimage"}


_BODIES = {
    "node_status": lambda p, r: p.node_status(r),
    "power_status": lambda p, r: p.power_status(r),
    "power_on": lambda p, r: p.power_on(r),
    "power_off": lambda p, r: p.power_off(r),
    "power_reset": lambda p, r: p.power_reset(r),
    "unload": _emptied,
    "post_maintenance_action": _emptied,
}

OPERATIONS = {name: step_task("vclvirt.op", name, body) for name, body in _BODIES.items()}
