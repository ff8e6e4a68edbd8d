"""The repository on a host: finding an image's directory, its size on disk and the size
its guest sees, with real find, stat and qemu-img on this machine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vclvirt.errors import ImageInvalid, InvalidInput
from vclvirt.images.repository import (
    RepositorySource,
    allocated_bytes,
    find_repository_image,
    image_size_bytes,
    virtual_size_bytes,
)
from vclvirt.node.local import LocalTransport
from vclvirt.node.transport import CommandResult

IMAGE = "linux-Foo-12-v1"


@pytest.fixture
def node() -> LocalTransport:
    return LocalTransport("kvm9")


def qcow2(path: Path, size: str = "5M") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def test_image_found_anywhere_under_its_directory(node, tmp_path):
    """The image's disk is found in a subdirectory of `<repository>/<image>/`."""
    disk = qcow2(tmp_path / IMAGE / "sub" / f"{IMAGE}.qcow2")
    (tmp_path / IMAGE / f"{IMAGE}.xml").write_text("<domain/>")
    assert find_repository_image(node, str(tmp_path), IMAGE, "kvm9") == RepositorySource(
        str(disk), "qcow2", (str(disk),)
    )


def test_symlinked_directory_and_symlinked_disk_are_followed(node, tmp_path):
    """The image directory and the disk may be symlinks (images linked in from elsewhere)."""
    real = qcow2(tmp_path / "elsewhere" / "disk.qcow2")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / f"{IMAGE}.qcow2").symlink_to(real)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / IMAGE).symlink_to(tmp_path / "store")
    found = find_repository_image(node, str(tmp_path / "repo"), IMAGE, "kvm9")
    assert found is not None
    assert found.path == f"{tmp_path}/repo/{IMAGE}/{IMAGE}.qcow2"


def test_no_directory_means_no_image(node, tmp_path):
    """Without `<repository>/<image>/` the image is not in the repository (None)."""
    assert find_repository_image(node, str(tmp_path), IMAGE, "kvm9") is None
    (tmp_path / IMAGE).write_text("a file, not a directory")
    assert find_repository_image(node, str(tmp_path), IMAGE, "kvm9") is None


def test_empty_directory_means_no_image(node, tmp_path):
    """A directory with no disk of the image is no image."""
    (tmp_path / IMAGE).mkdir()
    (tmp_path / IMAGE / "notes.txt").write_text("x")
    assert find_repository_image(node, str(tmp_path), IMAGE, "kvm9") is None


def test_two_disks_are_refused_naming_the_host(node, tmp_path):
    """Two disks of one rank raise ImageInvalid carrying the host's name."""
    qcow2(tmp_path / IMAGE / f"{IMAGE}.qcow2")
    qcow2(tmp_path / IMAGE / "b" / f"{IMAGE}.qcow2")
    with pytest.raises(ImageInvalid) as caught:
        find_repository_image(node, str(tmp_path), IMAGE, "kvm9")
    assert caught.value.host == "kvm9"
    assert caught.value.message.startswith(f"several files could be image {IMAGE}: ")
    assert caught.value.hint == "Keep exactly one disk per image in the repository directory"


def test_relative_repository_path_is_refused(node):
    """A repository path that is not absolute is refused before any command runs."""
    with pytest.raises(InvalidInput) as caught:
        find_repository_image(node, "repo", IMAGE, "kvm9")
    assert caught.value.message == "repository path 'repo' is not absolute"
    assert caught.value.host == "kvm9"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/etc"])
def test_image_name_that_is_no_file_name_is_refused(node, tmp_path, name):
    """An image name that would leave `<repository>/` (or is empty) is refused."""
    with pytest.raises(InvalidInput) as caught:
        find_repository_image(node, str(tmp_path), name, "kvm9")
    assert caught.value.message == f"image name {name!r} is not a file name"
    assert caught.value.host == "kvm9"


