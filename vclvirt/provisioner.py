"""The provisioning API of the reference module, in plain synchronous Python.

Each public method is one step a task runs; each converges to its goal, so a
step Celery delivers twice does no harm. Usable without Celery.
"""

from __future__ import annotations

import posixpath
import re
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import libvirt
import structlog

from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import Settings, get_settings
from vclvirt.errors import (
    DomainMissing,
    GuestHostKeyChanged,
    HypervisorError,
    ImageExists,
    ImageNotFound,
    InvalidInput,
    VclvirtError,
)
from vclvirt.guest import hooks
from vclvirt.guest.access import connect_guest, guest_target
from vclvirt.guest.hostkeys import GuestHostKeys
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
from vclvirt.hypervisor.drivers import HypervisorDriver
from vclvirt.images.capture import flatten_to_master, publish_to_repository
from vclvirt.images.master import Progress, ensure_master, find_in_repository, find_master
from vclvirt.images.repository import NOT_DISKS, allocated_bytes
from vclvirt.models import IMAGE_NAME_PATTERN, Reservation
from vclvirt.naming import LoadNames, domain_uuid, new_image_name
from vclvirt.node.transport import Transport, path_exists, write_file

log = structlog.get_logger(__name__)

_REMOTE_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "afs", "glusterfs", "ceph", "9p"}


