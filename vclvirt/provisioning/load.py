"""The load steps that build the domain: pre_define (master and overlay), generate_xml,
define, post_load. Each converges, so a step Celery delivers twice does no harm.

On a warm host none of them runs a command: the master, the overlay, the reference
XML and the XML copy for operators go through libvirt's storage pools (images.files),
and what never changes is read once per process — a master's reference XML (a master
is immutable once written under its name, and its XML is in place before it is) and
the filesystem under vm_path.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import libvirt
import structlog

from vclvirt.errors import HypervisorError
from vclvirt.guest import hooks
from vclvirt.guest.access import connect_guest
from vclvirt.hypervisor import domains
from vclvirt.hypervisor.connection import network_names, resolve_domain_type
from vclvirt.hypervisor.domain_xml import (
    DEFAULT_DISK_BUS,
    DEFAULT_NIC_MODEL,
    HostFacts,
    plan_domain,
    reference_hardware,
    render_domain_xml,
    with_user_network,
)
from vclvirt.images.copy import Progress
from vclvirt.images.files import OverlayFacts
from vclvirt.images.master import MASTER_FORMAT, MasterImage, ensure_master
from vclvirt.models import Reservation
from vclvirt.naming import domain_uuid
from vclvirt.provisioning.access import HostAccess

log = structlog.get_logger(__name__)

_REMOTE_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "afs", "glusterfs", "ceph", "9p"}

Hardware = tuple[str | None, str | None]  # disk bus, NIC model


class LoadSteps:
    """pre_define, generate_xml, define and post_load on one host."""

    def __init__(self, context: HostAccess) -> None:
        self.ctx = context
        self._hardware: dict[str, Hardware] = {}  # reference XML path -> bus, model
        self._vm_fstype: str | None = None

    def pre_define(
        self,
        reservation: Reservation,
        progress: Progress | None = None,
        *,
        reuse_overlay: bool = False,
    ) -> dict[str, Any]:
        """Master on the host (copied from the repository if needed), then the overlay.

        An overlay already at the computer's path is removed and created anew — a user's
        disk is never handed to another — unless `reuse_overlay` (the caller knows this
        reservation made it and no domain ran from it) and it is the right one."""
        ctx = self.ctx
        names = ctx.names(reservation)
        master = ensure_master(
            ctx.node, ctx.driver, ctx.host, reservation.image.name, progress, ctx.files
        )
        created = self._place_overlay(master, names.overlay_path, reuse=reuse_overlay)
        notes = ctx.driver.pre_define(reservation, master.path, names.overlay_path)
        return {
            "master": master.path,
            "master_format": master.format,
            "master_copied": master.copied,
            "master_bytes": master.bytes_written,
            "overlay": names.overlay_path,
            "overlay_created": created,
            "notes": notes,
        }

    def _place_overlay(self, master: MasterImage, overlay: str, *, reuse: bool) -> bool:
        files = self.ctx.files
        if reuse and files.overlay_facts(overlay) == OverlayFacts(
            "qcow2", master.path, master.format
        ):
            log.info("overlay_reused", overlay=overlay)
            return False
        files.create_overlay(master.path, master.format, overlay)
        return True

    def host_facts(self, reservation: Reservation) -> HostFacts:
        """What the XML needs from the host; read after the master (and its XML) is there."""
        ctx = self.ctx
        bus, model = self._reference_hardware(reservation)
        fstype = self._vm_path_fstype()
        return HostFacts(
            domain_type=resolve_domain_type(ctx.conn, ctx.host.domain_type, ctx.host.name),
            networks=network_names(ctx.conn, ctx.host.name),
            vm_path_is_local=fstype.split(".")[-1] not in _REMOTE_FILESYSTEMS,
            disk_bus=bus or DEFAULT_DISK_BUS,
            nic_model=model or DEFAULT_NIC_MODEL,
        )

    def _reference_hardware(self, reservation: Reservation) -> Hardware:
        """Disk bus and NIC model of the master's reference XML, read once per process.

        An absent XML is remembered only while `<image>.qcow2` exists: its XML was put in
        place before it (images.copy), so it will not appear later."""
        ctx = self.ctx
        path = ctx.names(reservation).master_reference_xml
        if path in self._hardware:
            return self._hardware[path]
        text = ctx.files.read(path)
        if text is not None:
            found = reference_hardware(text.decode(errors="replace"))
        else:
            found = (None, None)
            master = path.removesuffix(".xml") + f".{MASTER_FORMAT}"
            if ctx.files.master_format(master) is None:
                return found
        self._hardware[path] = found
        return found

    def _vm_path_fstype(self) -> str:
        """The filesystem under vm_path, read once (it does not change under us)."""
        if self._vm_fstype is None:
            self._vm_fstype = self.ctx.node.run(
                ["findmnt", "-n", "-o", "FSTYPE", "-T", self.ctx.host.vm_dir], check=False
            ).text.strip()
        return self._vm_fstype

    def generate_xml(self, reservation: Reservation) -> dict[str, Any]:
        """The domain XML for this reservation on this host."""
        ctx = self.ctx
        names = ctx.names(reservation)
        spec = plan_domain(
            reservation,
            name=names.domain,
            uuid=domain_uuid(ctx.host.name, names.domain),
            overlay_path=names.overlay_path,
            private_switch=ctx.host.private_switch,
            public_switch=ctx.host.public_switch,
            facts=self.host_facts(reservation),
            loaded_at=datetime.now(UTC),
            management_node=ctx.management_node,
        )
        if ctx.host.guest_network == "user":
            spec = with_user_network(spec, reservation, ctx.host)
        spec = ctx.driver.extend_domain_xml(spec, reservation)
        return {"domain": spec.name, "xml": render_domain_xml(spec)}

    def define(self, reservation: Reservation, xml: str) -> dict[str, Any]:
        """Keep the XML on the host (for operators) and define the domain, autostarted."""
        ctx = self.ctx
        names = ctx.names(reservation)
        ctx.files.write(names.xml_path, xml.encode())
        domain = domains.define(ctx.conn, xml, ctx.host.name)
        if domain.name() != names.domain:
            raise HypervisorError(
                f"libvirt defined {domain.name()!r}, expected {names.domain!r}", host=ctx.host.name
            )
        try:
            domain.setAutostart(1)
        except libvirt.libvirtError as error:
            log.warning("autostart_failed", domain=names.domain, error=str(error))
        return {"domain": names.domain, "xml_path": names.xml_path}

    def post_load(self, reservation: Reservation) -> dict[str, Any]:
        """Wait for the guest to answer SSH, then run the OS hook (images of os_type none skip)."""
        ctx = self.ctx
        if reservation.image.os_type.lower() == "none":
            return {"guest": "not contacted: os_type none"}
        timeout = (
            ctx.settings.post_load_timeout_windows
            if reservation.image.is_windows
            else ctx.settings.post_load_timeout_linux
        )
        target = ctx.guest_target(reservation)
        started = time.monotonic()
        guest = connect_guest(target, timeout=timeout)
        try:
            answered = round(time.monotonic() - started, 2)
            done = hooks.post_load(
                guest, reservation, scripts_dir=ctx.settings.post_load_scripts_dir
            )
        finally:
            guest.close()
        return {"guest": f"{target.address}:{target.port}", "ssh_after_s": answered, **done}
