"""The load: node_status → delete_existing_domains → pre_define → generate_xml → define →
power_on → post_load.

node_status decides like VCL's new.pm: READY skips everything, POST_LOAD runs only
post_load, RELOAD runs the rest; a reservation in state reload or reinstall always runs
the whole load (vcld reloads such a computer whatever its guest says). pre_define runs
before generate_xml so the disk bus and NIC model come from the master's reference XML
even on the first load on a host.
"""

from __future__ import annotations

from typing import Any

from vclvirt.guest.hooks import POST_LOAD, READY, RELOAD
from vclvirt.operation import Operation, Step, StepContext

RELOAD_STEPS = (
    "delete_existing_domains",
    "pre_define",
    "generate_xml",
    "define",
    "power_on",
    "post_load",
)
LOAD_STEPS = ("node_status", *RELOAD_STEPS)
ALWAYS_RELOAD = ("reload", "reinstall")


def plan_after_status(state: str, status: str) -> list[str]:
    """The steps that run after node_status answered `status` for a reservation in `state`."""
    if state in ALWAYS_RELOAD:
        return list(RELOAD_STEPS)
    if status == READY:
        return []
    if status == POST_LOAD:
        return ["post_load"]
    return list(RELOAD_STEPS)


def node_status(ctx: StepContext) -> dict[str, Any]:
    state = ctx.reservation.state
    if state in ALWAYS_RELOAD:
        # post_load will need the guest: a configuration that gives no way in fails now,
        # before delete_existing_domains destroys the running VM.
        ctx.host().status.check_guest_access(ctx.reservation)
        result: dict[str, Any] = {"status": RELOAD, "reason": f"state {state} always reloads"}
    else:
        result = ctx.host().status.check(ctx.reservation)
    plan = plan_after_status(state, result["status"])
    ctx.set_plan(plan)
    return {**result, "plan": plan}


def pre_define(ctx: StepContext) -> dict[str, Any]:
    # The overlay is always made anew: a file found at its path may be a previous user's
    # disk (a user's disk is never handed to another); creating one costs milliseconds.
    return ctx.host().load.pre_define(ctx.reservation, ctx.progress, reuse_overlay=False)


def post_load(ctx: StepContext) -> dict[str, Any]:
    result = ctx.host().load.post_load(ctx.reservation)
    image = ctx.reservation.image
    ctx.set_computer_image(
        {
            "image": image.name,
            "revision_id": image.revision_id,
            "reservation_id": ctx.reservation.reservation_id,
        }
    )
    return result


def remove_overlay(ctx: StepContext) -> dict[str, Any]:
    """A load that stops after pre_define leaves no overlay behind (unless a domain uses it)."""
    if not ctx.attempts("pre_define"):
        return {}
    return {"removed_files": ctx.host().cleanup.remove_overlay(ctx.reservation)}


LOAD = Operation(
    name="load",
    summary="Load the reservation's image on its computer, up to a guest that answers",
    steps=(
        Step("node_status", node_status),
        Step(
            "delete_existing_domains",
            lambda ctx: ctx.host().cleanup.delete_existing_domains(ctx.reservation),
        ),
        Step("pre_define", pre_define),
        Step("generate_xml", lambda ctx: ctx.host().load.generate_xml(ctx.reservation)),
        Step(
            "define",
            lambda ctx: ctx.host().load.define(ctx.reservation, ctx.result("generate_xml")["xml"]),
        ),
        Step("power_on", lambda ctx: ctx.host().power.on(ctx.reservation)),
        Step("post_load", post_load),
    ),
    owns_computer=True,
    on_abandon=remove_overlay,
)
OPERATIONS = (LOAD,)
