"""Capture (state image / checkpoint): the computer's disk becomes a new master revision
and a repository copy; `image` then deletes the domain, `checkpoint` powers it on.

capture_prepare → capture_shutdown → capture_flatten → capture_publish → capture_finish
"""

from __future__ import annotations

import re
import time
from typing import Any

import libvirt

from vclvirt.errors import (
    DomainMissing,
    DomainUnusable,
    HypervisorError,
    ImageExists,
    InvalidInput,
)
from vclvirt.guest import hooks
from vclvirt.guest.access import connect_guest
from vclvirt.hypervisor import domains
from vclvirt.images.capture import flatten_to_master, publish_to_repository
from vclvirt.images.master import find_in_repository, find_master
from vclvirt.models import IMAGE_NAME_PATTERN, Reservation
from vclvirt.naming import captured_image_name
from vclvirt.provisioning.access import HostAccess
from vclvirt.provisioning.cleanup import Cleanup


class Capture:
    """The five capture steps; later ones take what capture_prepare recorded."""

    def __init__(self, context: HostAccess, cleanup: Cleanup) -> None:
        self.ctx = context
        self.cleanup = cleanup

    def prepare(self, reservation: Reservation) -> dict[str, Any]:
        """Find the VM by MAC, check the new name is free, let the guest describe itself.

        A VM that is off is powered on first so its guest can prepare (VCL-179); a crashed
        or paused one is refused (DomainUnusable): its disk may be half-written."""
        ctx, host = self.ctx, self.ctx.host.name
        new_image = captured_image_name(reservation.image)
        if not re.fullmatch(IMAGE_NAME_PATTERN, new_image):
            raise InvalidInput(
                f"the captured image would be named {new_image!r}, which is not a valid image name",
                hint="Change the pretty name",
            )
        domain = self._domain_of_computer(reservation)
        power = domains.power_state(domain, host)
        if power in ("crashed", "suspended"):
            raise DomainUnusable(
                f"domain {domain.name()} is {power}: its guest cannot prepare itself for the "
                "capture and its disk may be inconsistent",
                host=host,
            )
        disks = domains.disks(domains.domain_xml(domain, host))
        if not disks:
            raise HypervisorError(
                f"domain {domain.name()} has no file-backed disk to capture", host=host
            )
        self._check_name_is_free(new_image)
        has_guest = reservation.image.os_type.lower() != "none"
        target = ctx.guest_target(reservation) if has_guest else None
        powered_on = False
        if target is not None and power == "off":
            powered_on = domains.start(domain, host)
        xml = domains.domain_xml(domain, host)
        guest_done: dict[str, Any] = {"guest": "not contacted: os_type none"}
        if target is not None:
            guest = connect_guest(target, timeout=self._answer_timeout(reservation, powered_on))
            try:
                guest_done = hooks.pre_capture(guest, reservation, new_image, xml)
            finally:
                guest.close()
        return {
            "domain": domain.name(),
            "new_image": new_image,
            "disk": disks[0].path,
            "disk_format": disks[0].format,
            "disks_not_captured": [d.path for d in disks[1:]],
            "powered_on": powered_on,
            "xml": xml,
            **guest_done,
        }

    def _check_name_is_free(self, new_image: str) -> None:
        ctx = self.ctx
        in_repository = find_in_repository(ctx.node, ctx.host, new_image)
        existing = [
            path
            for path in (
                find_master(ctx.node, ctx.host, new_image),
                in_repository.path if in_repository else None,
            )
            if path
        ]
        if existing:
            raise ImageExists(
                f"image {new_image} exists already: {', '.join(existing)}", host=ctx.host.name
            )

    def _answer_timeout(self, reservation: Reservation, booting: bool) -> float:
        """How long the guest has to answer SSH: a whole boot when capture started it."""
        settings = self.ctx.settings
        if not booting:
            return settings.node_status_timeout * 4
        if reservation.image.is_windows:
            return settings.post_load_timeout_windows
        return settings.post_load_timeout_linux

    def _domain_of_computer(self, reservation: Reservation) -> libvirt.virDomain:
        """The domain whose NICs carry the computer's MACs (a base VM may be named freely)."""
        ctx = self.ctx
        macs = {reservation.computer.eth0_mac, reservation.computer.eth1_mac}
        names = domains.domains_with_mac(ctx.conn, macs, ctx.host.name)
        if len(names) > 1:
            raise HypervisorError(
                f"several domains carry the computer's MACs: {names}",
                host=ctx.host.name,
                hint="Remove the stale domains",
            )
        if names:
            found = domains.lookup(ctx.conn, names[0], ctx.host.name)
            if found is not None:
                return found
        return ctx.domain(reservation)

    def shutdown(self, reservation: Reservation, domain_name: str) -> dict[str, Any]:
        ctx = self.ctx
        domain = domains.lookup(ctx.conn, domain_name, ctx.host.name)
        if domain is None:
            raise DomainMissing(f"domain {domain_name} disappeared", host=ctx.host.name)
        started = time.monotonic()
        method = domains.shut_down(domain, ctx.host.name, timeout=ctx.settings.power_off_timeout)
        return {
            "domain": domain_name,
            "method": method,
            "seconds": round(time.monotonic() - started, 2),
        }

    def flatten(self, reservation: Reservation, prepared: dict[str, Any]) -> dict[str, Any]:
        ctx = self.ctx
        return flatten_to_master(
            ctx.node,
            ctx.driver,
            ctx.host,
            prepared["disk"],
            prepared["new_image"],
            prepared["xml"],
            disk_format=prepared.get("disk_format", "qcow2"),
        )

    def publish(
        self, reservation: Reservation, prepared: dict[str, Any], master: str
    ) -> dict[str, Any]:
        ctx = self.ctx
        published = publish_to_repository(
            ctx.node, ctx.driver, ctx.host, master, prepared["new_image"], prepared["xml"]
        )
        return {"repository_image": published}

    def finish(self, reservation: Reservation, prepared: dict[str, Any]) -> dict[str, Any]:
        """`image`: delete the domain and only its own overlay; `checkpoint`: power it on."""
        ctx = self.ctx
        domain = domains.lookup(ctx.conn, prepared["domain"], ctx.host.name)
        if domain is None:
            return {"domain": prepared["domain"], "action": "already gone"}
        if reservation.state == "image":
            removed = self.cleanup.delete_domain(domain, reservation.computer.short_name)
            return {"domain": prepared["domain"], "action": "deleted", "removed_files": removed}
        domains.start(domain, ctx.host.name)
        return {
            "domain": prepared["domain"],
            "action": "powered on",
            "power": domains.power_state(domain, ctx.host.name),
        }
