"""Removing what a computer holds on the host: its domains (with their snapshots), its own
overlays inside vm_path and its XML files — never a master, never another computer's."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection
from typing import Any

import libvirt
import structlog

from vclvirt.hypervisor import domains
from vclvirt.models import Reservation
from vclvirt.provisioning.access import HostAccess

log = structlog.get_logger(__name__)


def is_own_overlay(path: str, computer: str, vm_dir: str) -> bool:
    """Only `<vm_path>/<computer>_<id>-v<rev>.<ext>` is the computer's to delete."""
    pattern = rf"{re.escape(computer)}_\d+-v\d+\.[A-Za-z0-9]+"
    return posixpath.dirname(path) == vm_dir and bool(
        re.fullmatch(pattern, posixpath.basename(path))
    )


class Cleanup:
    """delete_existing_domains / unload, and the overlay of a load that will not run."""

    def __init__(self, context: HostAccess) -> None:
        self.ctx = context

    def delete_existing_domains(self, reservation: Reservation) -> dict[str, Any]:
        """Remove every domain of the computer (short-form names included) with its
        snapshots and overlays, and the computer's XML files."""
        ctx, computer = self.ctx, reservation.computer.short_name
        deleted, removed_files = [], []
        found = domains.computer_domains(ctx.conn, computer, ctx.host.name, reservation.computer.id)
        for domain in found:
            removed_files += self.delete_domain(domain, computer)
            deleted.append(domain.name())
        ctx.guest_host_keys.forget(reservation.reservation_id)  # a new guest, a new key
        ctx.files.remove_matching(ctx.host.xml_dir, f"{computer}_*.xml")
        return {"deleted_domains": deleted, "removed_files": removed_files}

    def delete_domain(
        self, domain: libvirt.virDomain, computer: str, keep: Collection[str] = ()
    ) -> list[str]:
        """Stop, drop snapshots, remove the computer's own overlays (but those in `keep`,
        which something else still owns), undefine."""
        ctx, name = self.ctx, domain.name()
        domains.destroy(domain, ctx.host.name)
        domains.delete_snapshots(domain, ctx.host.name)
        removed = []
        for path in domains.disk_files(domains.domain_xml(domain, ctx.host.name)):
            if path in keep:
                log.info("disk_kept", domain=name, path=path, reason="still owned")
            elif is_own_overlay(path, computer, ctx.host.vm_dir):
                ctx.files.remove(path)
                removed.append(path)
            else:
                log.warning(
                    "disk_kept",
                    domain=name,
                    path=path,
                    reason="not an overlay of this computer inside vm_path",
                )
        domains.undefine(domain, ctx.host.name)
        log.info("domain_deleted", domain=name, removed=removed)
        return removed

    def remove_overlay(self, reservation: Reservation) -> list[str]:
        """This reservation's overlay and XML file, unless a domain uses the overlay (then
        nothing is removed); returns the paths that were there and are gone."""
        ctx, names = self.ctx, self.ctx.names(reservation)
        users = domains.domains_using(ctx.conn, names.overlay_path, ctx.host.name)
        if users:
            log.info("overlay_kept", overlay=names.overlay_path, used_by=users)
            return []
        removed = [path for path in (names.overlay_path, names.xml_path) if ctx.files.remove(path)]
        log.info("overlay_removed", removed=removed)
        return removed
