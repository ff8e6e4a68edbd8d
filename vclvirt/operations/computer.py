"""The computer as a whole: what it holds (node_status) and emptying it (unload, and the
same before maintenance)."""

from __future__ import annotations

from typing import Any

from vclvirt.operation import StepContext, single


def emptied(ctx: StepContext) -> dict[str, Any]:
    result = ctx.host().cleanup.delete_existing_domains(ctx.reservation)
    ctx.set_computer_image(None)
    return {**result, "computer_image": "noimage"}


OPERATIONS = (
    single(
        "node_status",
        "READY, POST_LOAD or RELOAD for the reservation's computer, and why",
        lambda ctx: ctx.host().status.check(ctx.reservation),
        changes_computer=False,
    ),
    single("unload", "Delete the computer's domains and overlays; it holds no image", emptied),
    single(
        "post_maintenance_action",
        "Like unload, for a computer going to maintenance",
        emptied,
    ),
)
