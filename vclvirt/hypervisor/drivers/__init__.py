"""Hypervisor drivers, discovered through the `vclvirt.drivers` entry-point group."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Protocol

from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import COPY_TIMEOUT
from vclvirt.errors import InvalidInput
from vclvirt.hypervisor.domain_xml import DomainSpec
from vclvirt.models import Reservation
from vclvirt.node.transport import Transport


class HypervisorDriver(Protocol):
    """What the provisioner asks of a hypervisor beyond plain libvirt calls."""

    name: str

    def image_info(self, path: str) -> dict[str, object]:
        """`qemu-img info` of a disk file, as a dict."""
        ...

    def convert(
        self,
        source: str,
        destination: str,
        fmt: str,
        *,
        compat: str | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        """Standalone copy; `progress` gets the fraction done as the copy runs."""
        ...

    def verify(self, path: str, expected_format: str | None = None) -> str:
        """Raise ImageInvalid unless the image is readable, of the expected format and
        consistent; returns the detected format."""
        ...

    def ensure_overlay(self, master: str, master_format: str, overlay: str) -> bool:
        """Make `overlay` a qcow2 backed by master; True when it had to be (re)created."""
        ...

    def create_overlay(self, master: str, master_format: str, overlay: str) -> None:
        """A new qcow2 at `overlay` backed by master, replacing any file there."""
        ...

    def extend_domain_xml(self, spec: DomainSpec, reservation: Reservation) -> DomainSpec:
        """Hook: last changes to the domain before it is rendered and defined."""
        ...

    def pre_define(self, reservation: Reservation, master: str, overlay: str) -> list[str]:
        """Hook run after the master and overlay are in place, before define; returns notes
        for the status record."""
        ...


def load_driver(
    host: HostConfig, node: Transport, *, copy_timeout: float = COPY_TIMEOUT
) -> HypervisorDriver:
    """Instantiate the driver the host's inventory entry names (default `kvm`); a driver
    is made as `Driver(host, node, copy_timeout=seconds)`."""
    for entry in entry_points(group="vclvirt.drivers"):
        if entry.name == host.driver:
            driver: HypervisorDriver = entry.load()(host, node, copy_timeout=copy_timeout)
            return driver
    raise InvalidInput(
        f"no hypervisor driver named {host.driver!r} is installed",
        host=host.name,
        hint="Install the package providing it or fix 'driver' in the inventory",
    )
