"""The load steps on node-a (SSH and libvirt over qemu+libssh, real files): a warm load
runs no host command and leaves what loads always left; pre_define's overlay rules;
remove_overlay; short-form domain names removed; the master search behind the fast path."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.conftest import make_reservation, repository_image
from tests.local_host import server_over
from vclvirt.errors import ImageInvalid
from vclvirt.hypervisor.drivers.kvm import KvmDriver
from vclvirt.images.files import LibvirtFiles
from vclvirt.images.master import MasterImage, ensure_master
from vclvirt.models import parse_reservation
from vclvirt.node.local import LocalTransport
from vclvirt.node.ssh import SSHTransport
from vclvirt.provisioning.host import Host


@pytest.fixture
def server(inventory: Any) -> Iterator[Host]:
    host = inventory.host("node-a")
    node = SSHTransport(host, connect_timeout=10)
    yield server_over(host, node)
    node.close()


def info(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, check=True
    )
    return dict(json.loads(out.stdout))


def qemu_io(path: Path, command: str) -> str:
    return subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(path)], capture_output=True, text=True
    ).stdout


def load(server: Host, r: Any) -> dict[str, Any]:
    """The load chain's steps, in order, as the task layer calls them."""
    server.status.check(r)
    server.cleanup.delete_existing_domains(r)
    server.load.pre_define(r)
    generated = server.load.generate_xml(r)
    server.load.define(r, generated["xml"])
    server.power.on(r)
    server.load.post_load(r)
    return generated


def test_warm_load_runs_no_host_command(
    testbed: Path, server: Host, cleanup_computers: list[str]
) -> None:
    """Master cached, this process warm: the whole load, its node_status and its unload run
    no command over SSH, and leave the overlay, XML copy and running domain as always."""
    image = "linux-PerfWarm-641-v0"
    repository_image(testbed, image)
    cleanup_computers.append("perf-warm")
    r = parse_reservation(make_reservation(96401, "perf-warm", image, image_id=641))
    load(server, r)  # the first load on the host copies the master
    node = server.access.node
    assert isinstance(node, SSHTransport)
    before = node.commands_run

    generated = load(server, r)
    ready = server.status.check(r)
    other = parse_reservation(
        {
            **r.model_dump(mode="json"),
            "image": {**r.image.model_dump(), "name": "linux-PerfOther-641-v0"},
        }
    )
    stale = server.status.check(other)
    vms, xml_dir = testbed / "hosts/node-a/vms", testbed / "hosts/node-a/xml"
    overlay, master = vms / "perf-warm_641-v0.qcow2", testbed / f"hosts/node-a/images/{image}.qcow2"
    found = info(overlay)
    written = (xml_dir / "perf-warm_641-v0.xml").read_text()
    running = libvirt.open("qemu:///system").lookupByName(generated["domain"]).isActive()
    unloaded = server.cleanup.delete_existing_domains(r)

    assert node.commands_run == before, "a warm load ran commands over SSH"
    assert (found["format"], found["backing-filename"], found["backing-filename-format"]) == (
        "qcow2",
        str(master),
        "qcow2",
    )
    assert written == generated["xml"] and running
    assert ready["status"] == "READY"
    assert stale["status"] == "RELOAD" and image in stale["reason"]
    assert unloaded == {"deleted_domains": [generated["domain"]], "removed_files": [str(overlay)]}
    assert not overlay.exists() and not (xml_dir / "perf-warm_641-v0.xml").exists()
    assert master.exists()


def test_pre_define_recreates_the_overlay_unless_told_to_reuse_it(
    testbed: Path, server: Host, cleanup_computers: list[str]
) -> None:
    """Through libvirt's pools: an existing overlay loses its data by default; with
    reuse_overlay the right overlay keeps it."""
    image = "linux-PerfReuse-642-v0"
    repository_image(testbed, image)
    cleanup_computers.append("perf-reuse")
    r = parse_reservation(make_reservation(96402, "perf-reuse", image, image_id=642))
    overlay = testbed / "hosts/node-a/vms/perf-reuse_642-v0.qcow2"
    assert server.load.pre_define(r)["overlay_created"] is True
    qemu_io(overlay, "write -P 0x66 0 64k")

    assert server.load.pre_define(r, reuse_overlay=True)["overlay_created"] is False
    assert "verification failed" not in qemu_io(overlay, "read -P 0x66 0 64k")
    assert server.load.pre_define(r)["overlay_created"] is True
    assert "verification failed" not in qemu_io(overlay, "read -P 0 0 64k")


def test_remove_overlay_only_when_no_domain_uses_it(
    testbed: Path, server: Host, cleanup_computers: list[str]
) -> None:
    """A defined domain on the overlay keeps everything; once it is gone, the overlay and the
    XML copy are removed and named."""
    image = "linux-PerfRemove-643-v0"
    repository_image(testbed, image)
    cleanup_computers.append("perf-remove")
    r = parse_reservation(make_reservation(96403, "perf-remove", image, image_id=643))
    server.load.pre_define(r)
    generated = server.load.generate_xml(r)
    server.load.define(r, generated["xml"])
    overlay = testbed / "hosts/node-a/vms/perf-remove_643-v0.qcow2"
    xml = testbed / "hosts/node-a/xml/perf-remove_643-v0.xml"

    assert server.cleanup.remove_overlay(r) == []
    assert overlay.exists() and xml.exists()
    libvirt.open("qemu:///system").lookupByName(generated["domain"]).undefine()
    assert server.cleanup.remove_overlay(r) == [str(overlay), str(xml)]
    assert not overlay.exists() and not xml.exists()
    assert (testbed / f"hosts/node-a/images/{image}.qcow2").exists()


