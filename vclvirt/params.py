"""The parameters each operation takes, validated when it is enqueued.

One strict model per operation: a snapshot name is checked here, before it is
queued, and an unknown or oversized parameter never rides along into the queue,
the status record or Flower. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from vclvirt.errors import InvalidInput
from vclvirt.models import SnapshotName, StrictModel, describe_errors, json_type
from vclvirt.textcheck import field_label


class NoParams(StrictModel):
    """The operation takes no parameters."""


class SnapshotParams(StrictModel):
    """snapshot_create, snapshot_revert, snapshot_delete: which snapshot."""

    name: SnapshotName


PARAMS_OF: dict[str, type[BaseModel]] = {
    "load": NoParams,
    "capture": NoParams,
    "node_status": NoParams,
    "power_status": NoParams,
    "power_on": NoParams,
    "power_off": NoParams,
    "power_reset": NoParams,
    "unload": NoParams,
    "post_maintenance_action": NoParams,
    "snapshot_list": NoParams,
    "snapshot_create": SnapshotParams,
    "snapshot_revert": SnapshotParams,
    "snapshot_delete": SnapshotParams,
}
# Every operation a reservation can be enqueued for.
OPERATION_NAMES: frozenset[str] = frozenset(PARAMS_OF)
# The single-step operations (everything but the load and capture chains).
SINGLE_OPERATIONS: tuple[str, ...] = tuple(n for n in PARAMS_OF if n not in ("load", "capture"))


def validate_params(operation: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The operation's parameters, checked: {} for operations that take none.

    InvalidInput names the field (`params.name`, `params.<unknown key>`, or
    `operation` for an operation that does not exist).
    """
    model = PARAMS_OF.get(operation) if isinstance(operation, str) else None
    if model is None:
        raise InvalidInput(
            f"unknown operation {field_label(str(operation))}; "
            f"known: {', '.join(sorted(OPERATION_NAMES))}",
            field="operation",
        )
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidInput(f"params: must be an object, not {json_type(params)}", field="params")
    try:
        checked = model.model_validate(params)
    except ValidationError as error:
        field, message = describe_errors(error, prefix="params")
        raise InvalidInput(
            f"invalid parameters for {operation}: {message}",
            field=field or "params",
            hint='Snapshot operations take {"name": ...}; every other operation takes none',
        ) from None
    return checked.model_dump()
