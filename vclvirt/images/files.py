"""The files vclvirt keeps on a host beside libvirt's domains: masters (looked up),
overlays (checked, created, removed), the domain XML copies for operators and the
masters' reference XMLs (written, read, removed).

Two ways to reach them behind one interface:

- `LibvirtFiles`: storage pools and volumes on the already-open libvirt connection
  (hypervisor.pools), no SSH round trip. Used with every real libvirt driver.
- `CommandFiles`: commands through the host's Transport (qemu-img, rm, find, cat), as
  vclvirt always did. Used with libvirt's test driver (its pools live in memory and see
  no files) and for a directory covered by a pool the operator keeps inactive.

Both keep the same rules: a removal is `rm -f` of one regular file, an overlay is
replaced as a whole, paths are absolute and validated before they get here. A write
that fails leaves no part of its file behind, and one that fails for want of space
raises HostDiskFull naming the file (images.space).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol, TypeVar

import libvirt
import structlog

from vclvirt.errors import CommandFailed, ImageInvalid, VclvirtError
from vclvirt.hypervisor import pools
from vclvirt.hypervisor.drivers import HypervisorDriver
from vclvirt.hypervisor.pools import DirectoryMissing, DirectoryPools, PoolUnavailable
from vclvirt.images.space import disk_full_judged
from vclvirt.node.transport import Transport, write_file

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class OverlayFacts:
    """What decides whether an existing overlay is the right one."""

    format: str | None
    backing: str | None
    backing_format: str | None


class HostFiles(Protocol):
    """Files on one host, by absolute path."""

    def master_format(self, path: str) -> str | None:
        """Format of the regular file at exactly this path, or None. The fast path of the
        master search: None sends the caller on to the full (recursive) search."""
        ...

    def overlay_facts(self, path: str) -> OverlayFacts | None:
        """Format and backing file of the image at path, or None when there is none."""
        ...

    def create_overlay(self, master: str, master_format: str, overlay: str) -> None:
        """A new qcow2 at `overlay` backed by master (`-F` recorded), replacing any file
        there; its directory is created when missing."""
        ...

    def remove(self, path: str) -> bool:
        """`rm -f` of one regular file; True when there was one."""
        ...

    def remove_matching(self, directory: str, pattern: str) -> list[str]:
        """Remove the regular files directly in directory whose names match the glob
        (case-sensitive, like `find -maxdepth 1 -type f -name`); returns their paths."""
        ...

    def write(self, path: str, data: bytes) -> None:
        """Write the file (its directory created when missing)."""
        ...

    def read(self, path: str) -> bytes | None:
        """The file's content, or None when there is no such file."""
        ...

    def changed(self, directory: str) -> None:
        """Files in the directory were written by other means (a copy over SSH)."""
        ...


class CommandFiles:
    """Files through commands on the host's transport."""

    def __init__(self, node: Transport, driver: HypervisorDriver) -> None:
        self.node, self.driver = node, driver

    def master_format(self, path: str) -> str | None:
        return None  # the recursive search that follows finds it with one command

    def overlay_facts(self, path: str) -> OverlayFacts | None:
        try:
            info = self.driver.image_info(path)
        except (ImageInvalid, CommandFailed):
            return None
        return OverlayFacts(
            _text(info.get("format")),
            _text(info.get("backing-filename")),
            _text(info.get("backing-filename-format")),
        )

    def create_overlay(self, master: str, master_format: str, overlay: str) -> None:
        try:
            with disk_full_judged(self.node, overlay):
                self.driver.create_overlay(master, master_format, overlay)
        except VclvirtError:
            with suppress(VclvirtError):  # qemu-img leaves the header it could not finish
                self.remove(overlay)
            raise

    def remove(self, path: str) -> bool:
        return bool(self.node.run(["rm", "-f", "-v", "--", path]).stdout.strip())

    def remove_matching(self, directory: str, pattern: str) -> list[str]:
        found = self.node.run(
            [
                *("find", directory, "-maxdepth", "1", "-type", "f"),
                *("-name", pattern, "-print", "-delete"),
            ],
            check=False,  # a directory that does not exist holds nothing to remove
        )
        return sorted(line for line in found.text.splitlines() if line)

    def write(self, path: str, data: bytes) -> None:
        try:
            with disk_full_judged(self.node, path):
                write_file(self.node, path, data)
        except VclvirtError:
            with suppress(VclvirtError):  # write_file writes <path>.part, then renames it
                self.remove(f"{path}.part")
            raise

    def read(self, path: str) -> bytes | None:
        result = self.node.run(["cat", "--", path], check=False)
        return result.stdout if result.ok else None

    def changed(self, directory: str) -> None:
        pass

    def make_directory(self, directory: str) -> None:
        self.node.run(["mkdir", "-p", "--", directory])


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


