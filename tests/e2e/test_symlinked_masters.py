"""Masters that are symlinks, through real workers (#14.5): sites keep masters on another
volume and link them into the datastore. The link is found like a file (over SSH and
through libvirt's storage pools), loads run on it, and nothing that removes a computer's
files — a failed load's cleanup, delete_existing_domains, a capture's finish, unload —
removes or replaces it. The repository holds the image too, with other content: a link
taken for missing would be copied over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import libvirt

from tests.conftest import ROOT, computer_domains, make_reservation, repository_image
from vclvirt import dispatch

COMPUTER = "fid-link1"
IMAGE = "linux-FidLinkedMaster-741-v0"


def qemu_io(path: Path, command: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", *options, "-f", "qcow2", "-c", command, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def intact(link: Path, target: Path) -> bool:
    """Still a link to the master on the other volume, which still holds its data."""
    read = qemu_io(target, "read -P 0x6b 0 4M", "-r", "-U")  # domains may run on it
    return (
        link.is_symlink()
        and link.resolve() == target
        and read.returncode == 0
        and "verification failed" not in read.stdout
    )


def broken_vm_path_inventory(testbed: Path, tmp_path: Path) -> Path:
    """node-b with a vm_path that cannot be a directory: its loads fail in pre_define, after
    the master was found, and clean up after themselves."""
    not_a_directory = tmp_path / "vms-is-a-file"
    not_a_directory.write_text("")
    hosts = tomllib.loads((testbed / "inventory.toml").read_text())["hosts"]
    hosts["node-b"]["vm_path"] = str(not_a_directory)
    lines = []
    for name, table in hosts.items():
        lines.append(f"[hosts.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path = tmp_path / "inventory.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_linked_master_is_loaded_and_never_removed(
    testbed, tmp_path, start_worker, cleanup_computers
):
    """Load on the link (no copy), image queries see it; a load failing after pre_define,
    a reload's delete_existing_domains, an `image` capture and unload leave it in place."""
    cleanup_computers.append(COMPUTER)
    volume = testbed / "fid-other-volume"
    volume.mkdir(exist_ok=True)
    target = volume / f"{IMAGE}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target), "64M"], check=True)
    assert qemu_io(target, "write -P 0x6b 0 4M").returncode == 0
    links = []
    for host in ("node-a", "node-b"):
        link = testbed / f"hosts/{host}/images/{IMAGE}.qcow2"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        links.append(link)
    link = links[0]
    repository_image(testbed, IMAGE)  # empty: a copy of it would not hold the master's data
    captured = "linux-TestimagelinuxFidLinkedMaster741v0-741-v1"
    try:
        start_worker("node-a")
        start_worker("node-b", VCLVIRT_INVENTORY=str(broken_vm_path_inventory(testbed, tmp_path)))

        first = make_reservation(7401, COMPUTER, IMAGE, image_id=741)
        loaded = dispatch.load(first).wait(180)
        assert loaded.state == "succeeded", loaded.to_dict()
        pre_define = loaded.step_records["pre_define"]["result"]
        assert (pre_define["master"], pre_define["master_copied"]) == (str(link), False)
        (name,) = computer_domains(COMPUTER)
        conn = libvirt.open("qemu:///system")
        assert conn.lookupByName(name).isActive()
        overlay = json.loads(
            subprocess.run(
                ["qemu-img", "info", "-U", "--output=json", pre_define["overlay"]],
                capture_output=True,
                check=True,
            ).stdout
        )
        assert overlay["backing-filename"] == str(link)

        def cli(*args: str) -> str:
            return subprocess.run(
                [sys.executable, "-m", "vclvirt", "images", *args, "--host", "node-a"],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=os.environ,
                timeout=120,
                check=True,
            ).stdout

        assert IMAGE in json.loads(cli("list", "--json"))["datastore"]
        assert int(cli("size", IMAGE, "--bytes")) == os.stat(target).st_blocks * 512

        on_b = make_reservation(7402, "fid-link2", IMAGE, image_id=741, host="node-b")
        failed = dispatch.load(on_b).wait(180)
        assert failed.state == "failed"
        assert failed.step_records["pre_define"]["state"] == "failed", failed.to_dict()
        assert intact(links[1], target)

        reload = {**first, "reservation_id": 7403, "state": "reload"}
        reloaded = dispatch.load(reload).wait(180)
        assert reloaded.state == "succeeded", reloaded.to_dict()
        assert reloaded.step_records["delete_existing_domains"]["result"]["deleted_domains"]
        assert intact(link, target)

        conn.lookupByName(name).destroy()  # no OS to hear the power button
        capture = {**first, "reservation_id": 7404, "state": "image"}
        capture["image"] = {**first["image"], "revision": 1, "revision_id": 74101}
        done = dispatch.capture(capture).wait(180)
        assert done.state == "succeeded", done.to_dict()
        assert done.step_records["capture_finish"]["result"]["action"] == "deleted"
        assert computer_domains(COMPUTER) == []
        assert intact(link, target)

        assert dispatch.load({**first, "reservation_id": 7405}).wait(180).state == "succeeded"
        assert dispatch.run(first, "unload").wait(120).state == "succeeded"
        assert computer_domains(COMPUTER) == []
        assert intact(link, target)
        conn.close()
    finally:
        for made in [*links, target]:
            made.unlink(missing_ok=True)
        for host in ("node-a", "node-b"):
            for made in (testbed / f"hosts/{host}/images").glob(f"*{captured}*"):
                made.unlink()
        subprocess.run(["rm", "-rf", str(testbed / "repository" / captured)], check=True)