class Provisioner:
    """Operations on one hypervisor host."""

    def __init__(
        self,
        host: HostConfig,
        node: Transport,
        driver: HypervisorDriver,
        connect: Callable[[], libvirt.virConnect],
        *,
        management_node: str | None = None,
        settings: Settings | None = None,
        guest_host_keys: GuestHostKeys | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        # Guests' SSH host keys, pinned per reservation (default: in the broker's records).
        self.guest_host_keys = guest_host_keys or GuestHostKeys.from_url(self.settings.broker_url)
        self.host = host
        self.node = node
        self.driver = driver
        self._connect = connect
        self.management_node = management_node or socket.gethostname()
        self._vm_fstype: str | None = None

    @property
    def conn(self) -> libvirt.virConnect:
        return self._connect()

    def names(self, reservation: Reservation) -> LoadNames:
        return LoadNames.for_reservation(
            reservation,
            datastore_path=self.host.datastore_path,
            vm_path=self.host.vm_dir,
            xml_dir=self.host.xml_dir,
        )

    # -- load steps ---------------------------------------------------------

    def delete_existing_domains(self, reservation: Reservation) -> dict[str, Any]:
        """Remove every domain of the computer with its snapshots, overlays and XML files."""
        computer = reservation.computer.short_name
        deleted, removed_files = [], []
        for domain in domains.computer_domains(self.conn, computer, self.host.name):
            removed_files += self.delete_domain(domain, computer)
            deleted.append(domain.name())
        self.guest_host_keys.forget(reservation.reservation_id)  # a new guest, a new key
        self.node.run(
            [
                "find",
                self.host.xml_dir,
                "-maxdepth",
                "1",
                "-type",
                "f",
                "-name",
                f"{computer}_*.xml",
                "-delete",
            ],
            check=False,
        )
        return {"deleted_domains": deleted, "removed_files": removed_files}

    def delete_domain(self, domain: libvirt.virDomain, computer: str) -> list[str]:
        """Stop, drop snapshots, remove the computer's own overlays, undefine."""
        name = domain.name()
        domains.destroy(domain, self.host.name)
        domains.delete_snapshots(domain, self.host.name)
        removed = []
        for path in domains.disk_files(domains.domain_xml(domain, self.host.name)):
            if self._is_own_overlay(path, computer):
                self.node.run(["rm", "-f", "--", path])
                removed.append(path)
            else:
                log.warning(
                    "disk_kept",
                    domain=name,
                    path=path,
                    reason="not an overlay of this computer inside vm_path",
                )
        domains.undefine(domain, self.host.name)
        log.info("domain_deleted", domain=name, removed=removed)
        return removed

    def _is_own_overlay(self, path: str, computer: str) -> bool:
        """Only `<vm_path>/<computer>_<id>-v<rev>.<ext>` is ours to delete: never a master."""
        pattern = rf"{re.escape(computer)}_\d+-v\d+\.[A-Za-z0-9]+"
        return posixpath.dirname(path) == self.host.vm_dir and bool(
            re.fullmatch(pattern, posixpath.basename(path))
        )

    def pre_define(
        self,
        reservation: Reservation,
        progress: Progress | None = None,
        *,
        reuse_overlay: bool = False,
    ) -> dict[str, Any]:
        """Master on the host (copied from the repository if needed), then the overlay
        (made anew unless `reuse_overlay`: a file at its path may be another user's disk)."""
        names = self.names(reservation)
        master = ensure_master(
            self.node, self.driver, self.host, reservation.image.name, progress=progress
        )
        if not reuse_overlay:
            self.node.run(["rm", "-f", "--", names.overlay_path])
        created = self.driver.ensure_overlay(master.path, master.format, names.overlay_path)
        notes = self.driver.pre_define(reservation, master.path, names.overlay_path)
        return {
            "master": master.path,
            "master_format": master.format,
            "master_copied": master.copied,
            "master_bytes": master.bytes_written,
            "overlay": names.overlay_path,
            "overlay_created": created,
            "notes": notes,
        }

    def remove_overlay(self, reservation: Reservation) -> list[str]:
        """The reservation's overlay and XML file, unless a domain of the computer uses it."""
        names = self.names(reservation)
        computer = reservation.computer.short_name
        for domain in domains.computer_domains(self.conn, computer, self.host.name):
            if names.overlay_path in domains.disk_files(domains.domain_xml(domain, self.host.name)):
                return []
        removed = []
        for path in (names.overlay_path, names.xml_path):
            if path_exists(self.node, path):
                self.node.run(["rm", "-f", "--", path])
                removed.append(path)
        return removed

    def host_facts(self, reservation: Reservation) -> HostFacts:
        """What the XML needs from the host; read after the master (and its XML) is there."""
        names = self.names(reservation)
        reference = self.node.run(["cat", "--", names.master_reference_xml], check=False)
        bus, model = reference_hardware(reference.text) if reference.ok else (None, None)
        if self._vm_fstype is None:  # the filesystem under vm_path does not change under us
            self._vm_fstype = self.node.run(
                ["findmnt", "-n", "-o", "FSTYPE", "-T", self.host.vm_dir], check=False
            ).text.strip()
        fstype = self._vm_fstype
        return HostFacts(
            domain_type=resolve_domain_type(self.conn, self.host.domain_type, self.host.name),
            networks=network_names(self.conn, self.host.name),
            vm_path_is_local=fstype.split(".")[-1] not in _REMOTE_FILESYSTEMS,
            disk_bus=bus or DEFAULT_DISK_BUS,
            nic_model=model or DEFAULT_NIC_MODEL,
        )

    def generate_xml(self, reservation: Reservation) -> dict[str, Any]:
        """The domain XML for this reservation on this host."""
        names = self.names(reservation)
        spec = plan_domain(
            reservation,
            name=names.domain,
            uuid=domain_uuid(self.host.name, names.domain),
            overlay_path=names.overlay_path,
            private_switch=self.host.private_switch,
            public_switch=self.host.public_switch,
            facts=self.host_facts(reservation),
            loaded_at=datetime.now(UTC),
            management_node=self.management_node,
        )
        if self.host.guest_network == "user":
            spec = with_user_network(spec, reservation, self.host)
        spec = self.driver.extend_domain_xml(spec, reservation)
        return {"domain": spec.name, "xml": render_domain_xml(spec)}

    def define(self, reservation: Reservation, xml: str) -> dict[str, Any]:
        """Keep the XML on the host (for operators) and define the domain, autostarted."""
        names = self.names(reservation)
        write_file(self.node, names.xml_path, xml.encode())
        domain = domains.define(self.conn, xml, self.host.name)
        if domain.name() != names.domain:
            raise HypervisorError(
                f"libvirt defined {domain.name()!r}, expected {names.domain!r}", host=self.host.name
            )
        try:
            domain.setAutostart(1)
        except libvirt.libvirtError as error:
            log.warning("autostart_failed", domain=names.domain, error=str(error))
        return {"domain": names.domain, "xml_path": names.xml_path}

    def _domain(self, reservation: Reservation) -> libvirt.virDomain:
        name = self.names(reservation).domain
        domain = domains.lookup(self.conn, name, self.host.name)
        if domain is None:
            raise DomainMissing(
                f"domain {name} is not defined",
                host=self.host.name,
                hint="Load the reservation (vclvirt load) to create it",
            )
        return domain

    def power_on(self, reservation: Reservation) -> dict[str, Any]:
        names = self.names(reservation)
        domain = self._domain(reservation)
        started = domains.start(domain, self.host.name)
        return {
            "domain": names.domain,
            "started": started,
            "power": domains.power_state(domain, self.host.name),
        }

    def post_load(self, reservation: Reservation) -> dict[str, Any]:
        """Wait for the guest to answer SSH, then run the OS hook (images of os_type none skip)."""
        if reservation.image.os_type.lower() == "none":
            return {"guest": "not contacted: os_type none"}
        timeout = (
            self.settings.post_load_timeout_windows
            if reservation.image.is_windows
            else self.settings.post_load_timeout_linux
        )
        target = guest_target(self.host, reservation, self.settings, self.guest_host_keys)
        started = time.monotonic()
        guest = connect_guest(target, timeout=timeout)
        try:
            answered = round(time.monotonic() - started, 2)
            done = hooks.post_load(
                guest, reservation, scripts_dir=self.settings.post_load_scripts_dir
            )
        finally:
            guest.close()
        return {"guest": f"{target.address}:{target.port}", "ssh_after_s": answered, **done}

    def node_status(self, reservation: Reservation) -> dict[str, Any]:
        """READY / POST_LOAD / RELOAD (§2.4.1), and RELOAD when the hypervisor has no
        running domain of this computer with the expected name."""
        if reservation.state == "reinstall":
            return {"status": hooks.RELOAD, "reason": "state reinstall always reloads"}
        name = self.names(reservation).domain
        domain = domains.lookup(self.conn, name, self.host.name)
        if domain is None or domains.power_state(domain, self.host.name) != "on":
            return {"status": hooks.RELOAD, "reason": f"domain {name} is not running"}
        if reservation.image.os_type.lower() == "none":
            # No guest to ask: the domain's disk must be this image's overlay instead.
            backing = self._backing_image(domain)
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
            target = guest_target(self.host, reservation, self.settings, self.guest_host_keys)
            guest = connect_guest(target, timeout=self.settings.node_status_timeout)
        except GuestHostKeyChanged:
            raise  # not a guest to reload over: something else answers at its address
        except VclvirtError as error:
            return {"status": hooks.RELOAD, "reason": f"guest does not answer: {error.message}"}
        try:
            status, reason = hooks.guest_status(guest, reservation)
        finally:
            guest.close()
        return {"status": status, "reason": reason}

    def _backing_image(self, domain: libvirt.virDomain) -> str | None:
        """Name of the master behind the domain's first disk (its file name sans extension)."""
        disks = domains.disk_files(domains.domain_xml(domain, self.host.name))
        if not disks:
            return None
        try:
            backing = self.driver.image_info(disks[0]).get("backing-filename")
        except VclvirtError:
            return None
        return posixpath.splitext(posixpath.basename(str(backing)))[0] if backing else None

    def power_status(self, reservation: Reservation) -> dict[str, Any]:
        name = self.names(reservation).domain
        domain = domains.lookup(self.conn, name, self.host.name)
        state = "undefined" if domain is None else domains.power_state(domain, self.host.name)
        return {"domain": name, "power": state}

    def power_off(self, reservation: Reservation) -> dict[str, Any]:
        """ACPI shutdown, re-sent every 10 s; destroy after the timeout. Off already is fine."""
        domain = self._domain(reservation)
        started = time.monotonic()
        method = domains.shut_down(domain, self.host.name, timeout=self.settings.power_off_timeout)
        return {
            "domain": domain.name(),
            "method": method,
            "seconds": round(time.monotonic() - started, 2),
            "power": domains.power_state(domain, self.host.name),
        }

    def power_reset(self, reservation: Reservation) -> dict[str, Any]:
        """Hard power cycle of the reservation's own domain (the reference ignored its argument)."""
        domain = self._domain(reservation)
        domains.destroy(domain, self.host.name)
        domains.start(domain, self.host.name)
        return {"domain": domain.name(), "power": domains.power_state(domain, self.host.name)}

    def unload(self, reservation: Reservation) -> dict[str, Any]:
        """Leave the computer empty: its domains, overlays and XML files removed."""
        return self.delete_existing_domains(reservation)

    # -- capture (state image / checkpoint) --------------------------------------

    def capture_prepare(self, reservation: Reservation) -> dict[str, Any]:
        """Find the VM by MAC, check the new name is free, let the guest describe itself."""
        new_image = new_image_name(
            reservation.image.os_name,
            reservation.image.pretty_name,
            reservation.image.id,
            reservation.image.revision,
        )
        if not re.fullmatch(IMAGE_NAME_PATTERN, new_image):
            raise InvalidInput(
                f"the captured image would be named {new_image!r}, which is not a valid image name",
                hint="Change the pretty name",
            )
        domain = self._capture_domain(reservation)
        xml = domains.domain_xml(domain, self.host.name)
        disks = domains.disk_files(xml)
        if not disks:
            raise HypervisorError(
                f"domain {domain.name()} has no file-backed disk to capture", host=self.host.name
            )
        in_repository = find_in_repository(self.node, self.host, new_image)
        existing = [
            path
            for path in (
                find_master(self.node, self.host, new_image),
                in_repository.path if in_repository else None,
            )
            if path
        ]
        if existing:
            raise ImageExists(
                f"image {new_image} exists already: {', '.join(existing)}", host=self.host.name
            )
        guest_done: dict[str, Any] = {"guest": "not contacted: os_type none"}
        if reservation.image.os_type.lower() != "none" and domain.isActive():
            target = guest_target(self.host, reservation, self.settings, self.guest_host_keys)
            guest = connect_guest(target, timeout=self.settings.node_status_timeout * 4)
            try:
                guest_done = hooks.pre_capture(guest, reservation, new_image, xml)
            finally:
                guest.close()
        return {
            "domain": domain.name(),
            "new_image": new_image,
            "disk": disks[0],
            "disks_not_captured": disks[1:],
            "xml": xml,
            **guest_done,
        }

    def _capture_domain(self, reservation: Reservation) -> libvirt.virDomain:
        """The domain whose NICs carry the computer's MACs (a base VM may be named freely)."""
        macs = {reservation.computer.eth0_mac, reservation.computer.eth1_mac}
        names = domains.domains_with_mac(self.conn, macs, self.host.name)
        if len(names) > 1:
            raise HypervisorError(
                f"several domains carry the computer's MACs: {names}",
                host=self.host.name,
                hint="Remove the stale domains",
            )
        if names:
            found = domains.lookup(self.conn, names[0], self.host.name)
            if found is not None:
                return found
        return self._domain(reservation)

    def capture_shutdown(self, reservation: Reservation, domain_name: str) -> dict[str, Any]:
        domain = domains.lookup(self.conn, domain_name, self.host.name)
        if domain is None:
            raise DomainMissing(f"domain {domain_name} disappeared", host=self.host.name)
        started = time.monotonic()
        method = domains.shut_down(domain, self.host.name, timeout=self.settings.power_off_timeout)
        return {
            "domain": domain_name,
            "method": method,
            "seconds": round(time.monotonic() - started, 2),
        }

    def capture_flatten(self, reservation: Reservation, prepared: dict[str, Any]) -> dict[str, Any]:
        return flatten_to_master(
            self.node,
            self.driver,
            self.host,
            prepared["disk"],
            prepared["new_image"],
            prepared["xml"],
        )

    def capture_publish(
        self, reservation: Reservation, prepared: dict[str, Any], master: str
    ) -> dict[str, Any]:
        published = publish_to_repository(
            self.node, self.driver, self.host, master, prepared["new_image"], prepared["xml"]
        )
        return {"repository_image": published}

    def capture_finish(self, reservation: Reservation, prepared: dict[str, Any]) -> dict[str, Any]:
        """`image`: delete the domain and only its own overlay; `checkpoint`: power it on."""
        domain = domains.lookup(self.conn, prepared["domain"], self.host.name)
        if domain is None:
            return {"domain": prepared["domain"], "action": "already gone"}
        if reservation.state == "image":
            removed = self.delete_domain(domain, reservation.computer.short_name)
            return {"domain": prepared["domain"], "action": "deleted", "removed_files": removed}
        domains.start(domain, self.host.name)
        return {
            "domain": prepared["domain"],
            "action": "powered on",
            "power": domains.power_state(domain, self.host.name),
        }

    # -- snapshots -----------------------------------------------------------------

    def snapshot_create(self, reservation: Reservation, name: str) -> dict[str, Any]:
        domain = self._domain(reservation)
        description = f"reservation {reservation.reservation_id}, image {reservation.image.name}"
        domains.create_snapshot(domain, name, description, self.host.name)
        return {"domain": domain.name(), "snapshot": name}

    def snapshot_list(self, reservation: Reservation) -> dict[str, Any]:
        domain = self._domain(reservation)
        return {
            "domain": domain.name(),
            "snapshots": domains.list_snapshots(domain, self.host.name),
        }

    def snapshot_revert(self, reservation: Reservation, name: str) -> dict[str, Any]:
        domain = self._domain(reservation)
        domains.revert_snapshot(domain, name, self.host.name)
        return {
            "domain": domain.name(),
            "snapshot": name,
            "power": domains.power_state(domain, self.host.name),
        }

    def snapshot_delete(self, reservation: Reservation, name: str) -> dict[str, Any]:
        domain = self._domain(reservation)
        domains.delete_snapshot(domain, name, self.host.name)
        return {"domain": domain.name(), "snapshot": name, "deleted": True}

    # -- image queries (does_image_exist, get_image_size, ...) ------------------------

    def does_image_exist(self, image_name: str) -> bool:
        """On the host as a master, or in the repository."""
        return bool(find_master(self.node, self.host, image_name)) or bool(
            find_in_repository(self.node, self.host, image_name)
        )

    def get_image_size_bytes(self, image_name: str) -> int:
        """Allocated bytes of the host's master, else of the repository files; ImageNotFound."""
        master = find_master(self.node, self.host, image_name)
        if master:
            return allocated_bytes(self.node, [master])
        source = find_in_repository(self.node, self.host, image_name)
        if source is None:
            raise ImageNotFound(
                f"image {image_name} is neither a master on the host nor in the repository",
                host=self.host.name,
            )
        return allocated_bytes(self.node, list(source.files))

    def get_image_size(self, image_name: str) -> int:
        """Size in MB (floor), as the reference reports it to image.pm."""
        return self.get_image_size_bytes(image_name) // 2**20

    def list_images(self) -> dict[str, list[str]]:
        """Masters in the datastore and image directories in the repository."""
        masters = self.node.run(
            ["find", self.host.datastore_path, "-type", "f", "-name", "*.*"], check=False
        ).text.splitlines()
        names = sorted(
            {
                posixpath.splitext(posixpath.basename(p))[0]
                for p in masters
                if not p.lower().endswith(NOT_DISKS)
            }
        )
        repository: list[str] = []
        if self.host.repository_path:
            listing = self.node.run(
                [
                    "find",
                    self.host.repository_path,
                    "-mindepth",
                    "1",
                    "-maxdepth",
                    "1",
                    "-type",
                    "d",
                ],
                check=False,
            )
            repository = sorted(posixpath.basename(p) for p in listing.text.splitlines() if p)
        return {"datastore": names, "repository": repository}