LONG_COMPUTER = "perf-" + "l" * 45  # 50 characters: its domain names fall back to its id


@pytest.fixture
def id_named_domain(testbed: Path) -> Iterator[tuple[str, Path]]:
    """A domain named by a long-named computer's id, on an overlay written behind libvirt's
    back; removed afterwards whatever the test did."""
    conn = libvirt.open("qemu:///system")
    master = testbed / "hosts/node-a/images/linux-PerfLong-644-v0.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(master), "8M"], check=True)
    overlay = testbed / f"hosts/node-a/vms/{LONG_COMPUTER}_644-v0.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(master), "-F", "qcow2", str(overlay)],
        check=True,
    )
    conn.defineXML(
        f"<domain type='qemu'><name>964044</name><memory unit='MiB'>64</memory>"
        f"<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='qcow2'/><source file='{overlay}'/>"
        f"<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
    yield "964044", overlay
    with suppress(libvirt.libvirtError):
        conn.lookupByName("964044").undefine()
    overlay.unlink(missing_ok=True)
    master.unlink()


def test_unload_removes_a_domain_named_by_the_computers_id(
    testbed: Path, server: Host, id_named_domain: tuple[str, Path]
) -> None:
    """The 48-character rule named the domain by the computer's id: unload finds it and
    removes it with its overlay."""
    name, overlay = id_named_domain
    r = parse_reservation(
        make_reservation(96404, LONG_COMPUTER, "linux-PerfLong-644-v0", computer_id=964044)
    )
    result = server.cleanup.delete_existing_domains(r)
    assert result == {"deleted_domains": [name], "removed_files": [str(overlay)]}
    assert not overlay.exists()
    with pytest.raises(libvirt.libvirtError):
        libvirt.open("qemu:///system").lookupByName(name)


SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/@-]*$")


@pytest.fixture
def private_host(inventory: Any, tmp_path: Path) -> Iterator[Any]:
    """node-a with its datastore in this test's directory (pools removed afterwards)."""
    assert SAFE_PATH.fullmatch(str(tmp_path))
    (tmp_path / "ds").mkdir()
    yield inventory.host("node-a").model_copy(
        update={"datastore_path": str(tmp_path / "ds"), "repository_path": None}
    )
    conn = libvirt.open("qemu:///system")
    for pool in conn.listAllStoragePools(0):
        if str(tmp_path) in pool.XMLDesc(0) and not pool.isPersistent():
            pool.destroy()


def test_master_search_behind_the_fast_path(private_host: Any, tmp_path: Path) -> None:
    """Without `<image>.qcow2`, the recursive case-insensitive search still finds the master
    and still refuses two candidates; with it, the exact file wins at once."""
    host = private_host
    node = SSHTransport(host, connect_timeout=10)
    files = server_over(host, node).access.files
    driver, datastore = KvmDriver(host, node), tmp_path / "ds"
    try:
        (datastore / "sub").mkdir()
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "raw", str(datastore / "sub" / "IMG.RAW"), "8M"],
            check=True,
        )
        found = ensure_master(node, driver, host, "img", files=files)
        assert found == MasterImage(str(datastore / "sub" / "IMG.RAW"), "raw", copied=False)

        (datastore / "other").mkdir()
        (datastore / "other" / "img.vmdk").write_bytes(b"")
        with pytest.raises(ImageInvalid, match="several files could be the master of img"):
            ensure_master(node, driver, host, "img", files=files)

        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(datastore / "img.qcow2"), "8M"],
            check=True,
        )
        before = node.commands_run
        exact = ensure_master(node, driver, host, "img", files=files)
        assert exact == MasterImage(str(datastore / "img.qcow2"), "qcow2", copied=False)
        assert node.commands_run == before
    finally:
        node.close()


def test_host_with_local_transport_uses_storage_pools_too(
    private_host: Any, tmp_path: Path
) -> None:
    """transport = "local" on qemu:///system (a worker on the host itself): the same files
    through the same pools, and a load and unload that leave nothing behind."""
    (tmp_path / "vms").mkdir()
    host = private_host.model_copy(
        update={
            "name": "perf-local",
            "transport": "local",
            "libvirt_uri": None,
            "key_file": None,
            "known_hosts": None,
            "vm_path": str(tmp_path / "vms"),
            "xml_dir": str(tmp_path / "xml"),
        }
    )
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            str(tmp_path / "ds" / "linux-PerfLocal-646-v0.qcow2"),
            "8M",
        ],
        check=True,
    )
    node = LocalTransport(host.name)
    server = server_over(host, node)
    r = parse_reservation(
        make_reservation(96406, "perf-local", "linux-PerfLocal-646-v0", image_id=646)
    )
    try:
        assert host.effective_libvirt_uri == "qemu:///system"
        assert isinstance(server.access.files, LibvirtFiles)
        pre = server.load.pre_define(r)
        generated = server.load.generate_xml(r)
        server.load.define(r, generated["xml"])
        assert (tmp_path / "xml" / "perf-local_646-v0.xml").read_text() == generated["xml"]
        assert info(Path(pre["overlay"]))["backing-filename"] == pre["master"]
    finally:
        unloaded = server.cleanup.delete_existing_domains(r)
    assert unloaded["deleted_domains"] == [generated["domain"]]
    assert list((tmp_path / "vms").iterdir()) == [] and list((tmp_path / "xml").iterdir()) == []
