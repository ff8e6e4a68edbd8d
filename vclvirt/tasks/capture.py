"""The capture chain (state image or checkpoint), every step on the host's queue:

capture_prepare → capture_shutdown → capture_flatten → capture_publish → capture_finish

Later steps read what capture_prepare recorded (domain, disk, new name, XML), so
a failed capture can be re-run from the step that failed.
"""

from __future__ import annotations

from typing import Any

from celery import chain
from celery.canvas import Signature

from vclvirt.models import Reservation
from vclvirt.provisioner import Provisioner
from vclvirt.tasks.base import MissingStepResult, routed, step_task
from vclvirt.workers.context import status_store

CAPTURE_STEPS = [
    "capture_prepare",
    "capture_shutdown",
    "capture_flatten",
    "capture_publish",
    "capture_finish",
]


def _recorded(r: Reservation, step: str) -> dict[str, Any]:
    result = status_store().step_result(r.reservation_id, step)
    if not result:
        raise MissingStepResult(f"step {step} has recorded nothing for this capture")
    return result


def _flatten(p: Provisioner, r: Reservation, _: dict[str, Any]) -> dict[str, Any]:
    result = p.capture_flatten(r, _recorded(r, "capture_prepare"))
    prepared = _recorded(r, "capture_prepare")
    status_store().set_outcome(
        r.reservation_id,
        {
            "new_image": prepared["new_image"],
            "master": result["master"],
            "size_bytes": result["size_bytes"],
            "size_mb": result["size_bytes"] // 2**20,
            "virtual_size_bytes": result["virtual_size_bytes"],
        },
    )
    return result


_BODIES = {
    "capture_prepare": lambda p, r, _: p.capture_prepare(r),
    "capture_shutdown": lambda p, r, _: p.capture_shutdown(
        r, _recorded(r, "capture_prepare")["domain"]
    ),
    "capture_flatten": _flatten,
    "capture_publish": lambda p, r, _: p.capture_publish(
        r, _recorded(r, "capture_prepare"), _recorded(r, "capture_flatten")["master"]
    ),
    "capture_finish": lambda p, r, _: p.capture_finish(r, _recorded(r, "capture_prepare")),
}

TASKS = {step: step_task("vclvirt.capture", step, _BODIES[step]) for step in CAPTURE_STEPS}


def capture_chain(reservation: Reservation, steps: list[str] | None = None) -> Signature:
    return chain(*(routed(TASKS[step], reservation) for step in (steps or CAPTURE_STEPS)))
