"""A real guest through the whole life cycle: load, post_load, node_status, power, unload.

One guest boots (under TCG, a few seconds) and is reused by the steps of one test,
so the real-guest tier stays short.
"""

from __future__ import annotations

import json
import subprocess

import libvirt
import pytest

from tests.conftest import computer_domains, guest_shell, make_reservation, vclvirt_cli
from vclvirt import dispatch
from vclvirt.guest.currentimage import parse_tags

pytestmark = pytest.mark.slow


def step_states(reservation_id: int) -> dict[str, str]:
    record = dispatch.status(reservation_id)
    assert record is not None
    return {s["name"]: s["state"] for s in record.to_dict()["steps"]}


def test_guest_life_cycle(testbed, guest_image, start_worker, cleanup_computers, tmp_path):
    """load → READY; tag removed → POST_LOAD and a post_load-only load; power off/on/reset;
    destroyed → RELOAD; unload and maintenance remove only their computer's files."""
    cleanup_computers.extend(["e2e-guest", "e2e-bystander"])
    start_worker("node-a")
    reservation = make_reservation(8001, "e2e-guest", guest_image, image_id=900, os_type="linux")
    path = tmp_path / "reservation.json"
    path.write_text(json.dumps(reservation))

    loaded = vclvirt_cli("load", str(path), "--wait", "--timeout", "300")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "post_load" in loaded.stdout and "loaded on node-a" in loaded.stdout
    post_load = dispatch.status(8001).step_records["post_load"]
    assert post_load["state"] == "succeeded"
    assert vclvirt_cli("node-status", str(path)).stdout.startswith("READY")
    assert guest_shell(testbed, reservation, "hostname").strip() == "e2e-guest"
    tags = parse_tags(guest_shell(testbed, reservation, "cat", "currentimage.txt"))
    assert tags["imagerevision_id"] == str(reservation["image"]["revision_id"])
    assert tags["vcld_post_load"].startswith("success (")

    # Without the post_load tag the guest needs only post_load: no new domain is defined.
    conn = libvirt.open("qemu:///system")
    (name,) = computer_domains("e2e-guest")
    domain_id = conn.lookupByName(name).ID()
    text = guest_shell(testbed, reservation, "cat", "currentimage.txt")
    stripped = "".join(line + "\n" for line in text.splitlines() if "vcld_post_load" not in line)
    guest_shell(testbed, reservation, "sh", "-c", f"printf '%s' '{stripped}' > currentimage.txt")
    assert vclvirt_cli("node-status", str(path)).stdout.startswith("POST_LOAD")
    reservation2 = {**reservation, "reservation_id": 8002}
    path.write_text(json.dumps(reservation2))
    again = vclvirt_cli("load", str(path), "--wait", "--timeout", "300")
    assert again.returncode == 0, again.stdout + again.stderr
    states = step_states(8002)
    assert states["post_load"] == "succeeded" and states["define"] == "skipped"
    assert states["delete_existing_domains"] == "skipped"
    assert conn.lookupByName(name).ID() == domain_id  # the same running domain
    assert vclvirt_cli("node-status", str(path)).stdout.startswith("READY")

    # Graceful power off: the guest shuts itself down on the ACPI button.
    off = vclvirt_cli("power", "off", str(path))
    assert off.returncode == 0, off.stderr
    assert "off (acpi in" in off.stdout
    assert vclvirt_cli("power", "status", str(path)).stdout.strip().endswith(": off")
    assert vclvirt_cli("power", "on", str(path)).stdout.strip().endswith(": on")
    boot_id = guest_shell(testbed, reservation, "cat", "/proc/sys/kernel/random/boot_id")
    reset = vclvirt_cli("power", "reset", str(path))
    assert reset.returncode == 0 and reset.stdout.strip().endswith(": on")
    assert guest_shell(testbed, reservation, "cat", "/proc/sys/kernel/random/boot_id") != boot_id

    # The hypervisor has no running domain: RELOAD, whatever the guest's tags say.
    conn.lookupByName(name).destroy()
    assert vclvirt_cli("node-status", str(path)).stdout.startswith("RELOAD")

    # unload touches only its computer; a bystander on the same host keeps everything.
    bystander = make_reservation(8003, "e2e-bystander", "linux-E2eBystander-611-v0", image_id=611)
    (testbed / "repository/linux-E2eBystander-611-v0").mkdir(exist_ok=True)
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            str(
                testbed / "repository/linux-E2eBystander-611-v0" / "linux-E2eBystander-611-v0.qcow2"
            ),
            "16M",
        ],
        check=True,
    )
    assert dispatch.load(bystander).wait(180).state == "succeeded"
    bystander_files = sorted(testbed.glob("hosts/node-a/*/e2e-bystander_*"))
    assert len(bystander_files) == 2  # overlay and XML
    unloaded = vclvirt_cli("unload", str(path))
    assert unloaded.returncode == 0, unloaded.stderr
    assert computer_domains("e2e-guest") == []
    assert dispatch.status(8002).to_dict()["computer_image"]["image"] == "noimage"
    assert list(testbed.glob("hosts/node-a/*/e2e-guest_*")) == []
    assert (testbed / f"hosts/node-a/images/{guest_image}.qcow2").exists()  # never the master
    assert len(computer_domains("e2e-bystander")) == 1
    assert sorted(testbed.glob("hosts/node-a/*/e2e-bystander_*")) == bystander_files

    bystander_file = tmp_path / "bystander.json"
    bystander_file.write_text(json.dumps(bystander))
    cleared = vclvirt_cli("maintenance", str(bystander_file))
    assert cleared.returncode == 0, cleared.stderr
    assert computer_domains("e2e-bystander") == []
    assert list(testbed.glob("hosts/node-a/*/e2e-bystander_*")) == []
