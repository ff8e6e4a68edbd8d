"""What vcld relies on when it decides to reload, with the real test guest (#14.1, 14.2,
14.6): `reload` and `reinstall` always run the whole load, `new` skips a READY computer;
node_status fails on a configuration that gives no way into the guest and touches
nothing, and answers RELOAD for a tainted guest and for a crashed domain, which libvirt
keeps (on_crash preserve) until the next load removes it.

One guest is reused throughout; it boots three times (load, reload, reinstall).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.conftest import computer_domains, guest_shell, make_reservation, wait_for
from vclvirt import dispatch

pytestmark = pytest.mark.slow

COMPUTER = "fid-reload"
CONFIG_ERROR = "GUEST_ACCESS_NOT_CONFIGURED"


def node_status(reservation: dict[str, Any]) -> dict[str, Any]:
    final = dispatch.run(reservation, "node_status").wait(120)
    assert final.state == "succeeded", final.to_dict()
    return dict(final.step_records["node_status"]["result"])


def ran(final: Any) -> dict[str, str]:
    return {s["name"]: s["state"] for s in final.to_dict()["steps"]}


def switches_inventory(testbed: Path, tmp_path: Path) -> Path:
    """The test bed's inventory with node-a reaching guests at their private IP."""
    hosts = tomllib.loads((testbed / "inventory.toml").read_text())["hosts"]
    hosts["node-a"]["guest_network"] = "switches"
    lines = []
    for name, table in hosts.items():
        lines.append(f"[hosts.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path = tmp_path / "inventory-switches.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reload_reinstall_and_what_node_status_may_judge(
    testbed, guest_image, start_worker, cleanup_computers, tmp_path
):
    """READY guest: `new` skips; no guest key / no private IP fail with their own code and
    leave the running guest alone (reload included); a tainted guest is RELOAD; `reload`
    recreates the domain and boots the guest again; a crashed guest is kept and is RELOAD;
    `reinstall` removes the crashed domain and loads again."""
    cleanup_computers.append(COMPUTER)
    worker = start_worker("node-a")
    base = make_reservation(7501, COMPUTER, guest_image, image_id=900, os_type="linux")
    loaded = dispatch.load(base).wait(300)
    assert loaded.state == "succeeded", loaded.to_dict()
    assert node_status(base)["status"] == "READY"
    conn = libvirt.open("qemu:///system")
    (name,) = computer_domains(COMPUTER)
    first_id = conn.lookupByName(name).ID()
    first_boot = guest_shell(testbed, base, "cat", "/proc/sys/kernel/random/boot_id")

    skipped = dispatch.load({**base, "reservation_id": 7502}).wait(120)
    assert skipped.state == "succeeded"
    assert ran(skipped)["node_status"] == "succeeded"
    assert {s for s, state in ran(skipped).items() if state != "skipped"} == {"node_status"}

    # Configuration errors: each through a worker configured so, the guest running meanwhile.
    worker.stop()
    configured_wrong = [
        start_worker("node-a", unset=("VCLVIRT_GUEST_KEY_FILE",)),
        start_worker("node-a", VCLVIRT_INVENTORY=str(switches_inventory(testbed, tmp_path))),
    ]
    rid = 7510
    for wrong in configured_wrong:
        for operation in ("node_status", "new", "reload"):
            rid += 1
            reservation = {**base, "reservation_id": rid}
            if operation == "node_status":
                final = dispatch.run(reservation, "node_status").wait(120)
            else:
                final = dispatch.load({**reservation, "state": operation}).wait(120)
            assert final.state == "failed", final.to_dict()
            assert final.error and final.error["code"] == CONFIG_ERROR, final.error
            assert final.error["hint"]
            assert ran(final)["node_status"] == "failed"
            assert {ran(final).get(s) for s in ("delete_existing_domains", "pre_define")} <= {
                None,
                "pending",
            }
        wrong.stop()
    assert conn.lookupByName(name).ID() == first_id
    assert guest_shell(testbed, base, "cat", "/proc/sys/kernel/random/boot_id") == first_boot

    start_worker("node-a")
    guest_shell(
        testbed, base, "sh", "-c", "echo 'vcld_tainted=user logged in (test)' >> currentimage.txt"
    )
    tainted = node_status(base)
    assert tainted["status"] == "RELOAD" and "tainted" in tainted["reason"], tainted

    reload = {**base, "reservation_id": 7520, "state": "reload"}
    reloaded = dispatch.load(reload).wait(300)
    assert reloaded.state == "succeeded", reloaded.to_dict()
    assert set(ran(reloaded).values()) == {"succeeded"}  # every step ran again
    assert reloaded.step_records["delete_existing_domains"]["result"]["deleted_domains"] == [name]
    assert conn.lookupByName(name).ID() != first_id  # a new domain...
    second_boot = guest_shell(testbed, reload, "cat", "/proc/sys/kernel/random/boot_id")
    assert second_boot != first_boot  # ...a new boot...
    assert node_status(reload)["status"] == "READY"  # ...on a fresh disk: no taint

    # The guest kernel panics: the pvpanic device tells libvirt, which keeps the domain.
    guest_shell(
        testbed,
        reload,
        "sh",
        "-c",
        "(sleep 1; echo c > /proc/sysrq-trigger) </dev/null >/dev/null 2>&1 &",
    )
    crashed = conn.lookupByName(name)
    wait_for(lambda: crashed.state()[0] == libvirt.VIR_DOMAIN_CRASHED, 120, "the guest to crash")
    assert crashed.isActive()  # preserved for an operator to look at, not destroyed
    status = node_status(reload)
    assert status == {"status": "RELOAD", "reason": f"domain {name} is not running (crashed)"}

    reinstall = {**base, "reservation_id": 7530, "state": "reinstall"}
    reinstalled = dispatch.load(reinstall).wait(300)
    assert reinstalled.state == "succeeded", reinstalled.to_dict()
    assert set(ran(reinstalled).values()) == {"succeeded"}
    assert reinstalled.step_records["delete_existing_domains"]["result"]["deleted_domains"] == [
        name
    ]
    assert conn.lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert guest_shell(testbed, reinstall, "cat", "/proc/sys/kernel/random/boot_id") not in (
        first_boot,
        second_boot,
    )
    # (node_status of a reservation in state reinstall always answers RELOAD)
    assert node_status({**reinstall, "state": "new"})["status"] == "READY"
    conn.close()
