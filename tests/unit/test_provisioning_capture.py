"""provisioning.capture on libvirt's test driver with real qemu-img: the VM found by its MACs,
its disk flattened into a new master with its reference XML, then deleted or powered on."""

from __future__ import annotations

import json
import subprocess

import libvirt
import pytest

from tests.unit._provisioning import make_host, reservation
from vclvirt.errors import DomainUnusable, ImageExists
from vclvirt.models import parse_reservation
from vclvirt.provisioning.capture import Capture
from vclvirt.provisioning.cleanup import Cleanup

NEW = "linux-Unitimage-11-v1"


def capture_reservation(state: str = "image"):
    """The reservation's next revision of its image (what VCL sends for a capture)."""
    data = reservation(state=state).model_dump(mode="json")
    data["image"].update(revision=1, revision_id=1101)
    return parse_reservation(data)


@pytest.fixture
def host(tmp_path):
    made = make_host(tmp_path)
    master = made.master("linux-Unit-11-v0")
    overlay = made.vms / "unit-vm1_11-v0.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(master), "-F", "qcow2", str(overlay)],
        check=True,
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 1M", str(overlay)],
        check=True,
        capture_output=True,
    )
    macs = ("52:54:00:cc:00:1f", "52:54:00:dd:00:1f")
    made.conn.defineXML(made.domain_xml("base-vm-any-name", [str(overlay)], macs))
    return made


def test_capture_image_makes_a_standalone_master_and_deletes_the_domain(host):
    """state image: the domain carrying the computer's MACs is captured as `<new name>.qcow2`
    (no backing file, the guest's data inside) with its XML; the domain and only its
    overlay go, the old master stays."""
    capture, r = Capture(host.context, Cleanup(host.context)), capture_reservation()
    prepared = capture.prepare(r)
    assert (prepared["domain"], prepared["new_image"]) == ("base-vm-any-name", NEW)
    assert capture.shutdown(r, prepared["domain"])["method"] == "already off"
    flat = capture.flatten(r, prepared)
    master = host.datastore / f"{NEW}.qcow2"
    assert flat["master"] == str(master) and flat["size_bytes"] > 0
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(master)], capture_output=True, check=True
        ).stdout
    )
    assert "backing-filename" not in info
    read = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0x42 0 1M", str(master)],
        capture_output=True,
        text=True,
    )
    assert "verification failed" not in read.stdout
    assert (host.datastore / f"{NEW}.xml").read_text() == prepared["xml"]
    published = capture.publish(r, prepared, flat["master"])["repository_image"]
    assert published == str(host.root / "repository" / NEW / f"{NEW}.qcow2")
    with pytest.raises(ImageExists, match=NEW):
        capture.prepare(r)  # the name is taken now
    finished = capture.finish(r, prepared)
    assert finished["action"] == "deleted"
    assert host.conn.listAllDomains(0) == []
    assert not (host.vms / "unit-vm1_11-v0.qcow2").exists()
    assert (host.datastore / "linux-Unit-11-v0.qcow2").exists()


def test_capture_checkpoint_powers_the_domain_on_again(host):
    """state checkpoint: after the capture the domain runs again."""
    capture, r = Capture(host.context, Cleanup(host.context)), capture_reservation("checkpoint")
    prepared = capture.prepare(r)
    assert capture.finish(r, prepared) == {
        "domain": "base-vm-any-name",
        "action": "powered on",
        "power": "on",
    }


@pytest.mark.parametrize("disk_format", ["raw", "vmdk"])
def test_a_raw_or_vmdk_disk_becomes_a_qcow2_master_with_the_same_content(tmp_path, disk_format):
    """A site's VM on a raw or vmdk disk (opened so, as its XML says) is captured into the
    datastore's format, qcow2, holding exactly the disk's content; the base VM's own disk,
    not one of the computer's overlays, stays when state image deletes the domain."""
    made = make_host(tmp_path)
    base = tmp_path / f"base.{disk_format}"
    subprocess.run(["qemu-img", "create", "-q", "-f", disk_format, str(base), "64M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", disk_format, "-c", "write -P 0x61 4M 2M", str(base)],
        check=True,
        capture_output=True,
    )
    macs = ("52:54:00:cc:00:1f", "52:54:00:dd:00:1f")
    made.conn.defineXML(made.domain_xml("site-base", [str(base)], macs, disk_format))
    capture, r = Capture(made.context, Cleanup(made.context)), capture_reservation()

    prepared = capture.prepare(r)
    assert (prepared["disk"], prepared["disk_format"]) == (str(base), disk_format)
    flat = capture.flatten(r, prepared)

    master = made.datastore / f"{NEW}.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(master)], capture_output=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2" and "backing-filename" not in info
    same = subprocess.run(
        ["qemu-img", "compare", "-f", disk_format, "-F", "qcow2", str(base), flat["master"]],
        capture_output=True,
        text=True,
    )
    assert same.returncode == 0, same.stdout + same.stderr
    assert capture.finish(r, prepared)["action"] == "deleted"
    assert made.conn.listAllDomains(0) == [] and base.exists()


def test_a_paused_domain_is_not_captured(host):
    """A paused (or crashed) VM's guest cannot prepare and its disk may be inconsistent:
    DOMAIN_UNUSABLE before anything is touched."""
    domain = host.conn.lookupByName("base-vm-any-name")
    domain.create()
    domain.suspend()
    with pytest.raises(DomainUnusable, match="suspended"):
        Capture(host.context, Cleanup(host.context)).prepare(capture_reservation())
    assert not list(host.datastore.glob(f"{NEW}*"))
    assert host.conn.lookupByName("base-vm-any-name").info()[0] == libvirt.VIR_DOMAIN_PAUSED
