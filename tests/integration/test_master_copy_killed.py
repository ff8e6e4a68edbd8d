"""A master copy over SSH whose worker is SIGKILLed half-way. The copy on the host holds the
image's lock to its end (qemu-img ignores the closed channel), so the next load waits for
it and finds a whole, verified master: still one copy per host and image, no `.part` left,
nothing half-written ever under the master's name."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, wait_for
from vclvirt.hypervisor.drivers.kvm import KvmDriver
from vclvirt.images.master import ensure_master
from vclvirt.node.ssh import SSHTransport

SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/@-]*$")

COPY = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from vclvirt.config.inventory import load_inventory
    from vclvirt.hypervisor.drivers.kvm import KvmDriver
    from vclvirt.images.master import ensure_master
    from vclvirt.node.ssh import SSHTransport

    inventory, datastore, repository, image = sys.argv[1:]
    host = load_inventory(Path(inventory)).host("node-a").model_copy(
        update={"datastore_path": datastore, "repository_path": repository}
    )
    node = SSHTransport(host)
    ensure_master(node, KvmDriver(host, node), host, image)
    """
)


def test_copy_of_a_killed_worker_is_waited_for_and_not_repeated(
    testbed: Path, inventory: Any, tmp_path: Path
) -> None:
    """SIGKILL of the copying process mid-convert, then a new ensure_master at once: it waits
    for the image's lock, finds the master the dead worker's copy finished, copies nothing;
    the master is whole and no `.part` is left."""
    assert SAFE_PATH.fullmatch(str(tmp_path))
    datastore, repository = tmp_path / "ds", tmp_path / "repo"
    image = "linux-PerfKilled-645-v0"
    source = repository / image / f"{image}.qcow2"
    source.parent.mkdir(parents=True)
    datastore.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "1G"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 900M", str(source)],
        check=True,
        capture_output=True,
    )
    part, final = datastore / f"{image}.qcow2.part", datastore / f"{image}.qcow2"
    copy = subprocess.Popen(
        [
            *(sys.executable, "-c", COPY),
            *(str(testbed / "inventory.toml"), str(datastore), str(repository), image),
        ],
        cwd=ROOT,
        start_new_session=True,
    )
    wait_for(lambda: part.exists() and part.stat().st_size > 0, 60, "the copy to write .part")
    os.killpg(copy.pid, signal.SIGKILL)
    copy.wait(timeout=30)
    assert not final.exists()  # killed mid-copy

    host = inventory.host("node-a").model_copy(
        update={"datastore_path": str(datastore), "repository_path": str(repository)}
    )
    node = SSHTransport(host, connect_timeout=10)
    try:
        master = ensure_master(node, KvmDriver(host, node), host, image)
    finally:
        node.close()

    assert (master.path, master.copied) == (str(final), False)
    assert subprocess.run(["qemu-img", "check", master.path], capture_output=True).returncode == 0
    read = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 900M", master.path],
        capture_output=True,
        text=True,
    )
    assert read.returncode == 0 and "verification failed" not in read.stdout
    assert sorted(p.name for p in datastore.iterdir()) == [f".{image}.lock", f"{image}.qcow2"]
