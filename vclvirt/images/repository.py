"""Which file in `<repository>/<image>/` becomes the host's master (VCL's layout).

`select_image_source` is the pure decision (tested by value); `find_repository_image`
lists the directory on the host and hands the paths to it. Unlike the reference, the
name must match exactly (`…-v1` never picks up `…-v10.qcow2`, VCL's prefix match did) and a
VMware descriptor replaces only its own extents, not a stray qcow2 beside it.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from vclvirt.errors import ImageInvalid, InvalidInput
from vclvirt.node.transport import Transport

# Files kept beside images that are never disks (compared with the lower-cased base name).
NOT_DISKS = (
    ".vmx",
    ".vmxf",
    ".vmsd",
    ".txt",
    ".xml",
    ".reference",
    ".part",
    ".lock",
    ".log",
    ".nvram",
)

# Extension -> format for qemu-img. `.img` is deliberately absent from the hint: it is
# as often a qcow2 (cloud images) as a raw file, so qemu-img detects it.
_FORMAT_OF_EXTENSION = {
    "qcow2": "qcow2",
    "raw": "raw",
    "vdi": "vdi",
    "vhdx": "vhdx",
    "qed": "qed",
    "vmdk": "vmdk",
}

# Preference when several disks exist for one image: lower wins; equal ranks are ambiguous.
_RANK_OF_EXTENSION = {
    "qcow2": 0,
    "raw": 1,
    "img": 1,
    "vdi": 2,
    "vhdx": 2,
    "qed": 2,
    "vmdk": 3,
}
_RANK_UNKNOWN = 4


def is_master_file(path: str) -> bool:
    """A file in a datastore that can be a master: a disk format vclvirt loads, by its
    extension (a key, a note or a lock beside the masters never answers for an image)."""
    extension = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return extension in _RANK_OF_EXTENSION  # so never one of NOT_DISKS


# VMware extents of `<image>.vmdk`: split sparse (-s001), split flat (-f001), flat (-flat).
_EXTENT_SUFFIX = re.compile(r"-(?:s\d{3}|f\d{3}|flat)\.vmdk")


@dataclass(frozen=True)
class RepositorySource:
    """What to convert into the master: `path` goes to qemu-img, `files` is all its data."""

    path: str
    format_hint: str | None
    files: tuple[str, ...]


@dataclass(frozen=True)
class _Candidate:
    rank: int
    source: RepositorySource | None  # None: VMware extents without their descriptor
    paths: tuple[str, ...]


def select_image_source(paths: Iterable[str], image_name: str) -> RepositorySource | None:
    """The image to convert among the files found under `<repository>/<image>/`, or None.

    Rules (base names compared case-insensitively; the result never depends on the
    order of `paths`):

    1. Non-disk files are ignored: base names ending in one of NOT_DISKS (`.vmx`,
       `.vmxf`, `.vmsd`, `.txt`, `.xml`, `.reference`, `.part`, `.lock`, `.log`,
       `.nvram`) and base names without an extension.
    2. A file belongs to the image only if its base name is exactly `<image>.<ext>`, or
       a VMware extent `<image>-sNNN.vmdk`, `<image>-fNNN.vmdk` or `<image>-flat.vmdk`
       (NNN = three digits). So image `…-v1` never takes `…-v10.qcow2` (another revision).
    3. VMware extents are read through their descriptor `<image>.vmdk` in the same
       directory: the source is the descriptor, its `files` the descriptor and those
       extents. Only extents are replaced by the descriptor (never an unrelated disk).
    4. When several disks exist, the format decides: qcow2 > raw/img > vdi, vhdx, qed >
       vmdk > any other extension (format_hint None, qemu-img detects it). So a stray
       `<image>.vmdk` beside `<image>.qcow2` is ignored.
    5. Two disks of the same rank (e.g. `I.qcow2` and `i.QCOW2`, or the same name in
       two subdirectories, or `I.vdi` and `I.vhdx`) raise ImageInvalid naming them;
       so do extents without a descriptor when they are the best choice, because
       qemu-img cannot read extents alone.

    format_hint comes from the extension; it is None for `.img` (raw and qcow2 both use
    it) and for unknown extensions.
    """
    candidates = _candidates(sorted(set(paths)), image_name.lower())
    if not candidates:
        return None
    best = min(c.rank for c in candidates)
    chosen = [c for c in candidates if c.rank == best]
    if len(chosen) > 1:
        names = ", ".join(p for c in chosen for p in c.paths)
        raise ImageInvalid(
            f"several files could be image {image_name}: {names}",
            hint="Keep exactly one disk per image in the repository directory",
        )
    (candidate,) = chosen
    if candidate.source is None:
        raise ImageInvalid(
            f"VMware extents of image {image_name} without their descriptor "
            f"{image_name}.vmdk: {', '.join(candidate.paths)}",
            hint="qemu-img reads extents only through the descriptor: restore it beside them",
        )
    return candidate.source


def _candidates(paths: list[str], image: str) -> list[_Candidate]:
    """One candidate per disk file, plus one per directory holding VMware extents."""
    disks: list[tuple[str, str]] = []  # (path, lower-case extension)
    extents: dict[str, list[str]] = {}  # directory -> extent paths
    for path in paths:
        base = posixpath.basename(path).lower()
        if base.endswith(NOT_DISKS):
            continue
        if base.startswith(f"{image}.") and len(base) > len(image) + 1:
            disks.append((path, base[len(image) + 1 :]))
        elif base.startswith(image) and _EXTENT_SUFFIX.fullmatch(base, len(image)):
            extents.setdefault(posixpath.dirname(path), []).append(path)

    candidates = []
    for path, extension in disks:
        rank = _RANK_OF_EXTENSION.get(extension, _RANK_UNKNOWN)
        files: tuple[str, ...] = (path,)
        if extension == "vmdk":
            files += tuple(extents.pop(posixpath.dirname(path), []))
        source = RepositorySource(path, _FORMAT_OF_EXTENSION.get(extension), files)
        candidates.append(_Candidate(rank, source, files))
    # Extents whose directory has no `<image>.vmdk` descriptor.
    for orphans in extents.values():
        candidates.append(_Candidate(_RANK_OF_EXTENSION["vmdk"], None, tuple(orphans)))
    return candidates


def find_repository_image(
    node: Transport, repository_path: str, image_name: str, host_name: str
) -> RepositorySource | None:
    """The image in `<repository>/<image>/` (searched recursively), or None if absent."""
    if not posixpath.isabs(repository_path):
        raise InvalidInput(f"repository path {repository_path!r} is not absolute", host=host_name)
    if image_name in ("", ".", "..") or "/" in image_name:
        raise InvalidInput(f"image name {image_name!r} is not a file name", host=host_name)
    directory = posixpath.join(repository_path, image_name)
    if node.run(["test", "-d", directory], check=False).exit_status != 0:
        return None
    # -xtype f: regular files and symlinks to them (images are often linked in from
    # elsewhere); -H: the image directory itself may be a symlink.
    listing = node.run(["find", "-H", directory, "-xtype", "f", "-print0"], timeout=120)
    paths = [path for path in listing.text.split("\0") if path]
    try:
        return select_image_source(paths, image_name)
    except ImageInvalid as error:
        error.with_context(host=host_name, reservation_id=None)
        raise


def image_size_bytes(node: Transport, source: RepositorySource) -> int:
    """Allocated (on-disk) bytes of all the image's files, symlinks followed."""
    return allocated_bytes(node, list(source.files))


def allocated_bytes(node: Transport, paths: list[str]) -> int:
    """Blocks on disk of the files (sparse files count what they use), symlinks followed."""
    result = node.run(["stat", "-L", "-c", "%b:%B", "--", *paths], timeout=60)
    total = 0
    for line in result.text.split():
        blocks, block_size = line.split(":")
        total += int(blocks) * int(block_size)
    return total


def virtual_size_bytes(node: Transport, source: RepositorySource) -> int:
    """The disk size the guest sees, as qemu-img reads it through `source.path`."""
    format_option = ["-f", source.format_hint] if source.format_hint else []
    result = node.run(
        ["qemu-img", "info", "-U", "--output=json", *format_option, source.path],
        check=False,
        timeout=120,
    )
    if not result.ok:
        raise ImageInvalid(
            f"qemu-img info {source.path} failed: "
            f"{result.stderr.decode(errors='replace').strip()[-500:]}",
            host=node.host_name,
        )
    size = json.loads(result.stdout).get("virtual-size")
    if not isinstance(size, int):
        raise ImageInvalid(
            f"qemu-img info {source.path} reports no virtual size", host=node.host_name
        )
    return size
