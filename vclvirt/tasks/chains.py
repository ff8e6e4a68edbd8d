"""Which Celery signature runs an operation (or its remaining steps) for a reservation."""

from __future__ import annotations

from typing import Any

from celery.canvas import Signature

from vclvirt.models import Reservation
from vclvirt.tasks.base import routed
from vclvirt.tasks.capture import CAPTURE_STEPS, capture_chain
from vclvirt.tasks.load import LOAD_STEPS, load_chain
from vclvirt.tasks.operations import OPERATIONS


def steps_of(operation: str) -> list[str]:
    if operation == "load":
        return LOAD_STEPS
    if operation == "capture":
        return CAPTURE_STEPS
    return [operation]


def signature_for(
    operation: str,
    reservation: Reservation,
    steps: list[str] | None = None,
    params: dict[str, Any] | None = None,
) -> Signature:
    """The chain (or single task) for the operation, from `steps` on when given."""
    if operation == "load":
        return load_chain(reservation, steps)
    if operation == "capture":
        return capture_chain(reservation, steps)
    return routed(OPERATIONS[operation], reservation, params)
