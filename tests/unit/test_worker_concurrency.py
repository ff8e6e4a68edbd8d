"""How many pool processes a worker gets, and which workers open connections at start
(vclvirt/cli.py default_concurrency, workers/lifecycle.py): a worker serving many hosts
has room for each host's own limit, within a cap, and connects to a host only when a step
needs it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from vclvirt.cli import DEFAULT_CONCURRENCY_CAP, default_concurrency
from vclvirt.config.inventory import HostConfig
from vclvirt.workers.lifecycle import WorkerLife


def hosts(*limits: int) -> list[HostConfig]:
    return [
        HostConfig(
            name=f"kvm{i}",
            address="192.0.2.1",
            transport="local",
            datastore_path="/var/lib/vclvirt/images",
            max_concurrent_loads=limit,
        )
        for i, limit in enumerate(limits)
    ]


def test_a_worker_has_a_process_for_each_slot_of_every_host_it_serves():
    assert default_concurrency(hosts(2)) == 2
    assert default_concurrency(hosts(2, 4, 1)) == 7


def test_a_worker_of_many_hosts_stops_at_the_cap():
    assert DEFAULT_CONCURRENCY_CAP == 64
    assert default_concurrency(hosts(*[2] * 32)) == 64
    assert default_concurrency(hosts(*[2] * 33)) == 64


class Root:
    def __init__(self, served: tuple[str, ...]) -> None:
        self.identity = SimpleNamespace(hosts=served)
        self.asked: list[str] = []

    def host(self, name: str) -> Any:
        self.asked.append(name)
        raise RuntimeError("unreachable in this test")


def test_only_a_one_host_worker_connects_at_start(monkeypatch):
    started: list[Any] = []
    monkeypatch.setattr(
        "vclvirt.workers.lifecycle.threading.Thread",
        lambda target, **_: SimpleNamespace(start=lambda: started.append(target())),
    )
    many, one = Root(("kvm1", "kvm2")), Root(("kvm1",))
    WorkerLife(many).pool_process_started()  # type: ignore[arg-type]
    WorkerLife(one).pool_process_started()  # type: ignore[arg-type]
    assert many.asked == [] and one.asked == ["kvm1"]
