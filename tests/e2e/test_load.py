"""Whole reservations through real workers (separate processes), Redis, sshd and libvirtd."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import libvirt

from tests.conftest import (
    computer_domains,
    make_reservation,
    repository_image,
    uncached_image,
    wait_for,
)
from vclvirt import dispatch
from vclvirt.naming import file_base_name


def _overlay_info(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, check=True
    ).stdout
    return dict(json.loads(out))


def test_load_ends_with_running_domain_on_overlay(testbed, start_worker, cleanup_computers):
    """A load on node-a leaves the domain running on a qcow2 overlay backed by the master."""
    image = "linux-E2eRunning-601-v0"
    repository_image(testbed, image)
    cleanup_computers.append("e2e-run1")
    start_worker("node-a")
    reservation = make_reservation(7001, "e2e-run1", image, image_id=601)

    final = dispatch.load(reservation).wait(timeout=180)

    assert final.state == "succeeded", final.to_dict()
    assert [s["state"] for s in final.to_dict()["steps"]] == ["succeeded"] * 7
    (name,) = computer_domains("e2e-run1")
    conn = libvirt.open("qemu:///system")
    assert conn.lookupByName(name).isActive()
    overlay = testbed / "hosts/node-a/vms" / f"{file_base_name('e2e-run1', 601, 0)}.qcow2"
    info = _overlay_info(overlay)
    master = testbed / "hosts/node-a/images" / f"{image}.qcow2"
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == str(master)
    assert info["backing-filename-format"] == "qcow2"
    assert not list(master.parent.glob("*.part"))
    assert (testbed / "hosts/node-a/xml" / f"{file_base_name('e2e-run1', 601, 0)}.xml").exists()

    assert final.to_dict()["computer_image"]["image"] == image
    ready = dispatch.run(reservation, "node_status").wait(60)
    assert ready.step_records["node_status"]["result"]["status"] == "READY"
    # Same domain name, another image behind it: no guest to ask, so the disk decides.
    other = {**reservation, "image": {**reservation["image"], "name": "linux-E2eOther-601-v0"}}
    stale = dispatch.run(other, "node_status").wait(60)
    assert stale.step_records["node_status"]["result"]["status"] == "RELOAD"


def test_reload_with_other_image_leaves_exactly_one_domain(
    testbed, start_worker, cleanup_computers
):
    """A second load of the same computer with another image replaces the first domain."""
    first, second = "linux-E2eFirst-602-v0", "linux-E2eSecond-603-v1"
    repository_image(testbed, first)
    repository_image(testbed, second)
    cleanup_computers.append("e2e-twice")
    start_worker("node-a")

    one = dispatch.load(make_reservation(7002, "e2e-twice", first, image_id=602)).wait(180)
    two = dispatch.load(make_reservation(7003, "e2e-twice", second, image_id=603, revision=1)).wait(
        180
    )

    assert (one.state, two.state) == ("succeeded", "succeeded")
    domains = computer_domains("e2e-twice")
    assert len(domains) == 1 and domains[0].endswith("_603-v1")
    overlays = sorted(p.name for p in (testbed / "hosts/node-a/vms").glob("e2e-twice_*"))
    assert overlays == ["e2e-twice_603-v1.qcow2"]


def test_loads_for_node_b_run_only_on_node_b_worker(testbed, start_worker, cleanup_computers):
    """Each host's queue is consumed only by that host's worker, for every step."""
    image = "linux-E2eRouting-604-v0"
    repository_image(testbed, image)
    cleanup_computers.extend(["e2e-route-a", "e2e-route-b"])
    start_worker("node-a")
    start_worker("node-b")

    on_a = dispatch.load(make_reservation(7004, "e2e-route-a", image, image_id=604))
    on_b = dispatch.load(make_reservation(7005, "e2e-route-b", image, image_id=604, host="node-b"))
    a, b = on_a.wait(180), on_b.wait(180)

    assert (a.state, b.state) == ("succeeded", "succeeded")
    assert {s["worker"].split("@")[0] for s in a.to_dict()["steps"]} == {"node-a"}
    assert {s["worker"].split("@")[0] for s in b.to_dict()["steps"]} == {"node-b"}
    assert (testbed / "hosts/node-b/vms/e2e-route-b_604-v0.qcow2").exists()
    assert not (testbed / "hosts/node-a/vms/e2e-route-b_604-v0.qcow2").exists()


def test_worker_killed_mid_copy_is_replaced_and_load_completes(
    testbed, start_worker, cleanup_computers
):
    """SIGKILL of the whole worker during the master copy, default settings: a new worker
    resumes the load at pre_define and finishes it; one domain, no .part left."""
    image = "linux-E2eKilled-605-v0"
    # 900M of data: converting it takes a few seconds, a window to kill the worker in
    uncached_image(testbed, image, "1G", "900M", "node-b")
    cleanup_computers.append("e2e-killed")
    first = start_worker("node-b")
    handle = dispatch.load(make_reservation(7006, "e2e-killed", image, image_id=605, host="node-b"))
    wait_for(
        lambda: (
            (s := handle.status())
            and s.current_step == "pre_define"
            and list((testbed / "hosts/node-b/images").glob("*.part"))
        ),
        60,
        "the master copy to start",
    )

    first.kill()
    second = start_worker("node-b")
    final = handle.wait(timeout=240)

    assert final.state == "succeeded", final.to_dict()
    assert len(computer_domains("e2e-killed")) == 1
    steps = {s["name"]: s for s in final.to_dict()["steps"]}
    assert steps["pre_define"]["attempt"] == 2  # started again after the kill, once
    assert steps["node_status"]["attempt"] == 1  # completed steps were not run again
    assert second.process.poll() is None
    assert not list((testbed / "hosts/node-b/images").glob("*.part"))
    master = testbed / "hosts/node-b/images" / f"{image}.qcow2"
    subprocess.run(["qemu-img", "check", str(master)], check=True, capture_output=True)


def test_two_loads_of_one_computer_50ms_apart_leave_only_the_newer(
    testbed, start_worker, cleanup_computers
):
    """Two reservations for the same computer enqueued 50 ms apart: the older one ends
    superseded, the newer one's domain is the only one, and nothing of the older is left."""
    older, newer = "linux-E2eOlder-606-v0", "linux-E2eNewer-607-v0"
    repository_image(testbed, older)
    repository_image(testbed, newer)
    cleanup_computers.append("e2e-race")
    start_worker("node-a", concurrency=2)

    first = dispatch.load(make_reservation(7010, "e2e-race", older, image_id=606))
    time.sleep(0.05)  # the scenario itself: a scheduler's second request 50 ms later
    second = dispatch.load(make_reservation(7011, "e2e-race", newer, image_id=607))
    a, b = first.wait(180), second.wait(180)

    assert b.state == "succeeded", b.to_dict()
    assert a.state == "superseded", a.to_dict()
    assert a.error and a.error["code"] == "SUPERSEDED"
    domains = computer_domains("e2e-race")
    assert len(domains) == 1 and domains[0].endswith("_607-v0"), domains
    vms = sorted(p.name for p in (testbed / "hosts/node-a/vms").glob("e2e-race_*"))
    assert vms == ["e2e-race_607-v0.qcow2"]
    xml = sorted(p.name for p in (testbed / "hosts/node-a/xml").glob("e2e-race_*"))
    assert xml == ["e2e-race_607-v0.xml"]
