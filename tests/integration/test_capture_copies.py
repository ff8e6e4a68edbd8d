"""Capture's two copies (the new master in the datastore, its repository copy) on a host
that is this machine: written under a temporary name, verified, renamed; a failed or
damaged copy leaves nothing under the image's name.

The captured disk is a real overlay on a real master; faults come from tests/faults.py.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_reservation
from tests.events import HUNG
from tests.local_host import local_host, local_server, qemu_img
from vclvirt.errors import ImageInvalid, VclvirtError
from vclvirt.models import parse_reservation

BASE = "linux-TestsCaptureBase-642-v0"
NEW = "linux-TestsCaptured-642-v1"
REFERENCE_XML = "<domain><name>captured</name></domain>"


@pytest.fixture
def host(tmp_path: Path) -> Any:
    return local_host(tmp_path / "host")


@pytest.fixture
def disk(host: Any) -> Path:
    """The computer's overlay: 4 MiB of 0x5a in the master, 4 MiB of 0x66 of its own."""
    master = Path(host.datastore_path) / f"{BASE}.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(master), "64M")
    io(master, "write -P 0x5a 0 4M")
    overlay = Path(host.vm_dir) / "tests-capt1_642-v0.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(master), "-F", "qcow2", str(overlay))
    io(overlay, "write -P 0x66 4M 4M")
    return overlay


def io(path: Path, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(path)], check=True, capture_output=True
    )


def prepared(disk: Path) -> dict[str, Any]:
    """What capture_prepare hands on (its guest part does not matter here)."""
    return {"domain": "tests-capt1_x", "new_image": NEW, "disk": str(disk), "xml": REFERENCE_XML}


def reservation() -> Any:
    return parse_reservation(
        make_reservation(9600, "tests-capt1", BASE, image_id=642, state="image")
    )


def new_master(host: Any) -> Path:
    return Path(host.datastore_path) / f"{NEW}.qcow2"


def published(host: Any) -> Path:
    return Path(host.repository_path) / NEW / f"{NEW}.qcow2"


def leftovers(host: Any) -> list[str]:
    root = Path(host.datastore_path).parent
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.part"))


def standalone_copy_of(copy: Path, disk: Path) -> bool:
    """No backing file, and qemu-img compare finds the same content as the disk."""
    info = json.loads(qemu_img("info", "--output=json", str(copy)))
    same = subprocess.run(["qemu-img", "compare", str(disk), str(copy)], capture_output=True)
    return "backing-filename" not in info and same.returncode == 0


def test_capture_writes_verified_standalone_copies(host, disk, qemu_img_faults):
    """The new master and its repository copy hold the disk's whole chain, with no backing
    file, the repository one as qcow2 v2 (compat 0.10); each was written as `.part`."""
    server = local_server(host)
    flattened = server.capture.flatten(reservation(), prepared(disk))
    result = server.capture.publish(reservation(), prepared(disk), flattened["master"])

    assert flattened["master"] == str(new_master(host))
    assert result == {"repository_image": str(published(host))}
    assert standalone_copy_of(new_master(host), disk)
    assert standalone_copy_of(published(host), disk)
    info = json.loads(qemu_img("info", "--output=json", str(published(host))))
    assert info["format-specific"]["data"]["compat"] == "0.10"
    assert new_master(host).with_suffix(".xml").read_text() == REFERENCE_XML
    assert published(host).with_suffix(".xml").read_text() == REFERENCE_XML
    assert qemu_img_faults.converts() == [f"{new_master(host)}.part", f"{published(host)}.part"]
    assert leftovers(host) == []


def test_a_capture_copy_in_progress_is_invisible_under_the_images_name(host, disk, qemu_img_faults):
    """While the new master is written, nothing exists under its name."""
    server = local_server(host)
    qemu_img_faults.pause()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(server.capture.flatten, reservation(), prepared(disk))
        try:
            qemu_img_faults.wait_until_paused()
            assert not new_master(host).exists()
            assert NEW not in server.images.listing()["datastore"]
        finally:
            qemu_img_faults.resume()
        future.result(timeout=HUNG)
    assert standalone_copy_of(new_master(host), disk)


@pytest.mark.parametrize("fault", ["fail_half_written", "corrupt_output"])
def test_a_failed_or_damaged_new_master_leaves_nothing(host, disk, qemu_img_faults, fault):
    """A copy that dies half-way, or that lost data after qemu-img reported success, leaves
    no master and no `.part`; a damaged one is reported as ImageInvalid."""
    getattr(qemu_img_faults, fault)()
    expected = ImageInvalid if fault == "corrupt_output" else VclvirtError
    with pytest.raises(expected):
        local_server(host).capture.flatten(reservation(), prepared(disk))
    assert not new_master(host).exists()
    assert leftovers(host) == []


@pytest.mark.parametrize("fault", ["fail_half_written", "corrupt_output"])
def test_a_failed_or_damaged_repository_copy_is_not_published(host, disk, qemu_img_faults, fault):
    """The same for the repository copy: nothing appears under the image's name there."""
    server = local_server(host)
    master = server.capture.flatten(reservation(), prepared(disk))["master"]
    getattr(qemu_img_faults, fault)()
    expected = ImageInvalid if fault == "corrupt_output" else VclvirtError
    with pytest.raises(expected):
        server.capture.publish(reservation(), prepared(disk), master)
    assert not published(host).exists()
    assert leftovers(host) == []
    assert standalone_copy_of(new_master(host), disk)  # the master stays good
