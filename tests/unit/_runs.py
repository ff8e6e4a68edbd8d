"""A worker's world for the runner, recovery and dispatch unit tests, with no service: the
in-memory store and fake host of vclvirt.testing, libvirt's in-process test driver, and
toy operations whose step bodies a test writes.

What a run gets for its host is built in one place, `host_for`, with the composition
root's own build_host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import libvirt
import pytest
import redis

from tests.unit._provisioning import UnitHost, make_host
from tests.unit._provisioning import reservation as unit_reservation
from vclvirt import operations
from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import Settings
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.identity import Identity
from vclvirt.models import Reservation
from vclvirt.node.transport import Transport
from vclvirt.operation import Operation, Step, StepContext
from vclvirt.provisioning.host import Host, build_host
from vclvirt.recovery import Reconciler
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


def host_for(
    config: HostConfig, node: Transport, client: redis.Redis, connect: Callable[[], Any]
) -> Host:
    """What the runner gets for its host: a real Host over the given transport and
    libvirt connection, its guests' host keys in the same store."""
    return build_host(config, node, SETTINGS, GuestHostKeys(client), connect=connect)


@dataclass
class ToyWorld:
    """One worker process's view: its store, its host, its runner."""

    redis: redis.Redis
    config: HostConfig
    node: FakeTransport  # the host's commands, unless the host has a transport of its own
    host: Host
    monkeypatch: pytest.MonkeyPatch
    published: list[tuple[int, int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.records = RecordStore(self.redis)
        self.identity = Identity.worker([HOST])
        self.runner = Runner(self.redis, SETTINGS, lambda _name: self.host, identity=self.identity)

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
            summary="a toy operation of the unit tests",
            steps=tuple(Step(step, body) for step, body in bodies.items()),
            owns_computer=owns_computer,
            on_abandon=on_abandon,
        )
        self.monkeypatch.setitem(operations.OPERATIONS, name, op)
        return op

    def begin(self, op: Operation, reservation: Reservation | None = None) -> int:
        """Enqueue `op` as dispatch does (the record, no message); its generation."""
        return self.records.begin(
            reservation or toy_reservation(),
            op.name,
            list(op.step_names),
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

        return Reconciler(self.redis, settings, [HOST], self.identity.holder(), publish)


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
    client, config, node = memory_redis(), host_config(tmp_path), FakeTransport(HOST)
    host = host_for(config, node, client, lambda: conn)
    return ToyWorld(client, config, node, host, monkeypatch)


def load_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ToyWorld, UnitHost]:
    """A world whose host really provisions: tests/unit/_provisioning's host (libvirt's
    test driver on a node of its own, the local transport, real qemu-img on files under
    tmp_path), with the master of the toy reservation's image cached there."""
    unit = make_host(tmp_path)
    unit.master(toy_reservation().image.name)
    # Switches, so the domain has NICs with the computer's MACs (a capture finds it so).
    config = unit.context.host.model_copy(update={"private_switch": "br0", "public_switch": "br1"})
    client = memory_redis()
    host = host_for(config, unit.context.node, client, unit.context.connect)
    return ToyWorld(client, config, FakeTransport(HOST), host, monkeypatch), unit


class RecoveryClock:
    """recovery.py's clocks, moved only by the test: the wall clock of the records (`now`)
    and the monotonic one of its pacing. Timing decisions are checked at their boundary
    without sleeping, however loaded the machine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, wall: float) -> None:
        self.wall, self.mono = wall, 1000.0
        monkeypatch.setattr("vclvirt.recovery.now", lambda: self.wall)
        clocks = SimpleNamespace(
            monotonic=lambda: self.mono, time=time.time, strftime=time.strftime, gmtime=time.gmtime
        )
        monkeypatch.setattr("vclvirt.recovery.time", clocks)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds
