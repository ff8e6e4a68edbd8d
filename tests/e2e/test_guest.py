"""A real guest through the whole life cycle: load, post_load, node_status, power, unload;
its SSH host key pinned at post_load and required later.

One guest boots (under TCG, a few seconds) and is reused by the steps of one test,
so the real-guest tier stays short.
"""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any

import libvirt
import paramiko
import pytest
import redis

from tests.conftest import (
    TEST_BROKER,
    computer_domains,
    guest_shell,
    make_reservation,
    vclvirt_cli,
)
from vclvirt import composition, dispatch
from vclvirt.config.inventory import get_inventory
from vclvirt.errors import GuestHostKeyChanged
from vclvirt.guest.currentimage import parse_tags
from vclvirt.guest.hostkeys import key_text
from vclvirt.models import parse_reservation
from vclvirt.state import keys

pytestmark = pytest.mark.slow


def step_states(reservation_id: int) -> dict[str, str]:
    record = dispatch.status(reservation_id)
    assert record is not None
    return {s["name"]: s["state"] for s in record.to_dict()["steps"]}


def _guest_key(port: int) -> str:
    """The key the guest offers paramiko (the same negotiation the worker does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=10)
            return key_text(transport.get_remote_server_key())
        finally:
            transport.close()


def _host_key_is_pinned_and_required(reservation: dict[str, Any]) -> None:
    """post_load pinned the guest's real key in the record; a later node_status operation
    passes with it and fails with GUEST_HOST_KEY_CHANGED when the guest answers with
    another (through the worker and through the host's node status). The pin is restored."""
    client = redis.Redis.from_url(TEST_BROKER)
    pin = keys.guest_host_key(reservation["reservation_id"])
    port = get_inventory().host("node-a").forwarded_ssh_port(reservation["computer"]["id"])
    pinned = client.get(pin)
    assert pinned is not None and pinned.decode() == _guest_key(port)

    checked = dispatch.run(reservation, "node_status").wait(timeout=120)
    assert checked.state == "succeeded", checked.error
    assert checked.step_records["node_status"]["result"]["status"] == "READY"
    assert client.get(pin) == pinned

    # Another real key pinned: the guest now answering is not the one first contacted.
    client.set(pin, key_text(paramiko.ECDSAKey.generate()), keepttl=True)
    refused = dispatch.run(reservation, "node_status").wait(timeout=120)
    assert refused.state == "failed"
    assert refused.error is not None and refused.error["code"] == "GUEST_HOST_KEY_CHANGED"
    with pytest.raises(GuestHostKeyChanged):
        composition.current().host("node-a").status.check(parse_reservation(reservation))
    client.set(pin, pinned, keepttl=True)
    client.close()


def test_guest_life_cycle(testbed, guest_image, start_worker, cleanup_computers, tmp_path):
    """load → READY, the guest's host key pinned and required; tag removed → POST_LOAD and
    a post_load-only load; power off/on/reset; destroyed → RELOAD; unload (which drops the
    pin) and maintenance remove only their computer's files."""
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
    _host_key_is_pinned_and_required(reservation)

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
    pins = redis.Redis.from_url(TEST_BROKER)
    assert pins.get(keys.guest_host_key(8002)) is not None
    unloaded = vclvirt_cli("unload", str(path))
    assert unloaded.returncode == 0, unloaded.stderr
    assert pins.get(keys.guest_host_key(8002)) is None  # the domain is gone, and its pin
    pins.close()
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
