"""What lies on a host besides what the records say, as `vclvirt sweep` reads and removes
it: every domain with its disks, the files directly in vclvirt's directories with their
ages, and the removals — through the transport and libvirt only (never a local path),
argv and constant scripts only."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import structlog

from vclvirt.hypervisor import domains
from vclvirt.provisioning.access import HostAccess
from vclvirt.provisioning.cleanup import Cleanup

log = structlog.get_logger(__name__)

# Constant scripts: the directory, paths and numbers are positional arguments.
# The host's clock, then each regular file directly in $1 as "<mtime> <name>\0".
_LIST = r"""date +%s
[ -d "$1" ] || exit 0
exec find "$1" -mindepth 1 -maxdepth 1 -type f -printf '%T@ %f\0'"""
# Of the locks given, those a process holds now (an existing lock file is only opened).
_HELD = r"""for lock in "$@"; do
  [ -e "$lock" ] && ! flock -n "$lock" true && printf '%s\0' "$lock"
done
exit 0"""
# Remove the .part $1 only under its copy's lock $2 (taken at once or not at all: a copy
# that holds it is writing the file) and only if it is still older than $3 seconds.
_REMOVE_PART = r"""part=$1 lock=$2 grace=$3
command exec 9>>"$lock" || exit 74
flock -n 9 || exit 3
[ -f "$part" ] || exit 4
age=$(( $(date +%s) - $(stat -c %Y -- "$part") ))
[ "$age" -gt "$grace" ] || exit 4
rm -f -- "$part"
"""
PART_LOCKED, PART_NOT_STALE = 3, 4


@dataclass(frozen=True)
class HostFile:
    path: str
    age: float  # seconds since it last changed, by the host's clock


@dataclass(frozen=True)
class Listing:
    """A host's domains (name -> disk files), the files directly in its directories, and
    the datastore's `.part` files whose copy holds its lock now (being written)."""

    domains: dict[str, list[str]]
    files: list[HostFile]
    copying: frozenset[str] = frozenset()


def part_lock(part: str) -> str:
    """The lock a copy writing this `.part` holds (images.copy, images.master):
    `<dir>/.<image>.lock` for `<dir>/<image>.<ext>.part`."""
    directory, name = posixpath.split(part.removesuffix(".part"))
    return posixpath.join(directory, f".{posixpath.splitext(name)[0]}.lock")


class Leftovers:
    """Reading and removing, on one host, what `vclvirt sweep` judges."""

    def __init__(self, context: HostAccess, cleanup: Cleanup) -> None:
        self.ctx, self.cleanup = context, cleanup

    @property
    def directories(self) -> list[str]:
        host = self.ctx.host
        return sorted({host.datastore_path, host.vm_dir, host.xml_dir})

    def listing(self) -> Listing:
        found = []
        for directory in self.directories:
            found += self._files(directory)
        datastore = self.ctx.host.datastore_path
        parts = [f.path for f in found if f.path.endswith(".part")]
        locks = {part_lock(p): p for p in parts if posixpath.dirname(p) == datastore}
        held = self._held(sorted(locks)) if locks else set()
        return Listing(
            domains.disks_by_domain(self.ctx.conn, self.ctx.host.name),
            found,
            frozenset(locks[lock] for lock in held),
        )

    def _held(self, locks: list[str]) -> set[str]:
        out = self.ctx.node.run(["sh", "-c", _HELD, "sh", *locks]).stdout
        return {lock.decode(errors="surrogateescape") for lock in out.split(b"\0") if lock}

    def _files(self, directory: str) -> list[HostFile]:
        out = self.ctx.node.run(["sh", "-c", _LIST, "sh", directory]).stdout
        clock, _, entries = out.partition(b"\n")
        now, found = float(clock), []
        for entry in entries.split(b"\0"):
            stamp, _, name = entry.decode(errors="surrogateescape").partition(" ")
            if name:
                found.append(HostFile(posixpath.join(directory, name), now - float(stamp)))
        return found

    def is_overlay(self, path: str) -> bool:
        """A qcow2 backed by a file in the datastore, as create_overlay makes them: a
        master, or any other file that only looks like an overlay, is not one."""
        facts = self.ctx.files.overlay_facts(path)
        datastore = self.ctx.host.datastore_path.rstrip("/") + "/"
        return (
            facts is not None
            and facts.format == "qcow2"
            and facts.backing is not None
            and facts.backing.startswith(datastore)
        )

    def remove_domain(self, name: str, computer: str, keep: list[str]) -> list[str]:
        """The domain with its snapshots and own overlays (not those in `keep`); the
        files removed ([] when it is already gone)."""
        domain = domains.lookup(self.ctx.conn, name, self.ctx.host.name)
        return [] if domain is None else self.cleanup.delete_domain(domain, computer, keep)

    def remove_file(self, path: str) -> bool:
        return self.ctx.files.remove(path)

    def remove_part(self, part: str, grace: float) -> str:
        """'removed', or why it was left."""
        argv = ["sh", "-c", _REMOVE_PART, "sh", part, part_lock(part), str(int(grace))]
        result = self.ctx.node.run(argv, check=False)
        if result.exit_status == PART_LOCKED:
            return "left: a copy holds its lock"
        if result.exit_status == PART_NOT_STALE:
            return "left: gone, or changed since it was listed"
        result.check(self.ctx.host.name)
        self.ctx.files.changed(posixpath.dirname(part))
        return "removed"
