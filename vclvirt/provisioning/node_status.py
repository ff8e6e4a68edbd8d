"""node_status, the first step of a load: READY / POST_LOAD / RELOAD (§2.4.1)."""

from __future__ import annotations

import posixpath
from typing import Any

from vclvirt.errors import GuestHostKeyChanged, VclvirtError
from vclvirt.guest import hooks
from vclvirt.guest.access import connect_guest, guest_target
from vclvirt.hypervisor import domains
from vclvirt.models import Reservation
from vclvirt.provisioning.context import HostContext


class NodeStatus:
    """Asks the hypervisor, then the guest, whether the computer already holds the load."""

    def __init__(self, context: HostContext) -> None:
        self.ctx = context

    def check(self, reservation: Reservation) -> dict[str, Any]:
        """READY / POST_LOAD / RELOAD, and RELOAD when the hypervisor has no running domain
        of this computer with the expected name."""
        ctx = self.ctx
        if reservation.state == "reinstall":
            return {"status": hooks.RELOAD, "reason": "state reinstall always reloads"}
        name = ctx.names(reservation).domain
        domain = domains.lookup(ctx.conn, name, ctx.host.name)
        if domain is None or domains.power_state(domain, ctx.host.name) != "on":
            return {"status": hooks.RELOAD, "reason": f"domain {name} is not running"}
        if reservation.image.os_type.lower() == "none":
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
            target = guest_target(ctx.host, reservation, ctx.settings, ctx.guest_host_keys)
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

    def backing_image(self, domain: Any) -> str | None:
        """Name of the master behind the running domain's first disk (its file name sans
        extension), from the backing chain libvirt records in the domain's XML."""
        backing = domains.backing_file(domains.domain_xml(domain, self.ctx.host.name))
        return posixpath.splitext(posixpath.basename(backing))[0] if backing else None