def test_allocated_bytes_count_blocks_on_disk_of_every_file(node, tmp_path):
    """Allocated size is the blocks each file uses (a sparse file counts what it holds),
    summed, symlinks followed."""
    written = tmp_path / "written"
    written.write_bytes(os.urandom(300_000))
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as file:
        file.truncate(50 * 2**20)
    link = tmp_path / "link"
    link.symlink_to(written)
    expected = sum(os.stat(p).st_blocks * 512 for p in (written, sparse, written))
    assert allocated_bytes(node, [str(written), str(sparse), str(link)]) == expected
    assert expected < 50 * 2**20
    source = RepositorySource(str(written), None, (str(written), str(sparse)))
    assert image_size_bytes(node, source) == expected - os.stat(written).st_blocks * 512


def test_virtual_size_is_what_qemu_img_reads(node, tmp_path):
    """The virtual size is qemu-img's, read with the format hint when there is one."""
    disk = qcow2(tmp_path / "d.qcow2", "7M")
    assert virtual_size_bytes(node, RepositorySource(str(disk), "qcow2", (str(disk),))) == 7 * 2**20
    assert virtual_size_bytes(node, RepositorySource(str(disk), None, (str(disk),))) == 7 * 2**20
    # read as raw, the qcow2 file is just its bytes: the hint is passed to qemu-img
    as_raw = virtual_size_bytes(node, RepositorySource(str(disk), "raw", (str(disk),)))
    assert disk.stat().st_size <= as_raw < disk.stat().st_size + 512 < 7 * 2**20  # sectors


def test_unreadable_image_is_invalid_with_qemu_img_error(node, tmp_path):
    """qemu-img failing on the file raises ImageInvalid with its error and the host."""
    missing = str(tmp_path / "missing.qcow2")
    with pytest.raises(ImageInvalid) as caught:
        virtual_size_bytes(node, RepositorySource(missing, "qcow2", (missing,)))
    assert caught.value.message.startswith(f"qemu-img info {missing} failed: ")
    assert "missing.qcow2" in caught.value.message.split("failed: ", 1)[1]
    assert caught.value.host == "kvm9"


class _Answering:
    """A host whose qemu-img answers the given JSON."""

    host_name = "kvm9"

    def __init__(self, answer: dict[str, object]) -> None:
        self.answer = answer

    def run(self, argv, **kwargs) -> CommandResult:
        return CommandResult(tuple(argv), 0, json.dumps(self.answer).encode(), b"")


@pytest.mark.parametrize("answer", [{}, {"virtual-size": "5"}, {"virtual-size": None}])
def test_no_virtual_size_in_the_answer_is_invalid(answer):
    """An answer of qemu-img without an integer virtual-size raises ImageInvalid."""
    source = RepositorySource("/r/i.qcow2", "qcow2", ("/r/i.qcow2",))
    with pytest.raises(ImageInvalid) as caught:
        virtual_size_bytes(_Answering(answer), source)  # type: ignore[arg-type]
    assert caught.value.message == "qemu-img info /r/i.qcow2 reports no virtual size"
    assert caught.value.host == "kvm9"


class _Failing:
    """A host whose qemu-img fails with the given error output."""

    host_name = "kvm9"

    def __init__(self, stderr: bytes) -> None:
        self.stderr = stderr

    def run(self, argv, **kwargs) -> CommandResult:
        return CommandResult(tuple(argv), 1, b"", self.stderr)


def test_qemu_img_error_is_shown_decoded_and_cut_to_its_last_500_characters():
    """Undecodable bytes become U+FFFD; only the last 500 characters of the error are kept."""
    source = RepositorySource("/r/i.qcow2", "qcow2", ("/r/i.qcow2",))
    stderr = b"x" * 600 + b"\xff" + b"y" * 498 + b"\n"
    with pytest.raises(ImageInvalid) as caught:
        virtual_size_bytes(_Failing(stderr), source)  # type: ignore[arg-type]
    assert caught.value.message == "qemu-img info /r/i.qcow2 failed: x\ufffd" + "y" * 498
