"""The per-host master image: found in the datastore, or copied in from the repository.

One copy per host and image however many loads ask at once: the copy happens
under a lock on the host, the master is re-checked after the lock is taken, and
the file is written to `<name>.part`, verified, then renamed — so no load ever
sees a half-written master (fixes B1/B2 of the reference).
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import COPY_TIMEOUT
from vclvirt.errors import ImageInvalid, ImageNotFound
from vclvirt.hypervisor.drivers import HypervisorDriver
from vclvirt.hypervisor.drivers.kvm import KvmDriver
from vclvirt.images.copy import FROM_STDIN, CopyOutcome, Progress, Recheck, verified_copy
from vclvirt.images.files import HostFiles
from vclvirt.images.repository import (
    NOT_DISKS,
    RepositorySource,
    find_repository_image,
    is_master_file,
)
from vclvirt.images.space import disk_full_judged
from vclvirt.node.host_lock import host_lock
from vclvirt.node.local import LocalTransport
from vclvirt.node.transport import Transport, write_file

MASTER_FORMAT = "qcow2"


@dataclass(frozen=True)
class MasterImage:
    path: str
    format: str
    copied: bool
    bytes_written: int = 0


def _image_files(node: Transport, directory: str, image_name: str, *, recursive: bool) -> list[str]:
    """Files named `<image>.<ext>` (any case) under directory whose extension is a disk
    format vclvirt loads (is_master_file).
    Symlinks to files count as files: sites keep masters on another volume and link them
    in (-xtype f; -H: the directory itself may be a link)."""
    depth = [] if recursive else ["-maxdepth", "1"]
    result = node.run(
        ["find", "-H", directory, *depth, "-xtype", "f", "-iname", f"{image_name}.*"],
        timeout=120,
        check=False,  # a directory that does not exist yet holds no image
    )
    return sorted(path for path in result.text.splitlines() if path and is_master_file(path))


def _choose(paths: list[str], preferred: str, host: str, what: str) -> str | None:
    if not paths:
        return None
    if len(paths) == 1:
        return paths[0]
    if preferred in paths:
        return preferred
    raise ImageInvalid(
        f"several files could be the {what}: {', '.join(paths)}",
        host=host,
        hint="Remove the stray files so that exactly one remains",
    )


def find_master(node: Transport, host: HostConfig, image_name: str) -> str | None:
    """The master in the datastore (recursive, case-insensitive `<image>.*`), or None."""
    preferred = posixpath.join(host.datastore_path, f"{image_name}.{MASTER_FORMAT}")
    files = _image_files(node, host.datastore_path, image_name, recursive=True)
    return _choose(files, preferred, host.name, f"master of {image_name}")


def find_in_repository(
    node: Transport, host: HostConfig, image_name: str
) -> RepositorySource | None:
    """The image in `<repository>/<image>/` (see images.repository), or None. The
    repository is searched where it is: on the host, or on the worker's machine."""
    if not host.repository_path:
        return None
    return find_repository_image(
        repository_node(node, host), host.repository_path, image_name, host.name
    )


def repository_node(node: Transport, host: HostConfig) -> Transport:
    """Where the repository's files are: on the host (node), or on this machine — the
    one running the worker, API or CLI — with repository_location = "worker"."""
    return LocalTransport(host.name) if host.repository_location == "worker" else node


def ensure_master(
    node: Transport,
    driver: HypervisorDriver,
    host: HostConfig,
    image_name: str,
    progress: Progress | None = None,
    files: HostFiles | None = None,
) -> MasterImage:
    """Return the host's master for the image, copying it from the repository if absent.

    With `files`, `<datastore>/<image>.qcow2` is looked up there first (through libvirt,
    no command); the recursive search runs only when that exact file is absent."""
    destination = posixpath.join(host.datastore_path, f"{image_name}.{MASTER_FORMAT}")
    if files is not None:
        fmt = files.master_format(destination)
        if fmt is not None:
            return MasterImage(destination, fmt, copied=False)
    found = find_master(node, host, image_name)
    if found:
        return MasterImage(found, _format(driver, found), copied=False)
    source = find_in_repository(node, host, image_name)
    if source is None:
        searched = [f"{host.datastore_path}/**/{image_name}.*"]
        if host.repository_path:
            searched.append(f"{host.repository_path}/{image_name}/ (recursively)")
        raise ImageNotFound(
            f"image {image_name} not found; searched {', '.join(searched)}", host=host.name
        )
    lock = posixpath.join(host.datastore_path, f".{image_name}.lock")
    if host.repository_location == "worker":
        outcome = stream_from_worker(node, driver, host, source, destination, lock, progress)
    else:
        with disk_full_judged(node, destination):
            outcome = verified_copy(
                node,
                source.path,
                destination,
                source_format=source.format_hint,
                source_xml=posixpath.splitext(source.path)[0] + ".xml",
                destination_xml=posixpath.splitext(destination)[0] + ".xml",
                recheck=Recheck(lock, image_name, NOT_DISKS, wait=driver_timeout(driver)),
                progress=progress,
                timeout=driver_timeout(driver),
            )
    if outcome.found:  # another load copied it while this one waited for the lock
        files_found = sorted(p for p in outcome.found if is_master_file(p))
        chosen = _choose(files_found, destination, host.name, f"master of {image_name}")
        chosen = chosen or destination
        return MasterImage(chosen, _format(driver, chosen), copied=False)
    if files is not None:
        files.changed(host.datastore_path)
    return MasterImage(destination, MASTER_FORMAT, copied=True, bytes_written=outcome.bytes_written)


