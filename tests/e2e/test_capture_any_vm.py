"""Capture of any VM a site runs, with the real test guest (#14.3): base VMs built by hand
(freely named, found by their MAC) on a raw disk and on a vmdk disk, outside vm_path.

- the raw VM runs and is captured in state `image`: its guest prepares itself, the
  domain goes, its own disk stays;
- the vmdk VM is off and is captured in state `checkpoint`: it is powered on so its guest
  can prepare (VCL-179), shut down, captured, and runs again afterwards.

Both new masters are standalone qcow2 files (the datastore's format) whose FAT file system
holds what pre_capture wrote, read offline with mtools. Three boots, two at once.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.conftest import GUEST_CACHE, guest_shell, make_reservation
from vclvirt import dispatch
from vclvirt.config.inventory import get_inventory
from vclvirt.hypervisor.domain_xml import (
    Disk,
    HostFacts,
    plan_domain,
    render_domain_xml,
    with_user_network,
)
from vclvirt.models import parse_reservation
from vclvirt.naming import domain_uuid, new_image_name

pytestmark = pytest.mark.slow

OLD_DEFINITION = "linux-FidOldCapture-900-v0.xml"


def base_vm(testbed: Path, computer: str, fmt: str) -> tuple[dict[str, Any], str, Path]:
    """A site's VM of the test guest on a `fmt` disk outside vm_path, defined (not started)
    under a free name; (its computer's reservation, domain name, disk)."""
    reservation = make_reservation(
        7600 + len(fmt), computer, "linux-FidBase-900-v0", image_id=900, os_type="linux"
    )
    directory = testbed / "fid-base-vms"
    directory.mkdir(exist_ok=True)
    disk = directory / f"{computer}.{fmt}"
    disk.unlink(missing_ok=True)
    source = GUEST_CACHE / "vclvirt-test-guest.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", fmt, str(source), str(disk)], check=True)
    name = f"{computer}-site-vm"
    host = get_inventory().host("node-a")
    spec = plan_domain(
        parse_reservation(reservation),
        name=name,
        uuid=domain_uuid("node-a", name),
        overlay_path=str(disk),
        private_switch=None,
        public_switch=None,
        facts=HostFacts("qemu", disk_bus="virtio", nic_model="virtio"),
        loaded_at=datetime.now(UTC),
        management_node="tests",
    )
    spec = replace(with_user_network(spec, parse_reservation(reservation), host), disk=Disk(
        str(disk), fmt, "virtio"))  # fmt: skip
    conn = libvirt.open("qemu:///system")
    conn.defineXML(render_domain_xml(spec))
    conn.close()
    return reservation, name, disk


def capture_of(base: dict[str, Any], rid: int, state: str, pretty: str) -> dict[str, Any]:
    image = {**base["image"], "revision": 4, "revision_id": 90004, "pretty_name": pretty}
    return {**base, "reservation_id": rid, "state": state, "image": image}


def home_of(master: Path, tmp_path: Path) -> dict[str, str]:
    """Root's home in an image of the test guest (FAT): file name -> content."""
    raw = tmp_path / f"{master.stem}.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(master), str(raw)], check=True)
    listing = subprocess.run(
        ["mdir", "-b", "-i", str(raw), "::/root"], capture_output=True, text=True, check=True
    ).stdout
    files = {}
    for path in listing.split():
        name = path.rsplit("/", 1)[-1]
        if name and not name.startswith("."):
            files[name] = subprocess.run(
                ["mtype", "-i", str(raw), f"::/root/{name}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
    raw.unlink()
    return files


def standalone_qcow2(path: Path) -> bool:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, check=True
        ).stdout
    )
    return info["format"] == "qcow2" and "backing-filename" not in info


def test_a_raw_vm_and_a_vmdk_vm_that_is_off_are_captured(
    testbed, guest_image, start_worker, tmp_path
):
    """raw running → `image`: guest prepared (earlier definitions removed by busybox tools),
    domain deleted, its disk kept. vmdk off → `checkpoint`: powered on for pre_capture,
    shut down by ACPI, captured, running again with the prepared disk."""
    raw_base, raw_name, raw_disk = base_vm(testbed, "fid-rawvm", "raw")
    vmdk_base, vmdk_name, vmdk_disk = base_vm(testbed, "fid-vmdkvm", "vmdk")
    raw_capture = capture_of(raw_base, 7611, "image", "Fid Raw Capture")
    vmdk_capture = capture_of(vmdk_base, 7612, "checkpoint", "Fid Vmdk Capture")
    new = {
        "raw": new_image_name("linux", "Fid Raw Capture", 900, 4),
        "vmdk": new_image_name("linux", "Fid Vmdk Capture", 900, 4),
    }
    datastore = testbed / "hosts/node-a/images"
    leftovers = [datastore.glob(f"*{n}*") for n in new.values()]
    for path in [p for found in leftovers for p in found]:
        path.unlink()  # an earlier run's
    for name in new.values():
        subprocess.run(["rm", "-rf", str(testbed / "repository" / name)], check=True)
    conn = libvirt.open("qemu:///system")
    try:
        start_worker("node-a")
        off = dispatch.capture(vmdk_capture)  # boots the vmdk VM meanwhile
        conn.lookupByName(raw_name).create()
        guest_shell(testbed, raw_base, "sh", "-c", f"echo '<old/>' > {OLD_DEFINITION}")
        running = dispatch.capture(raw_capture)
        raw_done, vmdk_done = running.wait(600), off.wait(600)

        assert raw_done.state == "succeeded", raw_done.to_dict()
        prepared = raw_done.step_records["capture_prepare"]["result"]
        assert (prepared["domain"], prepared["disk_format"]) == (raw_name, "raw")
        assert prepared["powered_on"] is False
        assert raw_done.step_records["capture_finish"]["result"]["action"] == "deleted"
        assert raw_name not in [d.name() for d in conn.listAllDomains(0)]
        assert raw_disk.exists()  # the site's own disk is not one of vclvirt's overlays

        assert vmdk_done.state == "succeeded", vmdk_done.to_dict()
        prepared = vmdk_done.step_records["capture_prepare"]["result"]
        assert (prepared["domain"], prepared["disk_format"]) == (vmdk_name, "vmdk")
        assert prepared["powered_on"] is True
        assert vmdk_done.step_records["capture_shutdown"]["result"]["method"] == "acpi"
        assert vmdk_done.step_records["capture_finish"]["result"]["action"] == "powered on"
        assert conn.lookupByName(vmdk_name).isActive()
        first_line = guest_shell(testbed, vmdk_base, "head", "-n", "1", "currentimage.txt")
        assert first_line.strip() == new["vmdk"]  # running again, on the prepared disk

        for kind, done in (("raw", raw_done), ("vmdk", vmdk_done)):
            master = datastore / f"{new[kind]}.qcow2"
            assert done.outcome and done.outcome["master"] == str(master)
            assert standalone_qcow2(master)
            assert (testbed / "repository" / new[kind] / f"{new[kind]}.qcow2").exists()
            home = home_of(master, tmp_path)
            assert home["currentimage.txt"].splitlines()[0] == new[kind]
            assert f"{new[kind]}.xml" in home
            assert OLD_DEFINITION not in home
    finally:
        for name in (raw_name, vmdk_name):
            try:
                domain = conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            if domain.isActive():
                domain.destroy()
            domain.undefine()
        conn.close()
        for disk in (raw_disk, vmdk_disk):
            disk.unlink(missing_ok=True)
