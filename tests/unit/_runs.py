"""A worker's world for the runner, recovery and dispatch unit tests, with no service: the
in-memory store and fake host of vclvirt.testing, libvirt's in-process test driver, and
toy operations whose step bodies a test writes.

The provisioner-shaped part (what a run gets for its host) is all in `provisioner_for`
and `ToyWorld.provisioner`: when the provisioner facade changes, only they change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pytest
import redis

from tests.unit._provisioning import UnitHost, make_host
from tests.unit._provisioning import reservation as unit_reservation
from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import Settings
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.hypervisor.drivers.kvm import KvmDriver
from vclvirt.models import Reservation
from vclvirt.node.transport import Transport
from vclvirt.operations import Operation, StepContext, registry
from vclvirt.provisioner import Provisioner
from vclvirt.recovery import Reconciler, this_process
from vclvirt.runner import Runner
from vclvirt.state.records import RecordStore, ReservationStatus
from vclvirt.testing import FakeTransport, memory_redis

HOST = "unit-host"
SETTINGS = Settings(lease_ttl=3, power_off_timeout=5)


def host_config(tmp_path: Path) -> HostConfig:
    return HostConfig(
        name=HOST,
        address="127.0.0.1",
        transport="local",
        libvirt_uri=f"test://{tmp_path / 'node.xml'}",
        domain_type="test",
        datastore_path=str(tmp_path / "images"),
        vm_path=str(tmp_path / "vms"),
        xml_dir=str(tmp_path / "xml"),
        repository_path=str(tmp_path / "repository"),
        fence_dir=str(tmp_path / "fence"),
    )


def provisioner_for(
    host: HostConfig, node: Transport, client: redis.Redis, connect: Callable[[], Any]
) -> Provisioner:
    """What the runner gets for its host: a real Provisioner over the given transport and
    libvirt connection, its guests' host keys in the same store."""
    return Provisioner(
        host,
        node,
        KvmDriver(host, node),
        connect,
        management_node="unit-tests",
        settings=SETTINGS,
        guest_host_keys=GuestHostKeys(client),
    )


@dataclass
class ToyWorld:
    """One worker process's view: its store, its host's provisioner, its runner."""

    redis: redis.Redis
    host: HostConfig
    node: FakeTransport  # the host's commands, unless the provisioner has a transport of its own
    provisioner: Provisioner
    monkeypatch: pytest.MonkeyPatch
    published: list[tuple[int, int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.records = RecordStore(self.redis)
        self.runner = Runner(self.redis, SETTINGS, lambda _host: self.provisioner)

    def operation(
        self,
        name: str,
        bodies: dict[str, Callable[[StepContext], dict[str, Any]]],
        *,
        on_abandon: Callable[[StepContext], dict[str, Any]] | None = None,
        owns_computer: bool = True,
    ) -> Operation:
        """A toy operation, known to the registry for this test only."""
        op = Operation(
            name=name,
            steps=tuple(bodies),
            bodies=bodies,
            owns_computer=owns_computer,
            on_abandon=on_abandon,
        )
        self.monkeypatch.setitem(registry.OPERATIONS, name, op)
        return op

    def begin(self, op: Operation, reservation: Reservation | None = None) -> int:
        """Enqueue `op` as dispatch does (the record, no message); its generation."""
        return self.records.begin(
            reservation or toy_reservation(),
            op.name,
            list(op.steps),
            owns_computer=op.owns_computer,
        )

    def record(self, reservation_id: int = 0) -> ReservationStatus:
        found = self.records.get(reservation_id or toy_reservation().reservation_id)
        assert found is not None
        return found

    def reconciler(self, settings: Settings = SETTINGS) -> Reconciler:
        """This worker's reconciler for the host; what it publishes lands in `published`."""

        def publish(record: ReservationStatus, generation: int, resumed: bool) -> None:
            self.published.append((record.reservation_id, generation, resumed))

        return Reconciler(self.redis, settings, [HOST], this_process(), publish)


def toy_reservation(**top: Any) -> Reservation:
    return unit_reservation(**top)


def make_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ToyWorld:
    """The `world` fixture (tests/unit/conftest.py): a toy host behind a FakeTransport, on a
    test-driver node of its own (toy operations define no domain; their host commands
    are the fake host's)."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    node_file = tmp_path / "node.xml"
    node_file.write_text("<node/>")
    conn = libvirt.open(f"test://{node_file}")
    client, host, node = memory_redis(), host_config(tmp_path), FakeTransport(HOST)
    provisioner = provisioner_for(host, node, client, lambda: conn)
    return ToyWorld(client, host, node, provisioner, monkeypatch)


def load_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ToyWorld, UnitHost]:
    """A world whose host really provisions: tests/unit/_provisioning's host (libvirt's
    test driver on a node of its own, the local transport, real qemu-img on files under
    tmp_path), with the master of the toy reservation's image cached there."""
    unit = make_host(tmp_path)
    unit.master(toy_reservation().image.name)
    # Switches, so the domain has NICs with the computer's MACs (a capture finds it so).
    host = unit.context.host.model_copy(update={"private_switch": "br0", "public_switch": "br1"})
    client = memory_redis()
    provisioner = provisioner_for(host, unit.context.node, client, unit.context.connect)
    return ToyWorld(client, host, FakeTransport(HOST), provisioner, monkeypatch), unit
