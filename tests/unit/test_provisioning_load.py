"""provisioning.load on libvirt's test driver with real qemu-img: pre_define's overlay
(recreated unless reuse_overlay and right), generate_xml, define with the operators' copy."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.unit._provisioning import make_host, reservation
from vclvirt.provisioning.load import LoadSteps


@pytest.fixture
def host(tmp_path):
    return make_host(tmp_path)


def qemu_io(path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(path)], capture_output=True, text=True
    )


def info(path) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, check=True
    )
    return json.loads(out.stdout)


def test_pre_define_makes_an_overlay_backed_by_the_master(host):
    """The cached master is found and a qcow2 overlay with backing format is created."""
    master = host.master("linux-Unit-11-v0")
    result = LoadSteps(host.context).pre_define(reservation())
    overlay = host.vms / "unit-vm1_11-v0.qcow2"
    assert result == {
        "master": str(master),
        "master_format": "qcow2",
        "master_copied": False,
        "master_bytes": 0,
        "overlay": str(overlay),
        "overlay_created": True,
        "notes": [],
    }
    found = info(overlay)
    assert (found["backing-filename"], found["backing-filename-format"]) == (str(master), "qcow2")


def test_pre_define_recreates_an_existing_overlay_unless_told_to_reuse_it(host):
    """Default: a user's data in an existing overlay is gone. reuse_overlay: the right overlay
    keeps its data; an overlay of another master is still recreated."""
    host.master("linux-Unit-11-v0")
    other = host.master("linux-Other-12-v0")
    steps, r = LoadSteps(host.context), reservation()
    overlay = host.vms / "unit-vm1_11-v0.qcow2"
    steps.pre_define(r)
    assert qemu_io(overlay, "write -P 0x77 0 64k").returncode == 0

    assert steps.pre_define(r, reuse_overlay=True)["overlay_created"] is False
    assert "verification failed" not in qemu_io(overlay, "read -P 0x77 0 64k").stdout

    assert steps.pre_define(r)["overlay_created"] is True
    assert "verification failed" not in qemu_io(overlay, "read -P 0 0 64k").stdout

    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(other), "-F", "qcow2", str(overlay)],
        check=True,
    )
    assert steps.pre_define(r, reuse_overlay=True)["overlay_created"] is True
    assert info(overlay)["backing-filename"].endswith("linux-Unit-11-v0.qcow2")


def test_reference_xml_decides_bus_and_is_read_once(host):
    """The master's reference XML gives the disk bus and NIC model; it is read once per
    process (a master and its XML never change under their name)."""
    host.master("linux-Unit-11-v0")
    reference = host.datastore / "linux-Unit-11-v0.xml"
    reference.write_text(
        "<domain><devices><disk device='disk'><target dev='hda' bus='ide'/></disk>"
        "<interface type='bridge'><model type='e1000'/></interface></devices></domain>"
    )
    steps = LoadSteps(host.context)
    first = steps.host_facts(reservation())
    reference.write_text("<domain><devices/></domain>")
    again = steps.host_facts(reservation())
    assert (first.disk_bus, first.nic_model) == ("ide", "e1000")
    assert (again.disk_bus, again.nic_model) == ("ide", "e1000")
    assert first.domain_type == "test"


def test_define_keeps_the_xml_for_operators_and_defines_the_domain(host):
    """define writes `<xml_dir>/<base>.xml` with the generated XML and defines it, autostarted."""
    host.master("linux-Unit-11-v0")
    steps, r = LoadSteps(host.context), reservation()
    steps.pre_define(r)
    generated = steps.generate_xml(r)
    result = steps.define(r, generated["xml"])
    assert result == {
        "domain": generated["domain"],
        "xml_path": str(host.xml / "unit-vm1_11-v0.xml"),
    }
    assert (host.xml / "unit-vm1_11-v0.xml").read_text() == generated["xml"]
    domain = host.conn.lookupByName(generated["domain"])
    assert domain.autostart() == 1


def test_post_load_of_os_type_none_contacts_no_guest(host):
    """An image without a guest OS to talk to: post_load says so and succeeds."""
    assert LoadSteps(host.context).post_load(reservation()) == {
        "guest": "not contacted: os_type none"
    }
