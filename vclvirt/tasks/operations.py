"""Single-step operations on a reservation's computer, each a task on the host's queue."""

from __future__ import annotations

import re
from typing import Any

from vclvirt.errors import InvalidInput
from vclvirt.models import SNAPSHOT_NAME_PATTERN, Reservation
from vclvirt.provisioner import Provisioner
from vclvirt.tasks.base import step_task
from vclvirt.workers.context import status_store


def _emptied(p: Provisioner, r: Reservation, _: dict[str, Any]) -> dict[str, Any]:
    result = p.unload(r)
    status_store().set_computer_image(r.host, r.computer.short_name, None)
    return {**result, "computer_image": "noimage"}


def _snapshot_name(params: dict[str, Any]) -> str:
    name = params.get("name")
    if not isinstance(name, str) or not re.fullmatch(SNAPSHOT_NAME_PATTERN, name):
        raise InvalidInput(
            f"name: a snapshot name must match {SNAPSHOT_NAME_PATTERN}, got {name!r}"
        )
    return name


_BODIES = {
    "node_status": lambda p, r, _: p.node_status(r),
    "power_status": lambda p, r, _: p.power_status(r),
    "power_on": lambda p, r, _: p.power_on(r),
    "power_off": lambda p, r, _: p.power_off(r),
    "power_reset": lambda p, r, _: p.power_reset(r),
    "unload": _emptied,
    "post_maintenance_action": _emptied,
    "snapshot_create": lambda p, r, params: p.snapshot_create(r, _snapshot_name(params)),
    "snapshot_list": lambda p, r, _: p.snapshot_list(r),
    "snapshot_revert": lambda p, r, params: p.snapshot_revert(r, _snapshot_name(params)),
    "snapshot_delete": lambda p, r, params: p.snapshot_delete(r, _snapshot_name(params)),
}

OPERATIONS = {name: step_task("vclvirt.op", name, body) for name, body in _BODIES.items()}
