"""One hypervisor host as an operation's steps see it: each concern of vclvirt.provisioning
over the one HostAccess they share (its transport, libvirt connection, files, settings)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import libvirt

from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import Settings
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.hypervisor.connection import connect as connect_libvirt
from vclvirt.hypervisor.drivers import load_driver
from vclvirt.node.transport import Transport
from vclvirt.provisioning.access import HostAccess
from vclvirt.provisioning.capture import Capture
from vclvirt.provisioning.cleanup import Cleanup
from vclvirt.provisioning.images import ImageQueries
from vclvirt.provisioning.leftovers import Leftovers
from vclvirt.provisioning.load import LoadSteps
from vclvirt.provisioning.node_status import NodeStatus
from vclvirt.provisioning.power import Power
from vclvirt.provisioning.snapshots import Snapshots


class Host:
    """What can be done on one host, by concern: `host.power.on(reservation)`."""

    def __init__(self, access: HostAccess) -> None:
        self.access = access
        self.status = NodeStatus(access)
        self.cleanup = Cleanup(access)
        self.load = LoadSteps(access)
        self.power = Power(access)
        self.capture = Capture(access, self.cleanup)
        self.snapshots = Snapshots(access)
        self.images = ImageQueries(access)
        self.leftovers = Leftovers(access, self.cleanup)

    @property
    def config(self) -> HostConfig:
        return self.access.host

    @property
    def name(self) -> str:
        return self.access.host.name


def build_host(
    config: HostConfig,
    node: Transport,
    settings: Settings,
    guest_host_keys: GuestHostKeys,
    *,
    connect: Callable[[], libvirt.virConnect] | None = None,
) -> Host:
    """A Host reached through `node`, its libvirt connection opened on first use (through
    the run's fence when one is held)."""
    return Host(
        HostAccess(
            host=config,
            node=node,
            driver=load_driver(config, node, copy_timeout=settings.copy_timeout),
            connect=connect or (lambda: connect_libvirt(config, node)),
            settings=settings,
            management_node=socket.gethostname(),
            guest_host_keys=guest_host_keys,
        )
    )
