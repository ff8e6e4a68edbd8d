"""The real guest's life cycle on fleet hosts (#19): what tests/e2e proves on loopback
hosts, on hosts that are machines of their own, with the master in the library server's
repository. One guest boots per load (TCG, a few seconds)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import make_reservation, vclvirt_cli
from tests.fleet.conftest import (
    fleet_guest_shell,
    fleet_ssh,
    library_host,
    publish_guest,
    remove_computers,
)
from tests.fleet.test_fleet_faults import _domains
from vclvirt import dispatch

pytestmark = pytest.mark.slow

IMAGE = "linux-FleetGuest-901-v0"
CAPTURED = "linux-FleetGuest-901-v1"


def _no_backing(host: Any, path: str) -> bool:
    info = fleet_ssh(host, "qemu-img", "info", "-U", "--output=json", path).stdout
    return "backing-filename" not in json.loads(info)


def test_guest_life_cycle_on_fleet_hosts(fleet_env, testbed, guest_image, start_worker, tmp_path):
    """On fleet-1: load from the library → READY (the guest answers through the host's
    relay), power off/on/reset, a snapshot reverted, capture into the library server's
    repository. On fleet-2: the captured image loads and boots; image queries answer for
    it; unload leaves the master and nothing else."""
    fleet = fleet_env
    one, two = fleet.host("fleet-1"), fleet.host("fleet-2")
    library = library_host(fleet, testbed)
    publish_guest(fleet, testbed, IMAGE)
    fleet_ssh(library, "rm", "-rf", f"{one.repository_path}/{CAPTURED}")
    for host in (one, two):
        fleet_ssh(host, "rm", "-f", f"{host.datastore_path}/{CAPTURED}.qcow2")
        fleet_ssh(host, "rm", "-f", f"{host.datastore_path}/{CAPTURED}.xml")
    start_worker(["fleet-1", "fleet-2"], concurrency=None)
    base = make_reservation(7701, "fguest1", IMAGE, image_id=901, os_type="linux", host="fleet-1")
    path = tmp_path / "base.json"
    path.write_text(json.dumps(base))
    moved = make_reservation(
        7703, "fguest2", CAPTURED, image_id=901, revision=1, os_type="linux", host="fleet-2"
    )
    moved["image"]["revision_id"] = 90101
    moved_path = tmp_path / "moved.json"
    moved_path.write_text(json.dumps(moved))
    try:
        loaded = vclvirt_cli("load", str(path), "--wait", "--timeout", "300")
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        pre_define = dispatch.status(7701).step_records["pre_define"]["result"]
        assert pre_define["master_copied"] is True  # from the library, over fleet-1's link
        assert vclvirt_cli("node-status", str(path)).stdout.startswith("READY")
        assert fleet_guest_shell(base, "hostname").strip() == "fguest1"

        off = vclvirt_cli("power", "off", str(path))
        assert off.returncode == 0 and "off (acpi in" in off.stdout, off.stdout + off.stderr
        assert vclvirt_cli("power", "on", str(path)).stdout.strip().endswith(": on")
        boot_id = fleet_guest_shell(base, "cat", "/proc/sys/kernel/random/boot_id")
        assert vclvirt_cli("power", "reset", str(path)).stdout.strip().endswith(": on")
        assert fleet_guest_shell(base, "cat", "/proc/sys/kernel/random/boot_id") != boot_id

        def snapshot(action: str, name: str | None = None) -> dict[str, Any]:
            final = dispatch.run(base, f"snapshot_{action}", {"name": name} if name else None).wait(
                300
            )
            assert final.state == "succeeded", final.to_dict()
            return dict(final.step_records[f"snapshot_{action}"]["result"])

        snapshot("create", "clean")
        fleet_guest_shell(base, "sh", "-c", "echo changed > /root/change && sync")
        snapshot("revert", "clean")
        gone = fleet_guest_shell(base, "sh", "-c", "test -e /root/change; echo $?")
        assert gone.strip() == "1"
        snapshot("delete", "clean")

        capture = {
            **base,
            "reservation_id": 7702,
            "state": "image",
            "image": {
                **base["image"],
                "revision": 1,
                "revision_id": 90101,
                "pretty_name": "Fleet Guest",  # the new image's name: linux-FleetGuest-901-v1
            },
        }
        captured = dispatch.capture(capture).wait(600)
        assert captured.state == "succeeded", captured.to_dict()
        assert captured.outcome and captured.outcome["new_image"] == CAPTURED
        published = f"{one.repository_path}/{CAPTURED}/{CAPTURED}.qcow2"
        assert _no_backing(library, published)  # standalone, on the library server itself
        assert _domains(one, "fguest1") == {}  # state image: the domain is gone

        for query in (("exists", CAPTURED), ("size", CAPTURED)):
            answered = vclvirt_cli("images", *query, "--host", "fleet-2")
            assert answered.returncode == 0, answered.stdout + answered.stderr
        listed = vclvirt_cli("images", "list", "--host", "fleet-2").stdout
        assert CAPTURED in listed and IMAGE in listed

        loaded = vclvirt_cli("load", str(moved_path), "--wait", "--timeout", "300")
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        first = fleet_guest_shell(moved, "head", "-n", "1", "currentimage.txt").strip()
        assert first == CAPTURED
        assert fleet_guest_shell(moved, "hostname").strip() == "fguest2"

        unloaded = vclvirt_cli("unload", str(moved_path))
        assert unloaded.returncode == 0, unloaded.stderr
        assert _domains(two, "fguest2") == {}
        left = fleet_ssh(two, "find", two.vm_path, two.xml_dir, "-name", "fguest2_*").stdout
        assert left.split() == []
        assert (
            fleet_ssh(two, "test", "-s", f"{two.datastore_path}/{CAPTURED}.qcow2").returncode == 0
        )
    finally:
        remove_computers(one, "fguest1")
        remove_computers(two, "fguest2")
