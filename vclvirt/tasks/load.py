"""The load chain, every step routed to the host's queue:

node_status → delete_existing_domains → pre_define → generate_xml → define → power_on → post_load

node_status decides like VCL's new.pm: READY skips everything, POST_LOAD runs
only post_load, RELOAD (or state reinstall) runs the rest. pre_define runs before
generate_xml so the disk bus and NIC model come from the master's reference XML
even on the first load on a host (fixes D1).
"""

from __future__ import annotations

from typing import Any

from celery import chain
from celery.canvas import Signature

from vclvirt.guest.hooks import POST_LOAD, READY
from vclvirt.metrics import MASTER_BYTES, MASTER_COPIES
from vclvirt.models import Reservation
from vclvirt.provisioner import Provisioner
from vclvirt.tasks.base import MissingStepResult, copy_progress, routed, step_task
from vclvirt.workers.context import status_store

RELOAD_STEPS = [
    "delete_existing_domains",
    "pre_define",
    "generate_xml",
    "define",
    "power_on",
    "post_load",
]
LOAD_STEPS = ["node_status", *RELOAD_STEPS]


def _node_status(p: Provisioner, r: Reservation, _: dict[str, Any]) -> dict[str, Any]:
    result = p.node_status(r)
    plan = {READY: [], POST_LOAD: ["post_load"]}.get(result["status"], RELOAD_STEPS)
    status_store().set_plan(r.reservation_id, plan)
    return {**result, "plan": plan}


def _pre_define(p: Provisioner, r: Reservation, _: dict[str, Any]) -> dict[str, Any]:
    result = p.pre_define(r, progress=copy_progress(r, "pre_define"))
    if result["master_copied"]:
        MASTER_COPIES.labels(host=r.host).inc()
        MASTER_BYTES.labels(host=r.host).inc(result["master_bytes"])
    return result


def _define(p: Provisioner, r: Reservation, _: dict[str, Any]) -> dict[str, Any]:
    generated = status_store().step_result(r.reservation_id, "generate_xml")
    if not generated or "xml" not in generated:
        raise MissingStepResult("no generated XML recorded for this reservation")
    return p.define(r, generated["xml"])


def _post_load(p: Provisioner, r: Reservation, _: dict[str, Any]) -> dict[str, Any]:
    result = p.post_load(r)
    status_store().set_computer_image(
        r.host,
        r.computer.short_name,
        {
            "image": r.image.name,
            "revision_id": r.image.revision_id,
            "reservation_id": r.reservation_id,
        },
    )
    return result


_BODIES = {
    "node_status": _node_status,
    "delete_existing_domains": lambda p, r, _: p.delete_existing_domains(r),
    "pre_define": _pre_define,
    "generate_xml": lambda p, r, _: p.generate_xml(r),
    "define": _define,
    "power_on": lambda p, r, _: p.power_on(r),
    "post_load": _post_load,
}

TASKS = {step: step_task("vclvirt.load", step, _BODIES[step]) for step in LOAD_STEPS}


def load_chain(reservation: Reservation, steps: list[str] | None = None) -> Signature:
    """The chain of step signatures, each explicitly routed (a chain routes only its first)."""
    return chain(*(routed(TASKS[step], reservation) for step in (steps or LOAD_STEPS)))
