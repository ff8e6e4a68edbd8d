"""Repository selection: VCL's cases, without its prefix match and stray-vmdk swap."""

from __future__ import annotations

import itertools
import random

import pytest

from vclvirt.errors import ImageInvalid
from vclvirt.images.repository import RepositorySource, select_image_source

IMAGE = "linux-Foo-12-v1"
DIR = f"/repo/{IMAGE}"


def at(*names: str) -> list[str]:
    return [f"{DIR}/{name}" for name in names]


def select(*names: str) -> RepositorySource | None:
    return select_image_source(at(*names), IMAGE)


def test_qcow2_beside_its_xml() -> None:
    """`{I.qcow2, I.xml}` gives I.qcow2 alone."""
    assert select(f"{IMAGE}.qcow2", f"{IMAGE}.xml") == RepositorySource(
        f"{DIR}/{IMAGE}.qcow2", "qcow2", (f"{DIR}/{IMAGE}.qcow2",)
    )


def test_split_sparse_vmdk_is_read_through_its_descriptor() -> None:
    """`{I.vmdk, I-s001.vmdk, I-s002.vmdk, I.vmx}` gives the descriptor, with both extents."""
    names = (f"{IMAGE}.vmdk", f"{IMAGE}-s001.vmdk", f"{IMAGE}-s002.vmdk", f"{IMAGE}.vmx")
    assert select(*names) == RepositorySource(f"{DIR}/{IMAGE}.vmdk", "vmdk", tuple(at(*names[:3])))


def test_monolithic_flat_vmdk_is_read_through_its_descriptor() -> None:
    """`{I.vmdk, I-flat.vmdk}` gives the descriptor, with the flat extent in files."""
    assert select(f"{IMAGE}.vmdk", f"{IMAGE}-flat.vmdk") == RepositorySource(
        f"{DIR}/{IMAGE}.vmdk", "vmdk", tuple(at(f"{IMAGE}.vmdk", f"{IMAGE}-flat.vmdk"))
    )


def test_split_flat_vmdk_is_read_through_its_descriptor() -> None:
    """2 GB split flat extents (`-f001`) belong to the descriptor too."""
    names = (f"{IMAGE}.vmdk", f"{IMAGE}-f001.vmdk", f"{IMAGE}-f002.vmdk")
    source = select(*reversed(names))
    assert source is not None
    assert (source.path, source.files) == (f"{DIR}/{IMAGE}.vmdk", tuple(at(*names)))


def test_single_vmdk() -> None:
    """`{I.vmdk}` gives I.vmdk."""
    assert select(f"{IMAGE}.vmdk") == RepositorySource(
        f"{DIR}/{IMAGE}.vmdk", "vmdk", (f"{DIR}/{IMAGE}.vmdk",)
    )


def test_later_revision_beside_is_not_taken() -> None:
    """Image `…-v1` takes its own qcow2 even when `…-v10.qcow2` is beside it."""
    source = select(f"{IMAGE}0.qcow2", f"{IMAGE}.qcow2", f"{IMAGE}x.qcow2")
    assert source is not None
    assert source.path == f"{DIR}/{IMAGE}.qcow2"


def test_later_revision_alone_is_not_taken() -> None:
    """Image `…-v1` finds nothing when only `…-v10.qcow2` and `…-v1x.qcow2` exist."""
    assert select(f"{IMAGE}0.qcow2", f"{IMAGE}x.qcow2", f"{IMAGE}0-s001.vmdk") is None


def test_later_revision_extents_are_not_taken() -> None:
    """Extents of `…-v10` do not join the descriptor of `…-v1`."""
    source = select(f"{IMAGE}.vmdk", f"{IMAGE}0-s001.vmdk", f"{IMAGE}-s0001.vmdk")
    assert source is not None
    assert source.files == (f"{DIR}/{IMAGE}.vmdk",)


def test_vmware_snapshot_deltas_are_not_extents() -> None:
    """VMware snapshot files `I-000001.vmdk` are neither the image nor its extents."""
    source = select(f"{IMAGE}.vmdk", f"{IMAGE}-000001.vmdk", f"{IMAGE}-000001-s001.vmdk")
    assert source is not None
    assert source.files == (f"{DIR}/{IMAGE}.vmdk",)


