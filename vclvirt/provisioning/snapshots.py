"""libvirt snapshots of a reservation's own domain."""

from __future__ import annotations

from typing import Any

from vclvirt.hypervisor import domains
from vclvirt.images.space import disk_full_judged
from vclvirt.models import Reservation
from vclvirt.provisioning.access import HostAccess


class Snapshots:
    """snapshot_create / list / revert / delete; the name is validated by the caller."""

    def __init__(self, context: HostAccess) -> None:
        self.ctx = context

    def create(self, reservation: Reservation, name: str) -> dict[str, Any]:
        domain = self.ctx.domain(reservation)
        description = f"reservation {reservation.reservation_id}, image {reservation.image.name}"
        # An internal snapshot is written into the overlay: its filesystem may be full.
        with disk_full_judged(self.ctx.node, self.ctx.names(reservation).overlay_path):
            domains.create_snapshot(domain, name, description, self.ctx.host.name)
        return {"domain": domain.name(), "snapshot": name}

    def list(self, reservation: Reservation) -> dict[str, Any]:
        domain = self.ctx.domain(reservation)
        return {
            "domain": domain.name(),
            "snapshots": domains.list_snapshots(domain, self.ctx.host.name),
        }

    def revert(self, reservation: Reservation, name: str) -> dict[str, Any]:
        host = self.ctx.host.name
        domain = self.ctx.domain(reservation)
        domains.revert_snapshot(domain, name, host)
        return {
            "domain": domain.name(),
            "snapshot": name,
            "power": domains.power_state(domain, host),
        }

    def delete(self, reservation: Reservation, name: str) -> dict[str, Any]:
        domain = self.ctx.domain(reservation)
        domains.delete_snapshot(domain, name, self.ctx.host.name)
        return {"domain": domain.name(), "snapshot": name, "deleted": True}
