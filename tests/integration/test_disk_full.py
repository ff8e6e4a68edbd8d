"""A full filesystem on a host, met by each way vclvirt writes files there: an overlay
made by libvirt's storage pool, an XML copy uploaded through libvirt, the same two by
commands over SSH, a master copied from the repository by the copy script over SSH, an
internal snapshot taken by the server (on a host that is this machine).

Every one fails with HOST_DISK_FULL (permanent) naming the file and the free space of
its filesystem, leaves nothing half-written, and works once space is freed. The
filesystem is real: a small tmpfs mounted over the directory (tests/disk_full.py),
reached through node-a's sshd and libvirtd over qemu+libssh (the snapshot: directly).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.conftest import make_reservation
from tests.disk_full import entries, fill, free_bytes, free_space, resize, small_filesystem
from tests.local_host import local_host, local_server
from tests.local_host import repository_image as local_repository_image
from vclvirt.errors import HostDiskFull
from vclvirt.hypervisor.connection import connect
from vclvirt.hypervisor.drivers.kvm import KvmDriver
from vclvirt.hypervisor.pools import DirectoryPools
from vclvirt.images.capture import flatten_to_master, publish_to_repository
from vclvirt.images.files import CommandFiles, LibvirtFiles, OverlayFacts
from vclvirt.images.master import ensure_master
from vclvirt.images.space import disk_full_judged
from vclvirt.models import parse_reservation
from vclvirt.node.local import LocalTransport
from vclvirt.node.ssh import SSHTransport

SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/@-]*$")
IMAGE = "linux-TestsDiskFull-652-v0"


def pools_under(root: Path) -> list[libvirt.virStoragePool]:
    conn = libvirt.open("qemu:///system")
    found = []
    for pool in conn.listAllStoragePools(0):
        target = re.search(r"<path>([^<]*)</path>", pool.XMLDesc(0))
        if target and target.group(1).startswith(str(root)):
            found.append(pool)
    return found


@pytest.fixture
def host(inventory: Any, tmp_path: Path) -> Any:
    assert SAFE_PATH.fullmatch(str(tmp_path)), tmp_path
    yield inventory.host("node-a").model_copy(
        update={
            "datastore_path": str(tmp_path / "ds"),
            "vm_path": str(tmp_path / "vms"),
            "repository_path": str(tmp_path / "repo"),
        }
    )
    for pool in pools_under(tmp_path):  # leave the shared libvirtd as it was
        if pool.isActive():
            pool.destroy()


@pytest.fixture
def node(host: Any) -> Any:
    transport = SSHTransport(host, connect_timeout=10)
    yield transport
    transport.close()


@pytest.fixture
def commands(host: Any, node: Any) -> CommandFiles:
    return CommandFiles(node, KvmDriver(host, node))


@pytest.fixture
def files(host: Any, commands: CommandFiles) -> LibvirtFiles:
    return LibvirtFiles(DirectoryPools(lambda: connect(host), host.name), commands)


@pytest.fixture
def master(tmp_path: Path) -> Path:
    path = tmp_path / "masters" / "m.qcow2"
    path.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def assert_disk_full(error: HostDiskFull, path: Path, host: str = "node-a") -> None:
    """Permanent, naming the file and its filesystem's free space (0: filled up)."""
    assert error.code == "HOST_DISK_FULL"
    assert not error.transient
    assert "no space left on device" in error.message.lower()
    assert error.path == str(path)
    assert error.free_bytes == free_bytes(path.parent)
    assert str(path) in error.hint
    assert f"{error.free_bytes} bytes" in error.hint
    assert "vclvirt retry" in error.hint
    assert error.host == host


@pytest.mark.parametrize("way", ["libvirt", "commands"])
def test_an_overlay_in_a_full_vm_path(way, files, commands, master, tmp_path):
    """The overlay cannot be created: HOST_DISK_FULL for it, no overlay file left; once
    space is freed the same call makes it."""
    writer = files if way == "libvirt" else commands
    vms = tmp_path / "vms"
    overlay = vms / "C_x.qcow2"
    with small_filesystem(vms):
        fill(vms)
        with pytest.raises(HostDiskFull) as caught:
            writer.create_overlay(str(master), "qcow2", str(overlay))
        assert_disk_full(caught.value, overlay)
        assert entries(vms) == []

        free_space(vms)
        writer.create_overlay(str(master), "qcow2", str(overlay))
        assert files.overlay_facts(str(overlay)) == OverlayFacts("qcow2", str(master), "qcow2")


@pytest.mark.parametrize("way", ["libvirt", "commands"])
def test_an_xml_copy_in_a_full_directory(way, files, commands, tmp_path):
    """The XML cannot be written: HOST_DISK_FULL, no file (whole, partial or zeros) left;
    once space is freed it is written whole."""
    writer = files if way == "libvirt" else commands
    xml_dir = tmp_path / "xml"
    path = xml_dir / "C_x.xml"
    data = b"<domain>" + b"x" * 20000 + b"</domain>"
    with small_filesystem(xml_dir):
        fill(xml_dir)
        with pytest.raises(HostDiskFull) as caught:
            writer.write(str(path), data)
        assert_disk_full(caught.value, path)
        assert entries(xml_dir) == []

        free_space(xml_dir)
        writer.write(str(path), data)
        assert path.read_bytes() == data


