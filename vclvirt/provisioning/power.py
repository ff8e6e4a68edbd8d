"""Power of a reservation's own domain: status, on, off (ACPI, then destroy), reset."""

from __future__ import annotations

import time
from typing import Any

from vclvirt.hypervisor import domains
from vclvirt.models import Reservation
from vclvirt.provisioning.access import HostAccess


class Power:
    """power_status / power_on / power_off / power_reset of the reservation's domain."""

    def __init__(self, context: HostAccess) -> None:
        self.ctx = context

    def status(self, reservation: Reservation) -> dict[str, Any]:
        ctx = self.ctx
        name = ctx.names(reservation).domain
        domain = domains.lookup(ctx.conn, name, ctx.host.name)
        state = "undefined" if domain is None else domains.power_state(domain, ctx.host.name)
        return {"domain": name, "power": state}

    def on(self, reservation: Reservation) -> dict[str, Any]:
        """Start the domain; one already running is fine (the load's power_on step)."""
        host = self.ctx.host.name
        domain = self.ctx.domain(reservation)
        started = domains.start(domain, host)
        return {
            "domain": domain.name(),
            "started": started,
            "power": domains.power_state(domain, host),
        }

    def off(self, reservation: Reservation) -> dict[str, Any]:
        """ACPI shutdown, re-sent every 10 s; destroy after the timeout. Off already is fine."""
        ctx = self.ctx
        domain = ctx.domain(reservation)
        started = time.monotonic()
        method = domains.shut_down(domain, ctx.host.name, timeout=ctx.settings.power_off_timeout)
        return {
            "domain": domain.name(),
            "method": method,
            "seconds": round(time.monotonic() - started, 2),
            "power": domains.power_state(domain, ctx.host.name),
        }

    def reset(self, reservation: Reservation) -> dict[str, Any]:
        """Hard power cycle of the reservation's own domain (the reference ignored its argument)."""
        host = self.ctx.host.name
        domain = self.ctx.domain(reservation)
        domains.destroy(domain, host)
        domains.start(domain, host)
        return {"domain": domain.name(), "power": domains.power_state(domain, host)}
