"""Real machine faults on fleet hosts, at the settings a deployment gets (#19): a host's
link cut for 20 s and for 3 minutes, a host that loses power and boots again, a host whose
disk is full. The four run at once, one per host, under one worker that serves them all,
so each also shows that one host's fault leaves the others alone.

A load's step is held (tests/hold_worker.py) only so that a fault lands inside it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import libvirt
import pytest

from tests.conftest import ROOT, make_reservation, vclvirt_cli, wait_for
from tests.fleet.conftest import fleet_link, fleet_ssh, library_image, need_hosts, remove_computers
from vclvirt import dispatch
from vclvirt.naming import belongs_to_computer, file_base_name

pytestmark = pytest.mark.slow

IMAGE, IMAGE_ID = "linux-FleetFaults-615-v0", 615
BIG_IMAGE, BIG_ID = "linux-FleetDiskFull-616-v0", 616
DISK = "/srv"  # each fleet host's disk (scripts/fleet HOST_DISK), a tmpfs of its own


def _at(rid: int, step: str) -> bool:
    record = dispatch.status(rid)
    return bool(record and record.current_step == step and record.state == "running")


def _domains(host: Any, computer: str) -> dict[str, bool]:
    """The computer's domains in the host's own libvirtd: name → running."""
    conn = libvirt.open(host.effective_libvirt_uri)
    try:
        return {
            d.name(): bool(d.isActive())
            for d in conn.listAllDomains(0)
            if belongs_to_computer(d.name(), computer)
        }
    finally:
        conn.close()


def _fleet(*argv: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "testbed"), "fleet", *argv], check=True, timeout=300)


class Faults:
    """What the four scenarios share: the fleet, the step hold, the computers to clean."""

    def __init__(self, fleet: Any, hold: Callable[..., None]) -> None:
        self.fleet, self.hold = fleet, hold
        self.computers: list[tuple[Any, str]] = []

    def reservation(self, rid: int, host: str, computer: str, image: str = IMAGE) -> Any:
        remove_computers(self.fleet.host(host), computer)  # nothing left from an earlier run
        self.computers.append((self.fleet.host(host), computer))
        image_id = BIG_ID if image == BIG_IMAGE else IMAGE_ID
        return make_reservation(rid, computer, image, image_id=image_id, host=host)

    def held_at_define(self, rid: int, reservation: dict[str, Any]) -> dispatch.Handle:
        self.hold(rid, "define")
        handle = dispatch.load(reservation)
        wait_for(lambda: _at(rid, "define"), 120, f"reservation {rid} to reach define")
        return handle

    def link_cut(self, rid: int, host: str, seconds: float) -> str:
        """The host's link down while its load is in define, then up: the load ends
        succeeded, with exactly one running domain."""
        reservation = self.reservation(rid, host, f"cut{rid}")
        handle = self.held_at_define(rid, reservation)
        fleet_link(host, "down")
        self.hold(rid, "define", False)
        time.sleep(seconds)
        fleet_link(host, "up")
        final = handle.wait(timeout=seconds + 600)
        assert final.state == "succeeded", final.to_dict()
        define = final.step_records["define"]
        assert list(_domains(self.fleet.host(host), f"cut{rid}").values()) == [True]
        return f"{host}: link down {seconds:.0f} s in define; define retried " + (
            f"{define.get('transient_failures', 0)} times, load succeeded"
        )

    def power_cut(self, rid: int, host: str) -> str:
        """A READY reservation and a load held in define when the host loses power (every
        process killed, its running domains gone) and boots 20 s later: the load ends
        succeeded by itself, with one running domain; the READY reservation's domain is
        started again by the host's libvirtd (loads define domains autostarted), and
        node_status says READY."""
        ready = self.reservation(rid, host, f"boot{rid}")
        assert dispatch.load(ready).wait(timeout=300).state == "succeeded"
        loading = self.reservation(rid + 1, host, f"boot{rid + 1}")
        handle = self.held_at_define(rid + 1, loading)
        _fleet("crash", host)
        self.hold(rid + 1, "define", False)
        time.sleep(20)
        _fleet("boot", host)
        final = handle.wait(timeout=900)
        assert final.state == "succeeded", final.to_dict()
        assert final.step_records["define"].get("transient_failures", 0) >= 1
        assert list(_domains(self.fleet.host(host), f"boot{rid + 1}").values()) == [True]
        assert list(_domains(self.fleet.host(host), f"boot{rid}").values()) == [True]
        status = dispatch.run(ready, "node_status").wait(timeout=300)
        assert status.step_records["node_status"]["result"]["status"] == "READY", status
        return f"{host}: power cut for 20 s; held load succeeded, READY domain autostarted"

    def disk_full(self, rid: int, host_name: str) -> str:
        """The host's disk has no byte free when a load must copy its master there: the
        load fails at once, HOST_DISK_FULL (permanent), leaving no .part and no overlay.
        Its first host command fails already: the computer's fence (on the same disk)
        cannot record the token, so nothing at all runs. `vclvirt retry` succeeds once
        space is back."""
        host = self.fleet.host(host_name)
        reservation = self.reservation(rid, host_name, f"full{rid}", BIG_IMAGE)
        used_kib = int(fleet_ssh(host, "df", "--output=used", "-k", DISK).stdout.split()[-1])
        fleet_ssh(host, "mount", "-o", f"remount,size={used_kib + 1024}k", DISK)
        try:
            fleet_ssh(host, "dd", "if=/dev/zero", f"of={DISK}/fill", "bs=64k", check=False)
            failed = dispatch.load(reservation).wait(timeout=300)
            assert (failed.state, failed.failed_step) == ("failed", "node_status"), failed.to_dict()
            assert failed.error is not None and failed.error["code"] == "HOST_DISK_FULL"
            assert failed.error["free_bytes"] == 0 and "fence" in failed.error["path"]
            assert failed.error["transient"] is False
            left = fleet_ssh(host, "find", host.datastore_path, host.vm_path, "-name", "*full*")
            assert left.stdout.split() == [], left.stdout
            parts = fleet_ssh(host, "find", host.datastore_path, "-name", "*.part").stdout
            assert parts.split() == []
        finally:
            fleet_ssh(host, "rm", "-f", f"{DISK}/fill")
            fleet_ssh(host, "mount", "-o", "remount,size=8g", DISK)
        retried = vclvirt_cli("retry", str(rid), "--wait", "--timeout", "300")
        assert retried.returncode == 0, retried.stdout + retried.stderr
        overlay = f"{host.vm_path}/{file_base_name(f'full{rid}', BIG_ID, 0)}.qcow2"
        assert fleet_ssh(host, "test", "-s", overlay, check=False).returncode == 0
        return f"{host_name}: disk full → HOST_DISK_FULL at once, nothing left; retry succeeded"


def test_link_cuts_a_power_cut_and_a_full_disk_on_four_hosts_at_once(
    fleet_env, testbed, start_worker, holds
):
    """Each fault on a host of its own, all at once, default settings (lease 30 s, retry
    deadline 15 min): every load ends as the fault's scenario says (see Faults)."""
    fleet = need_hosts(fleet_env, 4)
    env, hold = holds
    library_image(fleet, testbed, IMAGE)
    library_image(fleet, testbed, BIG_IMAGE, data="32M")
    for name in ("fleet-1", "fleet-2", "fleet-3", "fleet-4"):
        host = fleet.host(name)
        fleet_ssh(host, "rm", "-f", f"{host.datastore_path}/{BIG_IMAGE}.qcow2")
    faults = Faults(fleet, hold)
    worker = start_worker(["fleet-1", "fleet-2", "fleet-3", "fleet-4"], concurrency=None, **env)
    scenarios: list[Callable[[], str]] = [
        lambda: faults.link_cut(7680, "fleet-1", 20),
        lambda: faults.link_cut(7681, "fleet-2", 180),
        lambda: faults.power_cut(7682, "fleet-3"),
        lambda: faults.disk_full(7685, "fleet-4"),
    ]
    try:
        with ThreadPoolExecutor(max_workers=len(scenarios)) as pool:
            futures = [pool.submit(scenario) for scenario in scenarios]
            outcomes = [future.exception() or future.result() for future in futures]
        for outcome in outcomes:
            print(outcome)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise errors[0]
    finally:
        for name in ("fleet-1", "fleet-2"):
            fleet_link(name, "up")
        _fleet("boot", "fleet-3")  # does nothing when it is up
        worker.stop()
        for host, computer in faults.computers:
            remove_computers(host, computer)
