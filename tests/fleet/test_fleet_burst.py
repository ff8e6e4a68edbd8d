"""One worker serves the whole fleet, and a slow or dead host never delays another
host's loads (#19): each host's operations take at most its own limit of the worker's
processes, and a load that finds its host full waits outside the worker."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import make_reservation, wait_for
from tests.fleet.conftest import fleet_link, fleet_ssh, library_image, need_hosts, remove_computers
from vclvirt import dispatch

pytestmark = pytest.mark.slow

SLOW_IMAGE, SLOW_ID = "linux-FleetSlowLink-613-v0", 613
BURST_IMAGE, BURST_ID = "linux-FleetBurst-614-v0", 614


def _finished(rid: int) -> bool:
    record = dispatch.status(rid)
    return bool(record and record.state in ("succeeded", "failed", "superseded"))


def _remove_all(loads: dict[int, tuple[Any, str, dict[str, Any]]]) -> None:
    by_host: dict[str, tuple[Any, list[str]]] = {}
    for host, computer, _ in loads.values():
        by_host.setdefault(host.name, (host, []))[1].append(computer)
    for host, computers in by_host.values():
        remove_computers(host, *computers)


def test_a_slow_host_and_a_dead_one_never_delay_the_other_hosts_loads(
    fleet_env, testbed, start_worker
):
    """One worker serves fleet-1..4 at its default concurrency (the sum of their limits).
    fleet-1's link runs at 1 Mbit/s while it copies a 16 MiB master for six loads (more
    than its limit of four); fleet-2's link is down with two loads queued. A burst of four
    loads on each of fleet-3 and fleet-4, of a master neither has, all end succeeded while
    fleet-1 is still copying. Once the links heal, every load ends succeeded."""
    fleet = need_hosts(fleet_env, 4)
    slow, dead = fleet.host("fleet-1"), fleet.host("fleet-2")
    busy = [fleet.host("fleet-3"), fleet.host("fleet-4")]
    library_image(fleet, testbed, SLOW_IMAGE, data="16M")
    library_image(fleet, testbed, BURST_IMAGE, data="8M")
    for host in (slow, dead, *busy):
        fleet_ssh(host, "rm", "-f", f"{host.datastore_path}/{SLOW_IMAGE}.qcow2")
        fleet_ssh(host, "rm", "-f", f"{host.datastore_path}/{BURST_IMAGE}.qcow2")

    loads: dict[int, tuple[Any, str, dict[str, Any]]] = {}

    def add(rid: int, host: Any, computer: str, image: str, image_id: int) -> None:
        reservation = make_reservation(rid, computer, image, image_id=image_id, host=host.name)
        loads[rid] = (host, computer, reservation)

    for i in range(6):
        add(7720 + i, slow, f"slow{i}", SLOW_IMAGE, SLOW_ID)
    for i in range(2):
        add(7730 + i, dead, f"dead{i}", BURST_IMAGE, BURST_ID)
    burst = []
    for h, host in enumerate(busy):
        for i in range(4):
            rid = 7740 + 10 * h + i
            add(rid, host, f"burst{h}x{i}", BURST_IMAGE, BURST_ID)
            burst.append(rid)
    _remove_all(loads)  # nothing of theirs left from an earlier run
    slowed = [rid for rid, (host, _, _) in loads.items() if host is slow]
    deads = [rid for rid, (host, _, _) in loads.items() if host is dead]

    worker = start_worker([h.name for h in (slow, dead, *busy)], concurrency=None)
    fleet_link("fleet-1", "rate", "1mbit")
    fleet_link("fleet-2", "down")
    try:
        for rid in slowed:
            dispatch.load(loads[rid][2])
        part = f"{slow.datastore_path}/{SLOW_IMAGE}.qcow2.part"
        wait_for(
            lambda: fleet_ssh(slow, "test", "-e", part, check=False).returncode == 0,
            120,
            "fleet-1's master copy to begin",
        )
        for rid in deads:
            dispatch.load(loads[rid][2])
        started = time.monotonic()
        for rid in burst:
            dispatch.load(loads[rid][2])
        wait_for(lambda: all(_finished(rid) for rid in burst), 240, "the burst to end")
        took = time.monotonic() - started

        states = {rid: dispatch.status(rid).state for rid in burst}
        assert set(states.values()) == {"succeeded"}, states
        assert not any(_finished(rid) for rid in slowed + deads)
        assert fleet_ssh(slow, "test", "-e", part, check=False).returncode == 0  # still copying
        print(f"burst of {len(burst)} loads on fleet-3/4 ended in {took:.1f} s beside them")
        assert "waiting_for_host_slot" in worker.log_path.read_text()  # fleet-1's 5th and 6th

        fleet_link("fleet-1", "rate", "1gbit")
        fleet_link("fleet-2", "up")
        finals = {rid: dispatch.Handle(rid, "").wait(timeout=300) for rid in slowed + deads}
        assert {rid: f.state for rid, f in finals.items()} == dict.fromkeys(finals, "succeeded")
        copied = [f.step_records["pre_define"]["result"]["master_copied"] for f in finals.values()]
        assert copied.count(True) == 2  # one copy per host: fleet-1's and fleet-2's
    finally:
        fleet_link("fleet-1", "rate", "1gbit")
        fleet_link("fleet-2", "up")
        worker.stop()
        _remove_all(loads)
