"""images.files.LibvirtFiles against node-a's libvirtd over qemu+libssh, on real files in
this test's directories: the same results as the commands, with no SSH command at all;
files written or removed behind libvirt's back are seen; pools that vanish come back;
an operator's pool is used as it is, or left alone when inactive."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest

from vclvirt.hypervisor.connection import connect
from vclvirt.hypervisor.drivers.kvm import KvmDriver
from vclvirt.hypervisor.pools import POOL_PREFIX, DirectoryPools, pool_name
from vclvirt.images.files import CommandFiles, LibvirtFiles, OverlayFacts
from vclvirt.node.ssh import SSHTransport

SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/@-]*$")


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
    yield inventory.host("node-a").model_copy(update={"datastore_path": str(tmp_path / "ds")})
    for pool in pools_under(tmp_path):  # leave the shared libvirtd as it was
        persistent = pool.isPersistent()
        if pool.isActive():
            pool.destroy()
        if persistent:
            pool.undefine()


@pytest.fixture
def node(host: Any) -> Any:
    transport = SSHTransport(host, connect_timeout=10)
    yield transport
    transport.close()


@pytest.fixture
def files(host: Any, node: Any) -> LibvirtFiles:
    return LibvirtFiles(
        DirectoryPools(lambda: connect(host), host.name), CommandFiles(node, KvmDriver(host, node))
    )


def qemu_img(*argv: str) -> None:
    subprocess.run(["qemu-img", *argv], check=True, capture_output=True)


def info(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, check=True
    )
    return dict(json.loads(out.stdout))


def test_master_lookup_sees_files_written_and_removed_behind_libvirts_back(
    files: LibvirtFiles, node: SSHTransport, tmp_path: Path
) -> None:
    """A master copied in by other means is found (qcow2 or raw), one removed is not; a
    directory of that name is no master. No command runs."""
    directory = tmp_path / "ds"
    directory.mkdir()
    before = node.commands_run
    assert files.master_format(str(directory / "m.qcow2")) is None  # pool started, nothing
    qemu_img("create", "-q", "-f", "qcow2", str(directory / "m.qcow2"), "8M")
    qemu_img("create", "-q", "-f", "raw", str(directory / "r.qcow2"), "8M")
    (directory / "d.qcow2").mkdir()
    assert files.master_format(str(directory / "m.qcow2")) == "qcow2"
    assert files.master_format(str(directory / "r.qcow2")) == "raw"
    assert files.master_format(str(directory / "d.qcow2")) is None
    (directory / "m.qcow2").unlink()
    assert files.master_format(str(directory / "m.qcow2")) is None
    assert files.master_format(str(tmp_path / "nowhere" / "m.qcow2")) is None
    assert node.commands_run == before


def test_overlay_through_libvirt_is_what_qemu_img_create_makes(
    files: LibvirtFiles, node: SSHTransport, tmp_path: Path
) -> None:
    """Format, backing file and format, size, compat and mode as `qemu-img create -f qcow2
    -b M -F F`; created in a missing directory; replacing a file libvirt did not know."""
    master = tmp_path / "m.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(master), "64M")
    reference = tmp_path / "ref.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(master), "-F", "qcow2", str(reference))
    overlay = tmp_path / "vms" / "vm1_1-v0.qcow2"
    before = node.commands_run

    files.create_overlay(str(master), "qcow2", str(overlay))

    assert node.commands_run == before + 1  # the one mkdir of the missing directory
    ours, theirs = info(overlay), info(reference)
    for key in ("format", "virtual-size", "backing-filename", "backing-filename-format"):
        assert ours[key] == theirs[key], key
    assert ours["format-specific"]["data"]["compat"] == theirs["format-specific"]["data"]["compat"]
    assert oct(overlay.stat().st_mode & 0o777) == oct(reference.stat().st_mode & 0o777)
    assert files.overlay_facts(str(overlay)) == OverlayFacts("qcow2", str(master), "qcow2")

    other = tmp_path / "o.raw"
    qemu_img("create", "-q", "-f", "raw", str(other), "8M")
    overlay.unlink()  # now a file libvirt never saw, backed by another image
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(other), "-F", "raw", str(overlay))
    files.create_overlay(str(master), "qcow2", str(overlay))
    assert info(overlay)["backing-filename"] == str(master)
    files.create_overlay(str(master), "qcow2", str(overlay))  # over one libvirt knows
    assert info(overlay)["backing-filename"] == str(master)
    assert node.commands_run == before + 1


def test_remove_and_remove_matching_are_rm_f_of_regular_files(
    files: LibvirtFiles, node: SSHTransport, tmp_path: Path
) -> None:
    """Only regular files matching the glob directly in the directory go, including files
    libvirt never saw; remove tells whether there was a file; no command runs."""
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "vm1_1-v0.xml").write_text("x")
    before = node.commands_run
    assert files.remove_matching(str(xml), "vm1_*.xml") == [str(xml / "vm1_1-v0.xml")]
    for name in ("vm1_2-v0.xml", "vm10_1-v0.xml", "vm1_1-v0.txt"):
        (xml / name).write_text("x")  # behind libvirt's back
    (xml / "vm1_3-v0.xml").mkdir()
    assert files.remove_matching(str(xml), "vm1_*.xml") == [str(xml / "vm1_2-v0.xml")]
    left = sorted(p.name for p in xml.iterdir())
    assert left == ["vm10_1-v0.xml", "vm1_1-v0.txt", "vm1_3-v0.xml"]
    assert files.remove(str(xml / "vm10_1-v0.xml")) is True
    assert files.remove(str(xml / "vm10_1-v0.xml")) is False
    assert files.remove(str(xml / "vm1_3-v0.xml")) is False and (xml / "vm1_3-v0.xml").is_dir()
    assert files.remove_matching(str(tmp_path / "absent"), "*.xml") == []
    assert node.commands_run == before


def test_write_then_read_and_missing_files(files: LibvirtFiles, tmp_path: Path) -> None:
    """write creates the file (0644) with exactly the bytes, replacing an older one; read
    returns them, None for a missing file or directory."""
    path = tmp_path / "xml" / "vm1_1-v0.xml"
    files.write(str(path), b"<domain>one</domain>\n")
    files.write(str(path), b"<domain>two</domain>\n")
    assert path.read_bytes() == b"<domain>two</domain>\n"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert files.read(str(path)) == b"<domain>two</domain>\n"
    assert files.read(str(tmp_path / "xml" / "absent.xml")) is None
    assert files.read(str(tmp_path / "nowhere" / "absent.xml")) is None


def test_a_vanished_pool_is_started_again(files: LibvirtFiles, tmp_path: Path) -> None:
    """The transient pool gone (as after a libvirtd restart): the next call starts it again."""
    directory = tmp_path / "ds"
    directory.mkdir()
    qemu_img("create", "-q", "-f", "qcow2", str(directory / "m.qcow2"), "8M")
    assert files.master_format(str(directory / "m.qcow2")) == "qcow2"
    (pool,) = pools_under(tmp_path)
    assert pool.name() == pool_name(str(directory)) and pool.name().startswith(POOL_PREFIX)
    assert not pool.isPersistent()  # nothing left in the host's configuration
    pool.destroy()
    assert files.master_format(str(directory / "m.qcow2")) == "qcow2"
    assert [p.name() for p in pools_under(tmp_path)] == [pool_name(str(directory))]


def test_an_active_pool_of_the_operator_is_used_as_it_is(
    files: LibvirtFiles, tmp_path: Path
) -> None:
    """A directory already covered by an active pool: that pool is used, none is added."""
    directory = tmp_path / "ds"
    directory.mkdir()
    conn = libvirt.open("qemu:///system")
    name = f"perf-operator-{uuid.uuid4().hex[:8]}"
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{name}</name><target><path>{directory}</path></target></pool>"
    )
    pool.create()
    qemu_img("create", "-q", "-f", "qcow2", str(directory / "m.qcow2"), "8M")
    assert files.master_format(str(directory / "m.qcow2")) == "qcow2"
    assert [p.name() for p in pools_under(tmp_path)] == [name]
    assert pool.isActive() and pool.isPersistent()


def test_an_inactive_pool_of_the_operator_is_left_alone_and_commands_are_used(
    files: LibvirtFiles, node: SSHTransport, tmp_path: Path
) -> None:
    """A directory covered by a defined, inactive pool: vclvirt neither starts it nor adds
    its own; the files are handled with commands instead, with the same results."""
    xml = tmp_path / "xml"
    xml.mkdir()
    conn = libvirt.open("qemu:///system")
    name = f"perf-operator-{uuid.uuid4().hex[:8]}"
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{name}</name><target><path>{xml}</path></target></pool>"
    )
    before = node.commands_run
    files.write(str(xml / "vm1_1-v0.xml"), b"<domain/>\n")
    assert files.read(str(xml / "vm1_1-v0.xml")) == b"<domain/>\n"
    assert files.remove_matching(str(xml), "vm1_*.xml") == [str(xml / "vm1_1-v0.xml")]
    assert node.commands_run == before + 3
    assert not pool.isActive()
    assert [p.name() for p in pools_under(tmp_path)] == [name]