@pytest.mark.parametrize("name", [f"{IMAGE.upper()}.QCOW2", f"{IMAGE.lower()}.Qcow2"])
def test_names_match_in_any_case(name: str) -> None:
    """Image name and extension match case-insensitively; the path keeps its case."""
    assert select(name) == RepositorySource(f"{DIR}/{name}", "qcow2", (f"{DIR}/{name}",))


def test_extents_match_in_any_case() -> None:
    """`I.VMDK` with `i-S001.VMDK` is one VMware image."""
    source = select(f"{IMAGE}.VMDK", f"{IMAGE.lower()}-S001.VMDK")
    assert source is not None
    assert source.files == tuple(at(f"{IMAGE}.VMDK", f"{IMAGE.lower()}-S001.VMDK"))


@pytest.mark.parametrize(
    "suffix",
    [".vmx", ".vmxf", ".vmsd", ".txt", ".xml", ".reference", ".part", ".lock", ".log", ".nvram"],
)
def test_non_disk_files_are_excluded(suffix: str) -> None:
    """Files ending in a non-disk extension are never the image, whatever their case."""
    assert select(f"{IMAGE}{suffix}", f"{IMAGE}.qcow2{suffix.upper()}") is None


def test_names_without_extension_are_ignored() -> None:
    """A file named exactly like the image, with no extension, is ignored."""
    assert select(IMAGE, f"{IMAGE}.") is None


def test_extents_without_descriptor_are_invalid() -> None:
    """Extents alone raise ImageInvalid naming the missing descriptor."""
    with pytest.raises(ImageInvalid, match=rf"without their descriptor {IMAGE}\.vmdk"):
        select(f"{IMAGE}-s001.vmdk", f"{IMAGE}-s002.vmdk", f"{IMAGE}.vmx")


def test_descriptor_in_another_directory_does_not_adopt_extents() -> None:
    """Extents are read only through a descriptor in their own directory."""
    with pytest.raises(ImageInvalid) as raised:
        select(f"{IMAGE}.vmdk", f"old/{IMAGE}-flat.vmdk")
    assert f"{DIR}/old/{IMAGE}-flat.vmdk" in raised.value.message


def test_stray_vmdk_beside_qcow2_is_ignored() -> None:
    """`X.qcow2` with a stray `X.vmdk` gives the qcow2, not the vmdk."""
    source = select(f"{IMAGE}.vmdk", f"{IMAGE}.qcow2")
    assert source == RepositorySource(f"{DIR}/{IMAGE}.qcow2", "qcow2", (f"{DIR}/{IMAGE}.qcow2",))


def test_qcow2_wins_over_orphan_extents() -> None:
    """Extents without descriptor do not matter when a qcow2 is there."""
    source = select(f"{IMAGE}.qcow2", f"{IMAGE}-flat.vmdk")
    assert source is not None
    assert source.path == f"{DIR}/{IMAGE}.qcow2"


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        (["vmdk", "raw", "qcow2", "vdi"], "qcow2"),
        (["vmdk", "raw", "vdi"], "raw"),
        (["vmdk", "img"], "img"),
        (["vmdk", "vhdx"], "vhdx"),
        (["vmdk", "qed"], "qed"),
        (["iso", "vmdk"], "vmdk"),
    ],
)
def test_format_preference(extensions: list[str], expected: str) -> None:
    """qcow2 > raw/img > vdi, vhdx, qed > vmdk > unknown extensions."""
    source = select(*(f"{IMAGE}.{extension}" for extension in extensions))
    assert source is not None
    assert source.path == f"{DIR}/{IMAGE}.{expected}"


@pytest.mark.parametrize(
    ("extension", "hint"),
    [
        ("raw", "raw"),
        ("img", None),
        ("vdi", "vdi"),
        ("vhdx", "vhdx"),
        ("qed", "qed"),
        ("iso", None),
    ],
)
def test_format_hint_from_extension(extension: str, hint: str | None) -> None:
    """The hint names the format the extension promises; `.img` and unknown ones give None."""
    source = select(f"{IMAGE}.{extension}")
    assert source is not None
    assert source.format_hint == hint


