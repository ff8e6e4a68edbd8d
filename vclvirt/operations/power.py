"""Power status, on, off (ACPI, then destroy) and reset of the reservation's domain."""

from __future__ import annotations

from vclvirt.operation import single

OPERATIONS = (
    single(
        "power_status",
        "Whether the reservation's domain runs",
        lambda ctx: ctx.host().power.status(ctx.reservation),
        changes_computer=False,
    ),
    single("power_on", "Start the domain", lambda ctx: ctx.host().power.on(ctx.reservation)),
    single(
        "power_off",
        "ACPI shutdown, re-sent every 10 s; destroyed after the timeout",
        lambda ctx: ctx.host().power.off(ctx.reservation),
    ),
    single("power_reset", "Hard power cycle", lambda ctx: ctx.host().power.reset(ctx.reservation)),
)