def test_a_master_copy_into_a_full_datastore(host, node, files, tmp_path):
    """The copy script over SSH runs out of space converting the master: HOST_DISK_FULL
    for the master, its .part removed; with a larger filesystem the same call copies it."""
    source = tmp_path / "repo" / IMAGE / f"{IMAGE}.qcow2"
    source.parent.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "16M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4M", str(source)],
        check=True,
        capture_output=True,
    )
    datastore = tmp_path / "ds"
    destination = datastore / f"{IMAGE}.qcow2"
    driver = KvmDriver(host, node)
    with small_filesystem(datastore, size="2M"):
        with pytest.raises(HostDiskFull) as caught:
            ensure_master(node, driver, host, IMAGE, files=files)
        assert_disk_full(caught.value, destination)
        assert caught.value.free_bytes > 0  # a copy can fail with some space left
        assert entries(datastore) == [f".{IMAGE}.lock"]  # the lock file; no .part

        resize(datastore, "64M")
        copied = ensure_master(node, driver, host, IMAGE, files=files)
        assert copied.copied and copied.path == str(destination)
        assert sorted(entries(datastore)) == sorted([f".{IMAGE}.lock", destination.name])


def test_a_snapshot_into_a_full_vm_path(tmp_path):
    """An internal snapshot is written into the overlay: with vm_path full, the
    server's snapshot_create fails with HOST_DISK_FULL naming the overlay; once
    space is freed it is taken."""
    host = local_host(tmp_path / "local")
    image = "linux-TestsSnapshotFull-654-v0"
    local_repository_image(host, image, data="1M")
    server = local_server(host)
    reservation = parse_reservation(
        make_reservation(9654, "tests-snapfull", image, image_id=654, host=host.name)
    )
    names = server.access.names(reservation)
    vms = Path(host.vm_dir)
    with small_filesystem(vms, size="2M"):
        server.load.pre_define(reservation)
        server.load.define(reservation, server.load.generate_xml(reservation)["xml"])
        conn = libvirt.open("qemu:///system")
        try:
            fill(vms)
            with pytest.raises(HostDiskFull) as caught:
                server.snapshots.create(reservation, "s1")
            assert_disk_full(caught.value, Path(names.overlay_path), host=host.name)

            free_space(vms)
            server.snapshots.create(reservation, "s1")
            domain = conn.lookupByName(names.domain)
            assert [s.getName() for s in domain.listAllSnapshots(0)] == ["s1"]
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(names.domain).undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                )
            conn.close()


def image_with_data(path: Path, data: str = "4M") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data}", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def test_a_capture_into_a_full_datastore(host, node, tmp_path):
    """Capture's flatten runs out of space in the datastore: HOST_DISK_FULL for the new
    master, no .part left."""
    disk = image_with_data(tmp_path / "vm" / "C_x.qcow2")
    datastore = tmp_path / "ds"
    master = datastore / f"{IMAGE}.qcow2"
    with small_filesystem(datastore, size="2M"):
        with pytest.raises(HostDiskFull) as caught:
            flatten_to_master(node, KvmDriver(host, node), host, str(disk), IMAGE, "<domain/>")
        assert_disk_full(caught.value, master)
        assert not [name for name in entries(datastore) if name.endswith(".part")]
        assert master.name not in entries(datastore)


def test_a_capture_published_into_a_full_repository_on_the_worker(host, node, tmp_path):
    """With the repository on the worker's machine, the master is fetched there by this
    process: its own write meets ENOSPC (inside the transport's output callback, or when
    the file is closed), reported as HOST_DISK_FULL for the repository copy, with no
    scratch file left."""
    master = image_with_data(tmp_path / "ds" / f"{IMAGE}.qcow2")
    worker_host = host.model_copy(update={"repository_location": "worker"})
    repository = tmp_path / "repo"
    target = repository / IMAGE / f"{IMAGE}.qcow2"
    with small_filesystem(repository, size="1M"):
        with pytest.raises(HostDiskFull) as caught:
            publish_to_repository(
                node, KvmDriver(host, node), worker_host, str(master), IMAGE, "<domain/>"
            )
        assert_disk_full(caught.value, target)
        assert sorted(p.name for p in (repository / IMAGE).iterdir()) == [
            f".{IMAGE}.lock",
            f"{IMAGE}.xml",  # written whole before the image
        ]


def test_a_write_of_this_process_into_a_full_filesystem(tmp_path):
    """The worker's own write (an OSError, not a command's output) is judged the same."""
    with small_filesystem(tmp_path / "fs") as directory:
        fill(directory)
        target = directory / "master.qcow2"
        with (
            pytest.raises(HostDiskFull) as caught,
            disk_full_judged(LocalTransport("node-a"), str(target)),
        ):
            target.write_bytes(b"x" * 100000)
        assert_disk_full(caught.value, target)