class LibvirtFiles:
    """Files as volumes of the host's storage pools (see hypervisor.pools)."""

    def __init__(self, directory_pools: DirectoryPools, commands: CommandFiles) -> None:
        self.pools = directory_pools
        self.commands = commands
        self._warned: set[str] = set()

    def _use(
        self,
        directory: str,
        fn: Callable[[libvirt.virStoragePool], T],
        action: str,
        *,
        fallback: Callable[[], T],
        missing: T,
        make_directory: bool = False,
    ) -> T:
        try:
            try:
                return self.pools.call(directory, fn, action)
            except DirectoryMissing:
                if not make_directory:
                    return missing
            self.commands.make_directory(directory)
            return self.pools.call(directory, fn, action)
        except PoolUnavailable as why:
            if directory not in self._warned:
                self._warned.add(directory)
                log.warning(
                    "storage_pool_unavailable",
                    directory=directory,
                    reason=str(why),
                    hint="commands over SSH are used for this directory; start or "
                    "undefine the pool for loads without them",
                )
            return fallback()

    def master_format(self, path: str) -> str | None:
        directory, name = posixpath.split(path)

        def look(pool: libvirt.virStoragePool) -> str | None:
            found = pools.volume(pool, name)
            return found.format if found is not None and found.kind == "file" else None

        return self._use(
            directory,
            look,
            f"looking up {path}",
            fallback=lambda: self.commands.master_format(path),
            missing=None,
        )

    def overlay_facts(self, path: str) -> OverlayFacts | None:
        directory, name = posixpath.split(path)

        def look(pool: libvirt.virStoragePool) -> OverlayFacts | None:
            found = pools.volume(pool, name)
            if found is None or found.kind != "file":
                return None
            return OverlayFacts(found.format, found.backing, found.backing_format)

        return self._use(
            directory,
            look,
            f"reading {path}",
            fallback=lambda: self.commands.overlay_facts(path),
            missing=None,
        )

    def create_overlay(self, master: str, master_format: str, overlay: str) -> None:
        directory, name = posixpath.split(overlay)
        with disk_full_judged(self.commands.node, overlay):  # libvirt removes what it began
            self._use(
                directory,
                lambda pool: pools.create(
                    pool, name, pools.overlay_xml(name, master, master_format)
                ),
                f"creating overlay {overlay}",
                fallback=lambda: self.commands.create_overlay(master, master_format, overlay),
                missing=None,
                make_directory=True,
            )

    def remove(self, path: str) -> bool:
        directory, name = posixpath.split(path)
        return self._use(
            directory,
            lambda pool: pools.delete(pool, name),
            f"removing {path}",
            fallback=lambda: self.commands.remove(path),
            missing=False,
        )

    def remove_matching(self, directory: str, pattern: str) -> list[str]:
        def remove(pool: libvirt.virStoragePool) -> list[str]:
            matching = [n for n in pools.names(pool) if fnmatchcase(n, pattern)]
            return [posixpath.join(directory, n) for n in matching if pools.delete(pool, n)]

        return self._use(
            directory,
            remove,
            f"removing {pattern} from {directory}",
            fallback=lambda: self.commands.remove_matching(directory, pattern),
            missing=[],
        )

    def write(self, path: str, data: bytes) -> None:
        directory, name = posixpath.split(path)
        with disk_full_judged(self.commands.node, path):
            self._use(
                directory,
                lambda pool: pools.upload(pool, name, data),
                f"writing {path}",
                fallback=lambda: self.commands.write(path, data),
                missing=None,
                make_directory=True,
            )

    def read(self, path: str) -> bytes | None:
        directory, name = posixpath.split(path)
        return self._use(
            directory,
            lambda pool: pools.download(pool, name),
            f"reading {path}",
            fallback=lambda: self.commands.read(path),
            missing=None,
        )

    def changed(self, directory: str) -> None:
        self._use(
            directory,
            pools.refresh,
            f"refreshing the storage pool of {directory}",
            fallback=lambda: None,
            missing=None,
        )


def host_files(
    conn: libvirt.virConnect,
    host_name: str,
    connect: Callable[[], libvirt.virConnect],
    commands: CommandFiles,
) -> HostFiles:
    """LibvirtFiles for a real libvirt driver; CommandFiles for libvirt's test driver, whose
    storage pools are kept in memory and never see the host's files."""
    if str(conn.getType()).lower() == "test":
        return commands
    return LibvirtFiles(DirectoryPools(connect, host_name), commands)
