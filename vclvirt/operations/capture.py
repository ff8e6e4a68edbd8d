"""The capture (state image or checkpoint):

capture_prepare → capture_shutdown → capture_flatten → capture_publish → capture_finish

Later steps read what capture_prepare recorded (domain, disk, new name, XML), so a
failed capture can be re-run from the step that failed.
"""

from __future__ import annotations

from typing import Any

from vclvirt.operations import Operation, StepContext

CAPTURE_STEPS = (
    "capture_prepare",
    "capture_shutdown",
    "capture_flatten",
    "capture_publish",
    "capture_finish",
)


def flatten(ctx: StepContext) -> dict[str, Any]:
    prepared = ctx.result("capture_prepare")
    result = ctx.provisioner.capture_flatten(ctx.reservation, prepared)
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


CAPTURE = Operation(
    name="capture",
    steps=CAPTURE_STEPS,
    bodies={
        "capture_prepare": lambda ctx: ctx.provisioner.capture_prepare(ctx.reservation),
        "capture_shutdown": lambda ctx: ctx.provisioner.capture_shutdown(
            ctx.reservation, ctx.result("capture_prepare")["domain"]
        ),
        "capture_flatten": flatten,
        "capture_publish": lambda ctx: ctx.provisioner.capture_publish(
            ctx.reservation, ctx.result("capture_prepare"), ctx.result("capture_flatten")["master"]
        ),
        "capture_finish": lambda ctx: ctx.provisioner.capture_finish(
            ctx.reservation, ctx.result("capture_prepare")
        ),
    },
    owns_computer=True,
)
