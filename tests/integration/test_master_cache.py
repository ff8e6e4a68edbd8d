"""ensure_master on node-a over SSH: one verified copy per host, never a partial file."""

from __future__ import annotations

import re
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from vclvirt.errors import ImageInvalid, ImageNotFound
from vclvirt.hypervisor.drivers.kvm import KvmDriver
from vclvirt.images.master import MasterImage, ensure_master, find_master
from vclvirt.node.ssh import SSHTransport

SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/@-]*$")


@pytest.fixture
def host(inventory: Any, tmp_path: Path) -> Any:
    """node-a with its datastore, vm and repository directories in this test's tmp dir."""
    assert SAFE_PATH.fullmatch(str(tmp_path)), tmp_path
    dirs = {name: tmp_path / name for name in ("datastore", "vms", "repository")}
    for path in dirs.values():
        path.mkdir()
    return inventory.host("node-a").model_copy(
        update={
            "datastore_path": str(dirs["datastore"]),
            "vm_path": str(dirs["vms"]),
            "repository_path": str(dirs["repository"]),
        }
    )


@pytest.fixture
def node(host: Any) -> Any:
    transport = SSHTransport(host, connect_timeout=10)
    yield transport
    transport.close()


def repo_image(host: Any, name: str, size: str = "16M", written: str | None = None) -> Path:
    directory = Path(host.repository_path) / name
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    if written:
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x33 0 {written}", str(path)],
            check=True,
            capture_output=True,
        )
    return path


def qemu_img_check(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", "check", "-U", path], capture_output=True, text=True)


def leftovers(host: Any) -> list[str]:
    return sorted(p.name for p in Path(host.datastore_path).iterdir() if p.name.endswith(".part"))


def test_copies_the_repository_image_and_its_reference_xml(node: Any, host: Any) -> None:
    """An uncached image is copied to `<datastore>/<image>.qcow2` with its XML, verified."""
    name = "linux-Cache-700-v0"
    source = repo_image(host, name, written="1M")
    source.with_suffix(".xml").write_text("<domain><name>reference</name></domain>\n")
    master = ensure_master(node, KvmDriver(host, node), host, name)
    expected = f"{host.datastore_path}/{name}.qcow2"
    assert replace(master, bytes_written=0) == MasterImage(expected, "qcow2", copied=True)
    assert qemu_img_check(expected).returncode == 0
    assert leftovers(host) == []
    xml = Path(host.datastore_path) / f"{name}.xml"
    assert xml.read_text() == "<domain><name>reference</name></domain>\n"


def test_second_call_finds_the_cached_master(node: Any, host: Any) -> None:
    """Once the master is in the datastore, ensure_master returns it without copying."""
    name = "linux-Cache-701-v0"
    repo_image(host, name)
    driver = KvmDriver(host, node)
    first = ensure_master(node, driver, host, name)
    mtime = Path(first.path).stat().st_mtime_ns
    second = ensure_master(node, driver, host, name)
    assert (first.copied, second.copied) == (True, False)
    assert second.path == first.path and second.format == "qcow2"
    assert Path(first.path).stat().st_mtime_ns == mtime


def test_missing_image_names_image_host_and_both_searched_paths(node: Any, host: Any) -> None:
    """An image in neither place raises ImageNotFound naming it, the host and both places."""
    name = "linux-Nowhere-702-v0"
    with pytest.raises(ImageNotFound) as caught:
        ensure_master(node, KvmDriver(host, node), host, name)
    text = str(caught.value)
    assert name in text
    assert "host node-a" in text and caught.value.host == "node-a"
    assert host.datastore_path in text
    assert f"{host.repository_path}/{name}" in text
    assert not caught.value.transient


def test_stray_part_file_is_never_taken_for_the_master(node: Any, host: Any) -> None:
    """A left-over `<image>.qcow2.part` is ignored: the master is copied from the repository."""
    name = "linux-Stray-703-v0"
    repo_image(host, name)
    stray = Path(host.datastore_path) / f"{name}.qcow2.part"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(stray), "1M"], check=True)
    assert find_master(node, host, name) is None
    master = ensure_master(node, KvmDriver(host, node), host, name)
    assert master.copied is True
    assert master.path == f"{host.datastore_path}/{name}.qcow2"


def test_stray_part_file_without_repository_copy_is_not_found(node: Any, host: Any) -> None:
    """With only a `.part` in the datastore and nothing in the repository: ImageNotFound."""
    name = "linux-Stray-704-v0"
    stray = Path(host.datastore_path) / f"{name}.qcow2.part"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(stray), "1M"], check=True)
    with pytest.raises(ImageNotFound):
        ensure_master(node, KvmDriver(host, node), host, name)


