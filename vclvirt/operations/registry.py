"""Every operation by name: load, capture and the single-step ones."""

from __future__ import annotations

from vclvirt.errors import InvalidInput
from vclvirt.operations import Operation
from vclvirt.operations.capture import CAPTURE
from vclvirt.operations.load import LOAD
from vclvirt.operations.single import SINGLE

OPERATIONS: dict[str, Operation] = {"load": LOAD, "capture": CAPTURE, **SINGLE}
SINGLE_OPERATIONS = tuple(SINGLE)


def operation(name: str) -> Operation:
    try:
        return OPERATIONS[name]
    except KeyError:
        raise InvalidInput(
            f"unknown operation {name!r}; known: {', '.join(OPERATIONS)}", field="operation"
        ) from None
