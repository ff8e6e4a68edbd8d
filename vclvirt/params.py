"""Parameters of each operation, checked at enqueue (and again by the worker)."""

from __future__ import annotations

import re
from typing import Any

from vclvirt.errors import InvalidInput
from vclvirt.models import SNAPSHOT_NAME_PATTERN

_NAMED = ("snapshot_create", "snapshot_revert", "snapshot_delete")


def validate_params(operation: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The operation's parameters, or InvalidInput naming the field; unknown ones refused."""
    given = dict(params or {})
    allowed = {"name"} if operation in _NAMED else set()
    for key in sorted(set(given) - allowed):
        raise InvalidInput(
            f"params.{key}: {operation} takes no parameter {key!r}", field=f"params.{key}"
        )
    if operation in _NAMED:
        name = given.get("name")
        if not isinstance(name, str) or not re.fullmatch(SNAPSHOT_NAME_PATTERN, name):
            raise InvalidInput(
                f"params.name: a snapshot name must match {SNAPSHOT_NAME_PATTERN}",
                field="params.name",
            )
    return given