def test_revision_1_and_10_are_not_confused(node: Any, host: Any) -> None:
    """`-v1` and `-v10` masters in one datastore are each found as themselves."""
    datastore = Path(host.datastore_path)
    for revision in ("1", "10"):
        path = datastore / f"linux-Rev-705-v{revision}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    driver = KvmDriver(host, node)
    for revision in ("1", "10"):
        master = ensure_master(node, driver, host, f"linux-Rev-705-v{revision}")
        assert replace(master, bytes_written=0) == MasterImage(
            str(datastore / f"linux-Rev-705-v{revision}.qcow2"), "qcow2", copied=False
        )


def test_only_v10_cached_does_not_satisfy_v1(node: Any, host: Any) -> None:
    """With only `-v10` in the datastore, `-v1` is copied from the repository, not aliased."""
    datastore = Path(host.datastore_path)
    v10 = datastore / "linux-Rev-706-v10.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(v10), "1M"], check=True)
    repo_image(host, "linux-Rev-706-v1")
    master = ensure_master(node, KvmDriver(host, node), host, "linux-Rev-706-v1")
    assert replace(master, bytes_written=0) == MasterImage(
        str(datastore / "linux-Rev-706-v1.qcow2"), "qcow2", copied=True
    )


def test_concurrent_loads_copy_the_master_once(host: Any) -> None:
    """Six loads asking at once for an uncached image: one copies, all get the same valid path."""
    name = "linux-Race-707-v0"
    repo_image(host, name, size="256M", written="200M")
    barrier = threading.Barrier(6)
    nodes = [SSHTransport(host, connect_timeout=10) for _ in range(6)]

    def load(node: SSHTransport) -> MasterImage:
        node.run(["true"])  # connect before the race starts
        barrier.wait()
        return ensure_master(node, KvmDriver(host, node), host, name)

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(load, nodes))
    finally:
        for node in nodes:
            node.close()
    assert sum(r.copied for r in results) == 1
    assert {r.path for r in results} == {f"{host.datastore_path}/{name}.qcow2"}
    assert {r.format for r in results} == {"qcow2"}
    assert qemu_img_check(results[0].path).returncode == 0
    read = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0x33 0 200M", results[0].path],
        capture_output=True,
        text=True,
    )
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout
    assert leftovers(host) == []


def test_repository_image_with_a_short_header_is_rejected(node: Any, host: Any) -> None:
    """A repository qcow2 whose header is cut short: ImageInvalid, no master, no `.part`."""
    name = "linux-Corrupt-708-v0"
    source = repo_image(host, name)
    source.write_bytes(source.read_bytes()[:100])
    with pytest.raises(ImageInvalid):
        ensure_master(node, KvmDriver(host, node), host, name)
    assert not (Path(host.datastore_path) / f"{name}.qcow2").exists()
    assert leftovers(host) == []


def test_truncated_repository_image_is_rejected(node: Any, host: Any) -> None:
    """A repository qcow2 cut short after its data: ImageInvalid, no master, no `.part`."""
    name = "linux-Corrupt-709-v0"
    source = repo_image(host, name, size="64M", written="8M")
    source.write_bytes(source.read_bytes()[:300_000])
    assert qemu_img_check(str(source)).returncode != 0  # the source really is corrupt
    with pytest.raises(ImageInvalid):
        ensure_master(node, KvmDriver(host, node), host, name)
    assert not (Path(host.datastore_path) / f"{name}.qcow2").exists()
    assert leftovers(host) == []


def test_worker_side_repository_is_streamed_over_ssh_and_stays_sparse(node: Any, host: Any):
    """repository_location = "worker": a split VMware image on the worker's machine becomes
    a verified qcow2 master on the host, sent over the SSH connection without its holes."""
    worker_side = host.model_copy(update={"repository_location": "worker"})
    name = "linux-Streamed-710-v0"
    directory = Path(host.repository_path) / name
    directory.mkdir()
    raw = directory.parent / "scratch.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "3G"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 0x77 2G 8M", str(raw)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=twoGbMaxExtentSparse",
            str(raw),
            str(directory / f"{name}.vmdk"),
        ],
        check=True,
    )
    raw.unlink()
    (directory / f"{name}.xml").write_text("<domain><name>streamed</name></domain>\n")
    reported: list[tuple[int, int]] = []

    master = ensure_master(
        node,
        KvmDriver(worker_side, node),
        worker_side,
        name,
        progress=lambda done, total: reported.append((done, total)),
    )

    assert (master.path, master.copied) == (f"{host.datastore_path}/{name}.qcow2", True)
    assert qemu_img_check(master.path).returncode == 0
    read = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0x77 2G 8M", master.path],
        capture_output=True,
        text=True,
    )
    assert read.returncode == 0 and "verification failed" not in read.stdout
    assert master.bytes_written < 64 * 2**20  # 3 GiB virtual, 8 MiB of data: holes stayed holes
    assert reported and reported[-1][0] == reported[-1][1] < 64 * 2**20
    assert (Path(host.datastore_path) / f"{name}.xml").read_text().startswith("<domain>")
    assert leftovers(host) == []
