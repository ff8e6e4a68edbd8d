"""node_status, the first step of a load: READY / POST_LOAD / RELOAD (as VCL decides)."""

from __future__ import annotations

import posixpath
from typing import Any

from vclvirt.errors import GuestHostKeyChanged, VclvirtError
from vclvirt.guest import hooks
from vclvirt.guest.access import GuestTarget, connect_guest
from vclvirt.hypervisor import domains
from vclvirt.models import Reservation
from vclvirt.provisioning.access import HostAccess


class NodeStatus:
    """Asks the hypervisor, then the guest, whether the computer already holds the load."""

    def __init__(self, context: HostAccess) -> None:
        self.ctx = context

    def check(self, reservation: Reservation) -> dict[str, Any]:
        """READY / POST_LOAD / RELOAD, and RELOAD when the hypervisor has no running domain
        of this computer with the expected name.

        RELOAD comes only from what the hypervisor or the guest says. A configuration that
        gives no way to ask the guest (GuestAccessNotConfigured) fails before anything is
        looked at: a load must not destroy a VM it could not judge."""
        ctx = self.ctx
        target = self.guest_access(reservation)
        if reservation.state == "reinstall":
            return {"status": hooks.RELOAD, "reason": "state reinstall always reloads"}
        name = ctx.names(reservation).domain
        domain = domains.lookup(ctx.conn, name, ctx.host.name)
        if domain is None:
            return {"status": hooks.RELOAD, "reason": f"domain {name} is not running"}
        power = domains.power_state(domain, ctx.host.name)
        if power != "on":
            return {"status": hooks.RELOAD, "reason": f"domain {name} is not running ({power})"}
        if target is None:
            # No guest to ask: the domain's disk must be this image's overlay instead.
            backing = self.backing_image(domain)
            if backing != reservation.image.name:
                return {
                    "status": hooks.RELOAD,
                    "reason": f"domain {name} runs image {backing or 'unknown'}, "
                    f"not {reservation.image.name}",
                }
            return {
                "status": hooks.READY,
                "reason": "domain runs the image; os_type none has no guest to check",
            }
        try:
            guest = connect_guest(target, timeout=ctx.settings.node_status_timeout)
        except GuestHostKeyChanged:
            raise  # not a guest to reload over: something else answers at its address
        except VclvirtError as error:
            return {"status": hooks.RELOAD, "reason": f"guest does not answer: {error.message}"}
        try:
            status, reason = hooks.guest_status(guest, reservation)
        finally:
            guest.close()
        return {"status": status, "reason": reason}

    def guest_access(self, reservation: Reservation) -> GuestTarget | None:
        """How to log in to the reservation's guest (None for os_type none, which has no
        guest to ask); GuestAccessNotConfigured, touching nothing, when there is no way."""
        if reservation.image.os_type.lower() == "none":
            return None
        ctx = self.ctx
        return ctx.guest_target(reservation)

    def check_guest_access(self, reservation: Reservation) -> dict[str, Any]:
        """GuestAccessNotConfigured unless the configuration says how to log in to the
        guest (key, address); no host or guest is contacted. A load that will need the
        guest checks this before it destroys anything."""
        target = self.guest_access(reservation)
        if target is None:
            return {"guest": "not contacted: os_type none"}
        return {"guest": f"{target.address}:{target.port}", "key_file": str(target.key_file)}

    def backing_image(self, domain: Any) -> str | None:
        """Name of the master behind the running domain's first disk (its file name sans
        extension), from the backing chain libvirt records in the domain's XML."""
        backing = domains.backing_file(domains.domain_xml(domain, self.ctx.host.name))
        return posixpath.splitext(posixpath.basename(backing))[0] if backing else None
