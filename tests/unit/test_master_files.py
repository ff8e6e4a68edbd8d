"""Only files of the disk formats vclvirt loads answer for an image in a datastore: a key,
a note or a lock named `<image>.<something>` never does (#23: `vclvirt images size NAME`
answered for a key file in a subdirectory)."""

from __future__ import annotations

import pytest

from vclvirt.config.inventory import HostConfig
from vclvirt.images.master import find_master
from vclvirt.images.repository import is_master_file
from vclvirt.node.local import LocalTransport


@pytest.mark.parametrize(
    ("path", "master"),
    [
        ("/d/img.qcow2", True),
        ("/d/sub/img.QCOW2", True),
        ("/d/img.raw", True),
        ("/d/img.img", True),
        ("/d/img.vmdk", True),
        ("/d/img.key", False),
        ("/d/sub/img.pem", False),
        ("/d/img.xml", False),
        ("/d/img.qcow2.part", False),
        ("/d/img.lock", False),
        ("/d/img", False),
        ("qcow2", False),  # no extension at all, though the name is a format's
        ("/d/raw", False),
        ("/d/linux-Cent7.5-v0.qcow2", True),  # a dot in the name: the last one counts
        ("/d/v1.2/img.vmdk", True),
    ],
)
def test_only_disk_formats_are_master_files(path: str, master: bool) -> None:
    assert is_master_file(path) is master


def test_a_key_file_named_like_the_image_is_not_its_master(tmp_path) -> None:
    datastore = tmp_path / "images"
    (datastore / "keys").mkdir(parents=True)
    (datastore / "keys" / "linux-Lab-7-v0.key").write_text("-----BEGIN PRIVATE KEY-----")
    host = HostConfig(
        name="unit-host", address="127.0.0.1", transport="local", datastore_path=str(datastore)
    )
    node = LocalTransport(host.name)
    assert find_master(node, host, "linux-Lab-7-v0") is None
    (datastore / "linux-Lab-7-v0.qcow2").write_bytes(b"QFI\xfb")
    assert find_master(node, host, "linux-Lab-7-v0") == str(datastore / "linux-Lab-7-v0.qcow2")
