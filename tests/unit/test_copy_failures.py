"""Every failure branch of the verified copy (images/copy.py), forced one at a time with
the real sh, flock and qemu-img through the local transport, and what each leaves behind:
never a file under the destination's name, never a `.part` of ours, and the error that
says which step failed. Where the branch can only be reached by a qemu-img that
misbehaves (a converted file that is not qcow2, a `.part` qemu-img cannot read), a
`qemu-img` shim first in PATH stands in for it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.unit.test_copy_script import NODE, image, parts
from vclvirt.errors import CommandFailed, ImageInvalid
from vclvirt.images.copy import FROM_STDIN, Recheck, verified_copy
from vclvirt.images.repository import NOT_DISKS


def leftovers(directory: Path) -> list[str]:
    """Every entry under directory, relative (what a failed copy left behind)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_a_destination_directory_that_cannot_be_made_fails_27_and_writes_nothing(tmp_path):
    source = image(tmp_path / "src.qcow2")
    (tmp_path / "store").write_text("a file where the directory should be")
    with pytest.raises(CommandFailed, match=r"(?s)exit 27.*cannot create directory"):
        verified_copy(NODE, str(source), str(tmp_path / "store" / "img.qcow2"))
    assert leftovers(tmp_path) == ["src.qcow2", "store"]


def test_a_lock_file_that_cannot_be_opened_fails_27_before_any_copy(tmp_path):
    source = image(tmp_path / "src.qcow2")
    store = tmp_path / "store"
    (store / ".img.lock").mkdir(parents=True)  # a directory where the lock file goes
    with pytest.raises(CommandFailed, match=r"(?s)exit 27.*cannot open lock file"):
        verified_copy(
            NODE,
            str(source),
            str(store / "img.qcow2"),
            recheck=Recheck(str(store / ".img.lock"), "img", NOT_DISKS),
        )
    assert leftovers(store) == [".img.lock"]


def test_a_source_qemu_img_cannot_read_fails_20_naming_it(tmp_path):
    source = tmp_path / "src.qcow2"
    source.mkdir()  # not a file qemu-img can open
    store = tmp_path / "store"
    with pytest.raises(ImageInvalid, match=r"qemu-img info .*src\.qcow2 failed"):
        verified_copy(NODE, str(source), str(store / "img.qcow2"))
    assert leftovers(store) == []


def test_a_convert_that_cannot_write_its_part_fails_23_and_leaves_no_destination(tmp_path):
    source = image(tmp_path / "src.qcow2", data="1M")
    store = tmp_path / "store"
    (store / "img.qcow2.part").mkdir(parents=True)  # the .part cannot be created as a file
    with pytest.raises(CommandFailed, match=r"convert of .* failed \(exit 23\)"):
        verified_copy(NODE, str(source), str(store / "img.qcow2"))
    assert not (store / "img.qcow2").exists()


def test_a_stream_that_cannot_be_written_fails_23(tmp_path):
    store = tmp_path / "store"
    (store / "img.qcow2.part").mkdir(parents=True)
    with pytest.raises(CommandFailed, match=r"(?s)exit 23.*cannot write"):
        verified_copy(NODE, FROM_STDIN, str(store / "img.qcow2"), stdin=b"qcow2 bytes")
    assert not (store / "img.qcow2").exists()


def test_a_reference_xml_that_cannot_be_copied_fails_27_before_the_master_is_renamed(
    tmp_path,
):
    """The reference XML goes first, the master last: when the XML cannot be written the
    master is never renamed into place (a master without its XML would be loaded with a
    generic definition), and neither `.part` stays."""
    source = image(tmp_path / "src.qcow2", data="1M")
    (tmp_path / "src.xml").write_text("<domain/>\n")
    store = tmp_path / "store"
    with pytest.raises(CommandFailed, match=r"(?s)exit 27.*cannot copy .*src\.xml"):
        verified_copy(
            NODE,
            str(source),
            str(store / "img.qcow2"),
            source_xml=str(tmp_path / "src.xml"),
            destination_xml=str(tmp_path / "missing-dir" / "img.xml"),
        )
    assert leftovers(store) == []
    assert not (tmp_path / "missing-dir").exists()


SHIM = """#!/bin/sh
# tests/unit/test_copy_failures.py: the real qemu-img, but `convert` writes a file that is
# not qcow2 (mode raw), or `info` cannot read a .part (mode unreadable).
real=@REAL@
mode=@MODE@
for last; do :; done
if [ "$1" = convert ] && [ "$mode" = raw ]; then
  head -c 65536 /dev/zero > "$last"; exit 0
fi
if [ "$1" = info ] && [ "$mode" = unreadable ]; then
  case $last in *.part) echo "qemu-img: Could not open '$last'" >&2; exit 1 ;; esac
fi
exec "$real" "$@"
"""


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("raw", r"img\.qcow2\.part should be qcow2 but qemu-img reads it as raw"),
        ("unreadable", r"qemu-img info .*img\.qcow2\.part failed"),
    ],
)
def test_a_part_that_is_not_a_readable_qcow2_fails_and_is_removed(
    tmp_path, monkeypatch, mode, message
):
    real = shutil.which("qemu-img")
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "qemu-img"
    shim.write_text(SHIM.replace("@REAL@", real).replace("@MODE@", mode))
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    source = image(tmp_path / "src.qcow2", data="1M")
    store = tmp_path / "store"
    with pytest.raises(ImageInvalid, match=message):
        verified_copy(NODE, str(source), str(store / "img.qcow2"))
    assert leftovers(store) == [] and parts(tmp_path) == []
