"""Unload and capture delete only the computer's own overlays: never a master, never
another computer's overlay, nothing outside vm_path.

Domains are defined (not started) on the real qemu:///system libvirtd with disks that
are real qcow2 files in this test's tmp dir; the host is this machine (transport
local). What counts is which files are left on disk and which domains libvirt lists.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.conftest import make_reservation
from tests.local_host import local_host, local_server, qemu_img
from vclvirt.models import parse_reservation

COMPUTER = "tests-own1"
NEIGHBOUR = "tests-own10"  # its name starts with COMPUTER's
IMAGE = "linux-TestsOwn-501-v0"
DOMAIN = f"{COMPUTER}_TestsOwn_501-v0"
OLD_STYLE_DOMAIN = f"{COMPUTER}:TestsOwn"  # VCL before 2016 named domains `C:…`
NEIGHBOUR_DOMAIN = f"{NEIGHBOUR}_TestsOwn_501-v0"
OURS = (DOMAIN, OLD_STYLE_DOMAIN, NEIGHBOUR_DOMAIN)


def domain_xml(name: str, disks: list[Path]) -> str:
    root = ET.Element("domain", {"type": "qemu"})
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "memory", {"unit": "MiB"}).text = "64"
    ET.SubElement(ET.SubElement(root, "os"), "type").text = "hvm"
    devices = ET.SubElement(root, "devices")
    for index, path in enumerate(disks):
        disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
        ET.SubElement(disk, "driver", {"name": "qemu", "type": "qcow2"})
        ET.SubElement(disk, "source", {"file": str(path)})
        ET.SubElement(disk, "target", {"dev": f"vd{chr(ord('a') + index)}", "bus": "virtio"})
    return ET.tostring(root, encoding="unicode")


def undefine_ours(conn: libvirt.virConnect) -> None:
    for domain in conn.listAllDomains(0):
        if domain.name() in OURS:
            domain.undefine()


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    connection = libvirt.open("qemu:///system")
    undefine_ours(connection)  # an earlier, interrupted run
    yield connection
    undefine_ours(connection)
    connection.close()


@pytest.fixture
def layout(tmp_path: Path, conn: libvirt.virConnect) -> dict[str, Any]:
    """A master, the computer's overlays, look-alikes that are not its own, and domains
    whose disks point at all of them."""
    host = local_host(tmp_path / "host")
    vms, datastore = Path(host.vm_dir), Path(host.datastore_path)
    master = datastore / f"{IMAGE}.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(master), "16M")
    files = {
        "own": vms / f"{COMPUTER}_501-v0.qcow2",
        "own_old_style": vms / f"{COMPUTER}_400-v1.qcow2",
        "master": master,
        "neighbours": vms / f"{NEIGHBOUR}_501-v0.qcow2",
        "outside_vm_path": tmp_path / "elsewhere" / f"{COMPUTER}_501-v0.qcow2",
        "below_vm_path": vms / "nested" / f"{COMPUTER}_502-v0.qcow2",
    }
    for key, path in files.items():
        if key != "master":
            path.parent.mkdir(parents=True, exist_ok=True)
            qemu_img("create", "-q", "-f", "qcow2", "-b", str(master), "-F", "qcow2", str(path))
    xml_dir = Path(host.xml_dir)
    xml_files = {
        "own": xml_dir / f"{COMPUTER}_501-v0.xml",
        "neighbours": xml_dir / f"{NEIGHBOUR}_501-v0.xml",
    }
    for path in xml_files.values():
        path.write_text("<domain/>\n")
    conn.defineXML(
        domain_xml(
            DOMAIN,
            [files[k] for k in ("own", "master", "neighbours", "outside_vm_path", "below_vm_path")],
        )
    )
    conn.defineXML(domain_xml(OLD_STYLE_DOMAIN, [files["own_old_style"]]))
    conn.defineXML(domain_xml(NEIGHBOUR_DOMAIN, [files["neighbours"]]))
    return {"host": host, "files": files, "xml": xml_files}


def defined(conn: libvirt.virConnect) -> list[str]:
    return sorted(d.name() for d in conn.listAllDomains(0) if d.name() in OURS)


def remaining(files: dict[str, Path]) -> list[str]:
    return sorted(key for key, path in files.items() if path.exists())


def reservation(state: str = "reload") -> Any:
    return parse_reservation(make_reservation(9500, COMPUTER, IMAGE, image_id=501, state=state))


def test_unload_deletes_the_computers_domains_and_only_their_own_overlays(conn, layout):
    """unload removes both of the computer's domains, its two overlays and its XML file;
    the master, the look-alike overlays and the other computer's domain stay."""
    local_server(layout["host"]).cleanup.delete_existing_domains(reservation())

    assert defined(conn) == [NEIGHBOUR_DOMAIN]
    assert remaining(layout["files"]) == [
        "below_vm_path",
        "master",
        "neighbours",
        "outside_vm_path",
    ]
    assert qemu_img("check", "-q", str(layout["files"]["master"])) == ""
    assert remaining(layout["xml"]) == ["neighbours"]


def test_capture_of_state_image_deletes_only_its_domains_own_overlay(conn, layout):
    """After capturing (state image) the captured domain goes with its own overlay only."""
    local_server(layout["host"]).capture.finish(reservation("image"), {"domain": DOMAIN})

    assert defined(conn) == sorted([OLD_STYLE_DOMAIN, NEIGHBOUR_DOMAIN])
    assert remaining(layout["files"]) == [
        "below_vm_path",
        "master",
        "neighbours",
        "outside_vm_path",
        "own_old_style",
    ]
