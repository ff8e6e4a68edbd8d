"""Snapshots of the reservation's domain, through libvirt."""

from __future__ import annotations

import re
from typing import Any

from vclvirt.errors import InvalidInput
from vclvirt.models import SNAPSHOT_NAME_PATTERN, SnapshotName, StrictModel
from vclvirt.operation import StepContext, single


class SnapshotParams(StrictModel):
    """Which snapshot."""

    name: SnapshotName


def snapshot_name(ctx: StepContext) -> str:
    """Checked at enqueue too; checked again here because a message can come from anywhere."""
    name = ctx.params.get("name")
    if not isinstance(name, str) or not re.fullmatch(SNAPSHOT_NAME_PATTERN, name):
        raise InvalidInput(
            f"params.name: a snapshot name must match {SNAPSHOT_NAME_PATTERN}, got {name!r}",
            field="params.name",
        )
    return name


def _create(ctx: StepContext) -> dict[str, Any]:
    return ctx.host().snapshots.create(ctx.reservation, snapshot_name(ctx))


def _revert(ctx: StepContext) -> dict[str, Any]:
    return ctx.host().snapshots.revert(ctx.reservation, snapshot_name(ctx))


def _delete(ctx: StepContext) -> dict[str, Any]:
    return ctx.host().snapshots.delete(ctx.reservation, snapshot_name(ctx))


OPERATIONS = (
    single(
        "snapshot_list",
        "The domain's snapshots",
        lambda ctx: ctx.host().snapshots.list(ctx.reservation),
        changes_computer=False,
    ),
    single("snapshot_create", "Take a snapshot", _create, params=SnapshotParams),
    single("snapshot_revert", "Go back to a snapshot", _revert, params=SnapshotParams),
    single("snapshot_delete", "Delete a snapshot", _delete, params=SnapshotParams),
)
