"""Repository search on real VMware and qcow2 images made by qemu-img, run on this machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vclvirt.images.repository import (
    find_repository_image,
    image_size_bytes,
    virtual_size_bytes,
)
from vclvirt.node.local import LocalTransport

IMAGE = "linux-Foo-12-v1"
SIZE = 5 * 1024**3
GIB = 1024**3
# Two patterns: one at the start of the third 2 GiB extent, one straddling extents 1 and 2.
PATTERNS = [(0x42, 4 * GIB, 1024**2), (0x43, 2 * GIB - 512 * 1024, 1024**2)]


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def patterned_raw(path: Path) -> Path:
    """A sparse 5 GiB raw disk holding PATTERNS."""
    run("qemu-img", "create", "-q", "-f", "raw", str(path), str(SIZE))
    for byte, offset, length in PATTERNS:
        run("qemu-io", "-f", "raw", "-c", f"write -P {byte:#x} {offset} {length}", str(path))
    return path


def image_directory(repository: Path, name: str = IMAGE) -> Path:
    """`<repository>/<name>/` with the VMware config and reference XML beside the disk."""
    directory = repository / name
    directory.mkdir(parents=True)
    (directory / f"{name}.vmx").write_text('displayName = "x"\n')
    (directory / f"{name}.xml").write_text("<domain/>\n")
    return directory


def assert_patterns_survive_conversion(source_path: str, tmp_path: Path) -> None:
    """Converting source_path to qcow2 keeps PATTERNS and zeros elsewhere."""
    out = tmp_path / "out.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", source_path, str(out))
    for byte, offset, length in PATTERNS:
        result = run(
            "qemu-io", "-f", "qcow2", "-c", f"read -P {byte:#x} {offset} {length}", str(out)
        )
        assert "Pattern verification failed" not in result, result
    zeros = run("qemu-io", "-f", "qcow2", "-c", f"read -P 0 {3 * GIB} 65536", str(out))
    assert "Pattern verification failed" not in zeros, zeros


def apparent_size(paths: tuple[str, ...]) -> int:
    return sum(Path(path).stat().st_size for path in paths)


@pytest.mark.parametrize(
    ("subformat", "extents"),
    [
        ("twoGbMaxExtentSparse", ["-s001", "-s002", "-s003"]),
        ("twoGbMaxExtentFlat", ["-f001", "-f002", "-f003"]),
        ("monolithicFlat", ["-flat"]),
        ("monolithicSparse", []),
    ],
)
def test_vmware_image_converts_through_its_descriptor(
    tmp_path: Path, subformat: str, extents: list[str]
) -> None:
    """The descriptor is the source, its extents are its files, and data crosses extents."""
    raw = patterned_raw(tmp_path / "src.raw")
    repository = tmp_path / "repo"
    directory = image_directory(repository)
    descriptor = directory / f"{IMAGE}.vmdk"
    run(
        "qemu-img",
        "convert",
        "-O",
        "vmdk",
        "-o",
        f"subformat={subformat}",
        str(raw),
        str(descriptor),
    )
    raw.unlink()
    node = LocalTransport("local")

    source = find_repository_image(node, str(repository), IMAGE, "local")

    assert source is not None
    assert source.path == str(descriptor)
    assert source.format_hint == "vmdk"
    expected = [str(descriptor)] + [str(directory / f"{IMAGE}{e}.vmdk") for e in extents]
    assert sorted(source.files) == sorted(expected)
    assert sorted(p.name for p in directory.iterdir() if p.suffix == ".vmdk") == sorted(
        Path(p).name for p in expected
    )
    assert_patterns_survive_conversion(source.path, tmp_path)
    allocated = image_size_bytes(node, source)
    assert 0 < allocated <= apparent_size(source.files)
    assert virtual_size_bytes(node, source) == SIZE


def test_qcow2_is_chosen_over_a_stray_vmdk_and_a_later_revision(tmp_path: Path) -> None:
    """A plain qcow2 wins over a stray vmdk beside it and over `…-v10.qcow2`."""
    raw = patterned_raw(tmp_path / "src.raw")
    repository = tmp_path / "repo"
    directory = image_directory(repository)
    qcow2 = directory / f"{IMAGE}.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2))
    run("qemu-img", "create", "-q", "-f", "vmdk", str(directory / f"{IMAGE}.vmdk"), "1M")
    run("qemu-img", "create", "-q", "-f", "qcow2", str(directory / f"{IMAGE}0.qcow2"), "1M")
    node = LocalTransport("local")

    source = find_repository_image(node, str(repository), IMAGE, "local")

    assert source is not None
    assert (source.path, source.format_hint, source.files) == (str(qcow2), "qcow2", (str(qcow2),))
    assert_patterns_survive_conversion(source.path, tmp_path)
    allocated = image_size_bytes(node, source)
    assert 0 < allocated <= apparent_size(source.files)
    assert virtual_size_bytes(node, source) == SIZE


def test_linked_directory_and_image_are_followed(tmp_path: Path) -> None:
    """A symlinked image directory and a symlinked disk file are found; sizes follow links."""
    elsewhere = tmp_path / "nfs"
    elsewhere.mkdir()
    disk = elsewhere / "disk.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 1M", str(disk))
    (elsewhere / "image").mkdir()
    (elsewhere / "image" / f"{IMAGE}.qcow2").symlink_to(disk)
    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / IMAGE).symlink_to(elsewhere / "image")
    node = LocalTransport("local")

    source = find_repository_image(node, str(repository), IMAGE, "local")

    assert source is not None
    assert source.path == str(repository / IMAGE / f"{IMAGE}.qcow2")
    assert image_size_bytes(node, source) >= 1024**2
    assert virtual_size_bytes(node, source) == 16 * 1024**2


def test_missing_directory_or_other_revision_only_gives_none(tmp_path: Path) -> None:
    """No `<repository>/<image>/`, or one holding only `…-v10.qcow2`, gives None."""
    repository = tmp_path / "repo"
    node = LocalTransport("local")
    assert find_repository_image(node, str(repository), IMAGE, "local") is None
    directory = image_directory(repository)
    run("qemu-img", "create", "-q", "-f", "qcow2", str(directory / f"{IMAGE}0.qcow2"), "1M")
    assert find_repository_image(node, str(repository), IMAGE, "local") is None
