"""Single-step operations on a reservation's computer: power, status, unload, snapshots."""

from __future__ import annotations

import re
from typing import Any

from vclvirt.errors import InvalidInput
from vclvirt.models import SNAPSHOT_NAME_PATTERN
from vclvirt.operations import Operation, StepBody, StepContext


def emptied(ctx: StepContext) -> dict[str, Any]:
    result = ctx.provisioner.unload(ctx.reservation)
    ctx.set_computer_image(None)
    return {**result, "computer_image": "noimage"}


def snapshot_name(params: dict[str, Any]) -> str:
    """Checked at enqueue too; checked again here because a message can come from anywhere."""
    name = params.get("name")
    if not isinstance(name, str) or not re.fullmatch(SNAPSHOT_NAME_PATTERN, name):
        raise InvalidInput(
            f"params.name: a snapshot name must match {SNAPSHOT_NAME_PATTERN}, got {name!r}",
            field="params.name",
        )
    return name


def _single(name: str, body: StepBody, *, changes_computer: bool = True) -> Operation:
    return Operation(name=name, steps=(name,), bodies={name: body}, locks_computer=changes_computer)


SINGLE = {
    op.name: op
    for op in (
        _single(
            "node_status",
            lambda c: c.provisioner.node_status(c.reservation),
            changes_computer=False,
        ),
        _single(
            "power_status",
            lambda c: c.provisioner.power_status(c.reservation),
            changes_computer=False,
        ),
        _single("power_on", lambda c: c.provisioner.power_on(c.reservation)),
        _single("power_off", lambda c: c.provisioner.power_off(c.reservation)),
        _single("power_reset", lambda c: c.provisioner.power_reset(c.reservation)),
        _single("unload", emptied),
        _single("post_maintenance_action", emptied),
        _single(
            "snapshot_create",
            lambda c: c.provisioner.snapshot_create(c.reservation, snapshot_name(c.params)),
        ),
        _single(
            "snapshot_list",
            lambda c: c.provisioner.snapshot_list(c.reservation),
            changes_computer=False,
        ),
        _single(
            "snapshot_revert",
            lambda c: c.provisioner.snapshot_revert(c.reservation, snapshot_name(c.params)),
        ),
        _single(
            "snapshot_delete",
            lambda c: c.provisioner.snapshot_delete(c.reservation, snapshot_name(c.params)),
        ),
    )
}
