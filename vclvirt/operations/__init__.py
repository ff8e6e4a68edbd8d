"""Every operation, one module each (or a few related ones per module): a module here
declares `OPERATIONS`, a tuple of vclvirt.operation.Operation, and is found by name.

Adding an operation is adding a module; the API, the CLI, the Celery tasks and the
parameter validation list what is found here.
"""

from __future__ import annotations

import importlib
import pkgutil

from vclvirt.errors import InvalidInput
from vclvirt.operation import Operation
from vclvirt.textcheck import field_label


def _discover() -> dict[str, Operation]:
    found: dict[str, Operation] = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        declared = importlib.import_module(f"{__name__}.{module.name}").OPERATIONS
        for op in declared:
            if op.name in found:
                raise RuntimeError(f"operation {op.name} is declared twice (in {module.name})")
            found[op.name] = op
    return found


OPERATIONS: dict[str, Operation] = _discover()


def operation(name: str) -> Operation:
    """The operation called `name`; InvalidInput (field `operation`) if there is none."""
    found = OPERATIONS.get(name) if isinstance(name, str) else None
    if found is None:
        raise InvalidInput(
            f"unknown operation {field_label(str(name))}; known: {', '.join(sorted(OPERATIONS))}",
            field="operation",
        )
    return found
