"""What every operation on one host shares: its inventory entry, the ways to reach it
(transport for commands, hypervisor driver, libvirt connection), its files, settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import libvirt

from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import Settings
from vclvirt.errors import DomainMissing
from vclvirt.guest.access import RELAY, GuestTarget, guest_target
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.hypervisor import domains
from vclvirt.hypervisor.drivers import HypervisorDriver
from vclvirt.images.files import CommandFiles, HostFiles, host_files
from vclvirt.models import Reservation
from vclvirt.naming import LoadNames
from vclvirt.node import fence
from vclvirt.node.transport import Stream, Transport


@dataclass
class HostAccess:
    """One host, as every provisioning module sees it (one per process and host)."""

    host: HostConfig
    node: Transport
    driver: HypervisorDriver
    connect: Callable[[], libvirt.virConnect]
    settings: Settings
    management_node: str
    guest_host_keys: GuestHostKeys  # guests' SSH host keys, pinned per reservation
    _files: HostFiles | None = field(default=None, init=False, repr=False)

    @property
    def conn(self) -> libvirt.virConnect:
        """The process's libvirt connection to the host (reopened when it died)."""
        return self.connect()

    @property
    def files(self) -> HostFiles:
        """The host's files: through libvirt's storage pools, or commands for the test
        driver (chosen on first use, when the connection tells which driver it is)."""
        if self._files is None:
            commands = CommandFiles(self.node, self.driver)
            self._files = host_files(self.conn, self.host.name, self.connect, commands)
        return self._files

    def names(self, reservation: Reservation) -> LoadNames:
        return LoadNames.for_reservation(
            reservation,
            datastore_path=self.host.datastore_path,
            vm_path=self.host.vm_dir,
            xml_dir=self.host.xml_dir,
        )

    def fence_host(self) -> None:
        """Under a fence: the host records our token now, ending an older holder's
        processes, by opening the run's libvirt connection through the fence (one host
        command either way)."""
        if self.host.libvirt_through_fence:
            self.connect()
        else:
            self.node.run(["true"])

    def guest_target(self, reservation: Reservation) -> GuestTarget:
        """How to log in to the reservation's guest; through a relay on the host when the
        host is configured so, behind the run's fence (node/fence.py)."""
        target = guest_target(self.host, reservation, self.settings, self.guest_host_keys)
        if not self.host.guests_through_host:
            return target
        argv = [*RELAY, target.address, str(target.port)]

        def relay() -> Stream:
            held = fence.current(self.host.name)
            return self.node.open_stream(held.wrap(argv) if held else argv)

        return replace(target, via=relay)

    def domain(self, reservation: Reservation) -> libvirt.virDomain:
        """The reservation's own domain; DomainMissing when it is not defined."""
        name = self.names(reservation).domain
        domain = domains.lookup(self.conn, name, self.host.name)
        if domain is None:
            raise DomainMissing(
                f"domain {name} is not defined",
                host=self.host.name,
                hint="Load the reservation (vclvirt load) to create it",
            )
        return domain