def _format(driver: HypervisorDriver, path: str) -> str:
    fmt = driver.image_info(path).get("format")
    if not isinstance(fmt, str):
        raise ImageInvalid(f"qemu-img cannot tell the format of {path}")
    return fmt


def write_verified_copy(
    node: Transport,
    driver: HypervisorDriver,
    source: str,
    destination: str,
    *,
    source_format: str | None = None,
    compat: str | None = None,
    progress: Progress | None = None,
) -> None:
    """Convert source to a standalone qcow2 at destination, visible only once verified
    (one command on the host, see images.copy)."""
    with disk_full_judged(node, destination):
        verified_copy(
            node,
            source,
            destination,
            source_format=source_format,
            compat=compat,
            progress=progress,
            timeout=driver_timeout(driver),
        )


def stream_from_worker(
    node: Transport,
    driver: HypervisorDriver,
    host: HostConfig,
    source: RepositorySource,
    destination: str,
    lock: str,
    progress: Progress | None = None,
) -> CopyOutcome:
    """A repository image on the worker's machine: sent as it is when it already is what
    the host needs (see _sendable), else converted here to a compact qcow2 (holes
    stay holes, split VMware images are read through their descriptor); then, under the
    image's lock on the host and unless another load copied it meanwhile, its reference XML
    written and the image streamed over the host's SSH connection to `<destination>.part`,
    verified on the host and renamed (one command, see images.copy)."""
    local = LocalTransport(host.name)
    local_driver = KvmDriver(host, local)
    local_driver.verify(source.path, source.format_hint)
    image_name = posixpath.splitext(posixpath.basename(destination))[0]
    with tempfile.TemporaryDirectory(prefix="vclvirt-stream-") as scratch:
        compact = source.path
        if not _sendable(source, local_driver.image_info(source.path)):
            compact = os.path.join(scratch, "image.qcow2")
            local_driver.convert(source.path, compact, MASTER_FORMAT)
        total = os.path.getsize(compact)
        with disk_full_judged(node, destination):  # the host's disk, not this machine's
            node.run(["mkdir", "-p", "--", host.datastore_path])
            with host_lock(node, lock, wait=driver_timeout(driver)):
                found = _image_files(node, host.datastore_path, image_name, recursive=True)
                if found:
                    return CopyOutcome(found=tuple(found))
                reference = os.path.splitext(source.path)[0] + ".xml"
                if os.path.exists(reference):
                    with open(reference, "rb") as xml:
                        xml_path = posixpath.splitext(destination)[0] + ".xml"
                        write_file(node, xml_path, xml.read())
                with open(compact, "rb") as data:
                    return verified_copy(
                        node,
                        FROM_STDIN,
                        destination,
                        stdin=_CountingReader(data, total, progress),
                        stdin_length=total,
                        timeout=driver_timeout(driver),
                    )


def _sendable(source: RepositorySource, info: dict[str, object]) -> bool:
    """A standalone qcow2 in one file with (almost) no holes is sent byte for byte: a
    conversion here would only copy it once more before the wire. An image with a
    backing file, in another format, in several files or sparse is converted first."""
    if info.get("format") != MASTER_FORMAT or "backing-filename" in info:
        return False
    if len(source.files) != 1:
        return False
    stat = os.stat(source.path)
    return stat.st_blocks * 512 >= 0.9 * stat.st_size


def driver_timeout(driver: HypervisorDriver) -> float:
    """How long a copy (or the wait for another one) may take on this host."""
    return float(getattr(driver, "copy_timeout", COPY_TIMEOUT))


class _CountingReader:
    """A file whose reads are reported as copy progress."""

    def __init__(self, data: BinaryIO, total: int, progress: Progress | None) -> None:
        self.data, self.total, self.progress, self.done = data, total, progress, 0

    def read(self, size: int = -1, /) -> bytes:
        chunk = self.data.read(size)
        self.done += len(chunk)
        if self.progress is not None:
            self.progress(self.done, self.total)
        return chunk
