"""Who this process is to the others: the node name its leases and heartbeats carry, the
run it belongs to, and the hosts it serves. Built once by whoever starts the process
(`vclvirt worker`, or a client) and handed down; pool processes inherit it by fork."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from vclvirt.state.leases import Holder


def _new_boot() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Identity:
    """`node` names the worker (`<host>@<machine>`) or a client (`local@<machine>`);
    `boot` tells this run from an earlier one of the same node; `hosts` is empty for a
    client (API, CLI, scheduler), which serves none."""

    node: str
    boot: str = field(default_factory=_new_boot)
    hosts: tuple[str, ...] = ()

    @classmethod
    def worker(cls, hosts: list[str]) -> Identity:
        machine = socket.gethostname()
        node = (
            f"{hosts[0]}@{machine}" if len(hosts) == 1 else f"{hosts[0]}+{len(hosts) - 1}@{machine}"
        )
        return cls(node=node, hosts=tuple(hosts))

    @classmethod
    def client(cls) -> Identity:
        return cls(node=f"local@{socket.gethostname()}")

    def holder(self) -> Holder:
        """What this process claims leases as: the node, its run, and this process."""
        return Holder(self.node, self.boot, os.getpid())

    def serves(self, host: str) -> bool:
        return not self.hosts or host in self.hosts
