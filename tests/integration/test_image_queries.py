"""does_image_exist / get_image_size / list_images and the Windows pre_define note, on node-a."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import make_reservation, repository_image, uncached_image
from vclvirt import composition
from vclvirt.errors import ImageNotFound
from vclvirt.models import parse_reservation


def test_image_queries_see_repository_then_master(testbed):
    """An image only in the repository exists and has its repository size; once it is a
    master on the host, its size is the master's."""
    image = "linux-ItQueries-631-v0"
    uncached_image(testbed, image, "64M", "8M", "node-a")
    server = composition.current().host("node-a")

    assert server.images.exists(image)
    assert 8 <= server.images.size_mb(image) < 64
    assert image in server.images.listing()["repository"]
    assert image not in server.images.listing()["datastore"]

    reservation = parse_reservation(make_reservation(9301, "it-queries", image, image_id=631))
    server.load.pre_define(reservation)
    assert image in server.images.listing()["datastore"]
    master = testbed / f"hosts/node-a/images/{image}.qcow2"
    assert server.images.size_bytes(image) == master.stat().st_blocks * 512
    (testbed / "hosts/node-a/vms/it-queries_631-v0.qcow2").unlink()


def test_missing_image_is_reported_as_such(testbed):
    """Neither master nor repository copy: does_image_exist is False, size is ImageNotFound."""
    server = composition.current().host("node-a")
    assert not server.images.exists("linux-ItNowhere-632-v0")
    with pytest.raises(ImageNotFound, match="linux-ItNowhere-632-v0"):
        server.images.size_mb("linux-ItNowhere-632-v0")


def test_windows_image_without_virt_win_reg_is_noted_and_goes_on(testbed):
    """A Windows load on a host without virt-win-reg says so in its result and goes on: the
    overlay is created on the master, which stays unpatched."""
    image = "win7-ItWindows-633-v0"
    repository_image(testbed, image)
    overlay = testbed / "hosts/node-a/vms/it-windows_633-v0.qcow2"
    overlay.unlink(missing_ok=True)  # an earlier, interrupted run
    reservation = parse_reservation(
        make_reservation(9302, "it-windows", image, image_id=633, os_type="windows")
    )
    result = composition.current().host("node-a").load.pre_define(reservation)
    master = testbed / f"hosts/node-a/images/{image}.qcow2"
    assert (result["overlay"], result["overlay_created"]) == (str(overlay), True)
    assert len(result["notes"]) == 1 and "virt-win-reg is not installed" in result["notes"][0]
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(overlay)], capture_output=True, check=True
        ).stdout
    )
    assert (info["format"], info["backing-filename"]) == ("qcow2", str(master))
    overlay.unlink()
