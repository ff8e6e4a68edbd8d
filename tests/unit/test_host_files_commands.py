"""images.files.CommandFiles with the local transport and real qemu-img: the way to a host's
files when libvirt cannot see them (its test driver)."""

from __future__ import annotations

import subprocess

from vclvirt.config.inventory import HostConfig
from vclvirt.hypervisor.drivers.kvm import KvmDriver
from vclvirt.images.files import CommandFiles, OverlayFacts
from vclvirt.node.local import LocalTransport


def files(tmp_path) -> CommandFiles:
    host = HostConfig(
        name="h", address="127.0.0.1", transport="local", datastore_path=str(tmp_path)
    )
    node = LocalTransport("h")
    return CommandFiles(node, KvmDriver(host, node))


def test_overlay_created_replaced_and_described(tmp_path):
    """create_overlay makes (or replaces) a qcow2 backed by the master; overlay_facts reads
    its format and backing; a missing file has no facts. The fast master lookup defers to
    the search (None)."""
    master = tmp_path / "m.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(master), "8M"], check=True)
    overlay = tmp_path / "vms" / "vm1_1-v0.qcow2"
    f = files(tmp_path)
    assert f.overlay_facts(str(overlay)) is None
    f.create_overlay(str(master), "qcow2", str(overlay))
    assert f.overlay_facts(str(overlay)) == OverlayFacts("qcow2", str(master), "qcow2")
    f.create_overlay(str(master), "qcow2", str(overlay))  # over an existing file
    assert f.overlay_facts(str(overlay)) == OverlayFacts("qcow2", str(master), "qcow2")
    assert f.master_format(str(master)) is None


def test_remove_and_remove_matching_take_regular_files_only(tmp_path):
    """remove is `rm -f` telling whether there was a file; remove_matching removes the files
    matching the glob directly in the directory, not directories or other names."""
    for name in ("vm1_1-v0.xml", "vm1_2-v0.xml", "vm10_1-v0.xml", "vm1_1-v0.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "vm1_3-v0.xml").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "vm1_4-v0.xml").write_text("x")
    f = files(tmp_path)
    assert f.remove_matching(str(tmp_path), "vm1_*.xml") == [
        str(tmp_path / "vm1_1-v0.xml"),
        str(tmp_path / "vm1_2-v0.xml"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sub",
        "vm10_1-v0.xml",
        "vm1_1-v0.txt",
        "vm1_3-v0.xml",
    ]
    assert f.remove(str(tmp_path / "vm10_1-v0.xml")) is True
    assert f.remove(str(tmp_path / "vm10_1-v0.xml")) is False
    assert f.remove_matching(str(tmp_path / "absent"), "*.xml") == []


def test_write_and_read(tmp_path):
    """write creates the directory; read returns the bytes, None for a missing file."""
    f = files(tmp_path)
    f.write(str(tmp_path / "new" / "a.xml"), b"<domain/>\n")
    assert f.read(str(tmp_path / "new" / "a.xml")) == b"<domain/>\n"
    assert f.read(str(tmp_path / "new" / "b.xml")) is None
