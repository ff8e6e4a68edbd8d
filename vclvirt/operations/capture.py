"""The capture (state image or checkpoint):

capture_prepare → capture_shutdown → capture_flatten → capture_publish → capture_finish

Later steps read what capture_prepare recorded (domain, disk, new name, XML), so a
failed capture can be re-run from the step that failed.
"""

from __future__ import annotations

from typing import Any

from vclvirt.models import Reservation
from vclvirt.operation import Operation, Step, StepContext

CAPTURE_STATES = ("image", "checkpoint")


def flatten(ctx: StepContext) -> dict[str, Any]:
    prepared = ctx.result("capture_prepare")
    result = ctx.host().capture.flatten(ctx.reservation, prepared)
    ctx.set_outcome(
        {
            "new_image": prepared["new_image"],
            "master": result["master"],
            "size_bytes": result["size_bytes"],
            "size_mb": result["size_bytes"] // 2**20,
            "virtual_size_bytes": result["virtual_size_bytes"],
        }
    )
    return result


def capturable(reservation: Reservation) -> str | None:
    if reservation.state in CAPTURE_STATES:
        return None
    return f"a capture needs state image or checkpoint, not {reservation.state!r}"


CAPTURE = Operation(
    name="capture",
    summary="Capture the computer's disk as a new image (state image) or checkpoint",
    steps=(
        Step("capture_prepare", lambda ctx: ctx.host().capture.prepare(ctx.reservation)),
        Step(
            "capture_shutdown",
            lambda ctx: ctx.host().capture.shutdown(
                ctx.reservation, ctx.result("capture_prepare")["domain"]
            ),
        ),
        Step("capture_flatten", flatten),
        Step(
            "capture_publish",
            lambda ctx: ctx.host().capture.publish(
                ctx.reservation,
                ctx.result("capture_prepare"),
                ctx.result("capture_flatten")["master"],
            ),
        ),
        Step(
            "capture_finish",
            lambda ctx: ctx.host().capture.finish(ctx.reservation, ctx.result("capture_prepare")),
        ),
    ),
    owns_computer=True,
    accepts=capturable,
)
OPERATIONS = (CAPTURE,)
