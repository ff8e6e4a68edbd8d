"""screenshot, the operation added to show that an operation is one module: a picture of a
real VM's console, through a real worker, from `vclvirt op`."""

from __future__ import annotations

import json
import struct

import libvirt

from tests.conftest import computer_domains, make_reservation, repository_image, vclvirt_cli
from vclvirt import dispatch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_screenshot_of_a_running_vm_and_refusals(
    testbed, start_worker, cleanup_computers, tmp_path
):
    """A loaded VM's console comes back as a PNG the size of its screen; a VM that is off,
    or not there, is refused with an error that says so."""
    image = "linux-E2eShot-611-v0"
    repository_image(testbed, image)
    cleanup_computers.append("e2e-shot")
    start_worker("node-a")
    reservation = make_reservation(7061, "e2e-shot", image, image_id=611)
    assert dispatch.load(reservation).wait(timeout=180).state == "succeeded"
    document = tmp_path / "reservation.json"
    document.write_text(json.dumps(reservation))

    picture = tmp_path / "shot.png"
    shown = vclvirt_cli("op", "screenshot", str(document), "--output", str(picture))
    assert shown.returncode == 0, shown.stderr
    data = picture.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= 320 and height >= 200
    answer = json.loads(shown.stdout)
    assert answer["file"] == {
        "mime": "image/png",
        "size_bytes": len(data),
        "written_to": str(picture),
    }

    (name,) = computer_domains("e2e-shot")
    libvirt.open("qemu:///system").lookupByName(name).destroy()  # off, as if it crashed
    off = dispatch.run(reservation, "screenshot").wait(timeout=60)
    assert off.state == "failed" and off.error is not None
    assert off.error["code"] == "DOMAIN_UNUSABLE" and "not running" in off.error["message"]

    assert dispatch.run(reservation, "unload").wait(timeout=120).state == "succeeded"
    gone = vclvirt_cli("op", "screenshot", str(document))
    assert gone.returncode == 1 and "DOMAIN_MISSING" in gone.stderr


def test_op_refuses_what_an_operation_does_not_take(tmp_path):
    """Unknown operations and parameters are refused before anything is read or sent."""
    unknown = vclvirt_cli("op", "reboot", str(tmp_path / "absent.json"))
    assert unknown.returncode == 2 and "unknown operation reboot; known:" in unknown.stderr
    extra = vclvirt_cli("op", "screenshot", "-", "--param", "size=big")
    assert extra.returncode == 2 and "params.size" in extra.stderr
