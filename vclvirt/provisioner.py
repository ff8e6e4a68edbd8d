"""The provisioning API of the reference module, in plain synchronous Python: one entry
point per operation on one host. Usable without Celery.

Each method is one step a task runs (or one operation) and converges to its goal, so a
step Celery delivers twice does no harm. The work is done by the modules of
`vclvirt.provisioning`, one per concern, over one shared HostContext; this class only
puts them together and keeps the names the task layer calls.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import libvirt

from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import Settings, get_settings
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.hypervisor.domain_xml import HostFacts
from vclvirt.hypervisor.drivers import HypervisorDriver
from vclvirt.images.copy import Progress
from vclvirt.models import Reservation
from vclvirt.naming import LoadNames
from vclvirt.node.transport import Transport
from vclvirt.provisioning.capture import Capture
from vclvirt.provisioning.cleanup import Cleanup
from vclvirt.provisioning.context import HostContext
from vclvirt.provisioning.images import ImageQueries
from vclvirt.provisioning.load import LoadSteps
from vclvirt.provisioning.node_status import NodeStatus
from vclvirt.provisioning.power import Power
from vclvirt.provisioning.snapshots import Snapshots


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
        settings = settings or get_settings()
        self.context = HostContext(
            host=host,
            node=node,
            driver=driver,
            connect=connect,
            settings=settings,
            management_node=management_node or socket.gethostname(),
            # default: pinned in the broker's reservation records
            guest_host_keys=guest_host_keys or GuestHostKeys.from_url(settings.broker_url),
        )
        self._status = NodeStatus(self.context)
        self._cleanup = Cleanup(self.context)
        self._load = LoadSteps(self.context)
        self._power = Power(self.context)
        self._capture = Capture(self.context, self._cleanup)
        self._snapshots = Snapshots(self.context)
        self._images = ImageQueries(self.context)

    @property
    def host(self) -> HostConfig:
        return self.context.host

    @property
    def node(self) -> Transport:
        return self.context.node

    @property
    def driver(self) -> HypervisorDriver:
        return self.context.driver

    @property
    def settings(self) -> Settings:
        return self.context.settings

    @property
    def management_node(self) -> str:
        return self.context.management_node

    @property
    def conn(self) -> libvirt.virConnect:
        return self.context.conn

    def names(self, reservation: Reservation) -> LoadNames:
        return self.context.names(reservation)

    # -- load steps, in chain order ------------------------------------------------

    def node_status(self, reservation: Reservation) -> dict[str, Any]:
        """READY / POST_LOAD / RELOAD (§2.4.1), and RELOAD when the hypervisor has no
        running domain of this computer with the expected name."""
        return self._status.check(reservation)

    def check_guest_access(self, reservation: Reservation) -> dict[str, Any]:
        """GuestAccessNotConfigured unless the configuration says how to log in to the
        guest (key, address); no host or guest is contacted. A load that will need the
        guest checks this before it destroys anything."""
        target = self._status.guest_access(reservation)
        if target is None:
            return {"guest": "not contacted: os_type none"}
        return {"guest": f"{target.address}:{target.port}", "key_file": str(target.key_file)}

    def delete_existing_domains(self, reservation: Reservation) -> dict[str, Any]:
        """Remove every domain of the computer with its snapshots, overlays and XML files."""
        return self._cleanup.delete_existing_domains(reservation)

    def pre_define(
        self,
        reservation: Reservation,
        progress: Progress | None = None,
        *,
        reuse_overlay: bool = False,
    ) -> dict[str, Any]:
        """Master on the host (copied from the repository if needed), then the overlay:
        created anew, or with `reuse_overlay` kept when it already is the right one."""
        return self._load.pre_define(reservation, progress, reuse_overlay=reuse_overlay)

    def generate_xml(self, reservation: Reservation) -> dict[str, Any]:
        """The domain XML for this reservation on this host."""
        return self._load.generate_xml(reservation)

    def define(self, reservation: Reservation, xml: str) -> dict[str, Any]:
        """Keep the XML on the host (for operators) and define the domain, autostarted."""
        return self._load.define(reservation, xml)

    def power_on(self, reservation: Reservation) -> dict[str, Any]:
        return self._power.on(reservation)

    def post_load(self, reservation: Reservation) -> dict[str, Any]:
        """Wait for the guest to answer SSH, then run the OS hook (images of os_type none skip)."""
        return self._load.post_load(reservation)

    def host_facts(self, reservation: Reservation) -> HostFacts:
        """What the XML needs from the host; read after the master (and its XML) is there."""
        return self._load.host_facts(reservation)

    # -- cleaning up ---------------------------------------------------------------

    def unload(self, reservation: Reservation) -> dict[str, Any]:
        """Leave the computer empty: its domains, overlays and XML files removed."""
        return self._cleanup.delete_existing_domains(reservation)

    def remove_overlay(self, reservation: Reservation) -> list[str]:
        """Remove this reservation's overlay and XML file unless a domain uses the overlay
        (a load superseded or failed after pre_define); returns what was removed."""
        return self._cleanup.remove_overlay(reservation)

    def delete_domain(self, domain: libvirt.virDomain, computer: str) -> list[str]:
        """Stop, drop snapshots, remove the computer's own overlays, undefine."""
        return self._cleanup.delete_domain(domain, computer)

    # -- power ---------------------------------------------------------------------

    def power_status(self, reservation: Reservation) -> dict[str, Any]:
        return self._power.status(reservation)

    def power_off(self, reservation: Reservation) -> dict[str, Any]:
        """ACPI shutdown, re-sent every 10 s; destroy after the timeout. Off already is fine."""
        return self._power.off(reservation)

    def power_reset(self, reservation: Reservation) -> dict[str, Any]:
        """Hard power cycle of the reservation's own domain."""
        return self._power.reset(reservation)

    # -- capture (state image / checkpoint) ------------------------------------------

    def capture_prepare(self, reservation: Reservation) -> dict[str, Any]:
        """Find the VM by MAC, check the new name is free, let the guest describe itself."""
        return self._capture.prepare(reservation)

    def capture_shutdown(self, reservation: Reservation, domain_name: str) -> dict[str, Any]:
        return self._capture.shutdown(reservation, domain_name)

    def capture_flatten(self, reservation: Reservation, prepared: dict[str, Any]) -> dict[str, Any]:
        return self._capture.flatten(reservation, prepared)

    def capture_publish(
        self, reservation: Reservation, prepared: dict[str, Any], master: str
    ) -> dict[str, Any]:
        return self._capture.publish(reservation, prepared, master)

    def capture_finish(self, reservation: Reservation, prepared: dict[str, Any]) -> dict[str, Any]:
        """`image`: delete the domain and only its own overlay; `checkpoint`: power it on."""
        return self._capture.finish(reservation, prepared)

    # -- snapshots -------------------------------------------------------------------

    def snapshot_create(self, reservation: Reservation, name: str) -> dict[str, Any]:
        return self._snapshots.create(reservation, name)

    def snapshot_list(self, reservation: Reservation) -> dict[str, Any]:
        return self._snapshots.list(reservation)

    def snapshot_revert(self, reservation: Reservation, name: str) -> dict[str, Any]:
        return self._snapshots.revert(reservation, name)

    def snapshot_delete(self, reservation: Reservation, name: str) -> dict[str, Any]:
        return self._snapshots.delete(reservation, name)

    # -- image queries (does_image_exist, get_image_size, ...) ------------------------

    def does_image_exist(self, image_name: str) -> bool:
        """On the host as a master, or in the repository."""
        return self._images.exists(image_name)

    def get_image_size_bytes(self, image_name: str) -> int:
        """Allocated bytes of the host's master, else of the repository files; ImageNotFound."""
        return self._images.size_bytes(image_name)

    def get_image_size(self, image_name: str) -> int:
        """Size in MB (floor), as the reference reports it to image.pm."""
        return self._images.size_mb(image_name)

    def list_images(self) -> dict[str, list[str]]:
        """Masters in the datastore and image directories in the repository."""
        return self._images.listing()
