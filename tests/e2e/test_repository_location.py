"""Every operation acts where the repository is (#14.4): on the host, or, with
repository_location = "worker", on the machine running the worker (and the CLI).

On this test bed the "hosts" are sshd on this machine, so the worker and the host would
see the same files. The worker (and the CLI) therefore run in a mount namespace of their
own in which the repository path shows another directory: the host sees `host-view/`,
the worker's side sees `worker-view/` at the same path. An image put in one view only is
found, sized, listed and loaded only when that view is the repository's location, and a
capture's repository copy lands in that view only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import libvirt
import pytest

from tests.conftest import ROOT, computer_domains, make_reservation
from vclvirt import dispatch
from vclvirt.naming import new_image_name

COMPUTER = "fid-repo1"
IMAGE = "linux-FidRepoLocation-731-v0"
ELSEWHERE = "linux-FidRepoElsewhere-732-v0"  # only in the view that is not the repository


def inventory_with(testbed: Path, tmp_path: Path, repository: Path, location: str) -> Path:
    """The test bed's inventory, node-a's repository at `repository`, at `location`."""
    text = (testbed / "inventory.toml").read_text()
    hosts = tomllib.loads(text)["hosts"]
    lines = []
    for name, table in hosts.items():
        if name == "node-a":
            table = {**table, "repository_path": str(repository), "repository_location": location}
        lines.append(f"[hosts.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path = tmp_path / f"inventory-{location}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def in_view(view: Path, mount_point: Path) -> tuple[str, ...]:
    """argv prefix: run the rest in a private mount namespace where mount_point shows view."""
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(view), str(mount_point))  # fmt: skip


def image_in(view: Path, name: str, data: str) -> Path:
    directory = view / name
    directory.mkdir(parents=True)
    path = directory / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x3c 0 {data}", str(path)],
        check=True,
        capture_output=True,
    )
    return path


@pytest.mark.parametrize("location", ["host", "worker"])
def test_queries_loads_and_captures_use_the_repository_where_it_is(
    testbed, tmp_path, start_worker, cleanup_computers, location
):
    """exists / size / list (CLI), a load's master copy and a capture's repository copy
    all use the view of the repository's location, never the other one."""
    cleanup_computers.append(COMPUTER)
    repository = tmp_path / "repository"  # what the host (sshd, libvirtd) sees
    worker_view = tmp_path / "worker-view"  # what the worker and the CLI see there
    repository.mkdir()
    worker_view.mkdir()
    ours, other = (worker_view, repository) if location == "worker" else (repository, worker_view)
    source = image_in(ours, IMAGE, "8M")
    image_in(other, ELSEWHERE, "1M")
    inventory = inventory_with(testbed, tmp_path, repository, location)
    view = in_view(worker_view, repository)
    datastore = testbed / "hosts/node-a/images"
    captured = new_image_name("linux", f"Test image {IMAGE}", 731, 1)
    for name in (IMAGE, captured):
        for stale in datastore.glob(f"{name}.*"):
            stale.unlink()  # an earlier, interrupted run

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*view, sys.executable, "-m", "vclvirt", *args, "--host", "node-a"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "VCLVIRT_INVENTORY": str(inventory)},
            timeout=120,
            check=False,
        )

    try:
        listed = cli("images", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["repository"] == [IMAGE]
        assert cli("images", "exists", IMAGE).stdout.strip() == "yes"
        assert cli("images", "exists", ELSEWHERE).stdout.strip() == "no"
        size = cli("images", "size", IMAGE, "--bytes")
        assert int(size.stdout) == os.stat(source).st_blocks * 512, size.stderr

        start_worker("node-a", wrap=view, VCLVIRT_INVENTORY=str(inventory))
        base = make_reservation(7301, COMPUTER, IMAGE, image_id=731)
        loaded = dispatch.load(base).wait(180)
        assert loaded.state == "succeeded", loaded.to_dict()
        assert loaded.step_records["pre_define"]["result"]["master_copied"] is True
        (name,) = computer_domains(COMPUTER)
        conn = libvirt.open("qemu:///system")
        conn.lookupByName(name).destroy()  # no OS to hear the power button: off already
        conn.close()

        capture = {**base, "reservation_id": 7302, "state": "image"}
        capture["image"] = {**base["image"], "revision": 1, "revision_id": 73101}
        done = dispatch.capture(capture).wait(180)
        assert done.state == "succeeded", done.to_dict()
        copy = ours / captured / f"{captured}.qcow2"
        publish = done.step_records["capture_publish"]["result"]
        assert publish["repository_image"] == str(repository / captured / f"{captured}.qcow2")
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(copy)], capture_output=True, check=True
            ).stdout
        )
        assert info["format-specific"]["data"]["compat"] == "0.10"
        assert (ours / captured / f"{captured}.xml").exists()
        assert not (other / captured).exists()
        assert sorted(p.name for p in (ours / captured).iterdir()) == [
            f".{captured}.lock",
            f"{captured}.qcow2",
            f"{captured}.xml",
        ]
    finally:
        for name in (IMAGE, captured):
            for made in datastore.glob(f"{name}.*"):
                made.unlink()
            for lock in datastore.glob(f".{name}.lock"):
                lock.unlink()