@pytest.mark.parametrize(
    "names",
    [
        [f"{IMAGE}.qcow2", f"{IMAGE.lower()}.QCOW2"],
        [f"{IMAGE}.qcow2", f"old/{IMAGE}.qcow2"],
        [f"{IMAGE}.raw", f"{IMAGE}.img"],
        [f"{IMAGE}.vdi", f"{IMAGE}.vhdx"],
        [f"{IMAGE}.vmdk", f"{IMAGE.upper()}.vmdk", f"{IMAGE}-s001.vmdk"],
    ],
)
def test_two_candidates_of_one_rank_are_invalid(names: list[str]) -> None:
    """Two disks of the same preference raise ImageInvalid naming each of them."""
    with pytest.raises(ImageInvalid, match="several files") as raised:
        select(*names)
    for name in names[:2]:
        assert f"{DIR}/{name}" in raised.value.message


def test_nothing_found() -> None:
    """No file at all, or only non-disk files, gives None."""
    assert select() is None
    assert select(f"{IMAGE}.xml", f"{IMAGE}.vmx", "README") is None


def test_result_does_not_depend_on_order() -> None:
    """Every order of the same paths gives the same source (or the same error)."""
    names = at(
        f"{IMAGE}-s002.vmdk",
        f"{IMAGE}.vmdk",
        f"{IMAGE}.vmx",
        f"{IMAGE}-s001.vmdk",
        f"{IMAGE}0.qcow2",
        f"{IMAGE}.xml",
    )
    results = {select_image_source(order, IMAGE) for order in itertools.permutations(names)}
    assert results == {
        RepositorySource(
            f"{DIR}/{IMAGE}.vmdk",
            "vmdk",
            tuple(at(f"{IMAGE}.vmdk", f"{IMAGE}-s001.vmdk", f"{IMAGE}-s002.vmdk")),
        )
    }
    ambiguous = at(f"{IMAGE}.qcow2", f"b/{IMAGE}.QCOW2", f"a/{IMAGE}.qcow2")
    messages = set()
    for seed in range(10):
        random.Random(seed).shuffle(ambiguous)
        with pytest.raises(ImageInvalid) as raised:
            select_image_source(ambiguous, IMAGE)
        messages.add(raised.value.message)
    assert len(messages) == 1


def test_duplicate_paths_count_once() -> None:
    """The same path listed twice is one file, not two candidates (nor two files)."""
    assert select(f"{IMAGE}.qcow2", f"{IMAGE}.qcow2") == RepositorySource(
        f"{DIR}/{IMAGE}.qcow2", "qcow2", (f"{DIR}/{IMAGE}.qcow2",)
    )


def test_ambiguity_lists_every_candidate_comma_separated() -> None:
    """Two disks of one rank: the message lists both paths, `, ` between them."""
    with pytest.raises(ImageInvalid) as caught:
        select(f"{IMAGE}.vdi", f"{IMAGE}.vhdx")
    assert caught.value.message == (
        f"several files could be image {IMAGE}: {DIR}/{IMAGE}.vdi, {DIR}/{IMAGE}.vhdx"
    )


def test_orphan_extents_message_and_hint() -> None:
    """Extents without their descriptor: named, `, ` between them, with what to do."""
    with pytest.raises(ImageInvalid) as caught:
        select(f"{IMAGE}-s001.vmdk", f"{IMAGE}-s002.vmdk")
    assert caught.value.message == (
        f"VMware extents of image {IMAGE} without their descriptor {IMAGE}.vmdk: "
        f"{DIR}/{IMAGE}-s001.vmdk, {DIR}/{IMAGE}-s002.vmdk"
    )
    assert caught.value.hint == (
        "qemu-img reads extents only through the descriptor: restore it beside them"
    )


def test_one_letter_extension_is_a_disk_and_an_empty_one_is_not() -> None:
    """`I.x` is a disk of unknown format (qemu-img detects it); `I.` has no extension."""
    assert select(f"{IMAGE}.x") == RepositorySource(f"{DIR}/{IMAGE}.x", None, (f"{DIR}/{IMAGE}.x",))
    assert select(f"{IMAGE}.") is None
