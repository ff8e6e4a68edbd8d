"""A full filesystem on a host, judged where the path being written is known.

"No space left on device" reaches vclvirt in many shapes: a libvirt error (qemu-img run
by a storage pool, a volume allocation), a command's error output (qemu-img convert,
cat, mkdir, cp), an OSError of this process's own writes. Wherever a file is written,
the writer wraps the write in `disk_full_judged(node, path)`: ENOSPC in any of those
shapes comes out as HostDiskFull (permanent: retrying frees no space), naming the path
and the space its filesystem has left, read on the host with `df`.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from vclvirt.errors import HostDiskFull, VclvirtError, says_no_space
from vclvirt.node.transport import Transport

# df needs an existing path: the nearest existing ancestor of the one being written
# (whose directory may be what could not be created).
_FREE = (
    'p=$1; while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done; exec df -B1 --output=avail -- "$p"'
)


def free_bytes(node: Transport, path: str) -> int | None:
    """Bytes available on the filesystem holding path, or None when the host does not
    tell (the error being reported matters more than this figure)."""
    try:
        result = node.run(["sh", "-c", _FREE, "sh", path], check=False, timeout=30)
    except VclvirtError:
        return None
    lines = result.text.split()
    if not result.ok or not lines or not lines[-1].isdigit():
        return None
    return int(lines[-1])


@contextmanager
def disk_full_judged(node: Transport, path: str) -> Iterator[None]:
    """ENOSPC raised inside the block, in whatever shape, becomes HostDiskFull for path."""
    host: str | None
    reservation_id: int | None
    try:
        yield
    except OSError as error:  # a write of this process (a repository on the worker's disk)
        if error.errno != errno.ENOSPC:
            raise
        message, host, reservation_id = f"writing {path}: {error}", None, None
    except VclvirtError as error:
        if isinstance(error, HostDiskFull) and error.path is not None:
            raise  # judged already, by a writer closer to the file
        if not isinstance(error, HostDiskFull) and not says_no_space(error.message):
            raise
        message, host, reservation_id = error.message, error.host, error.reservation_id
    else:
        return
    raise HostDiskFull(
        message,
        path=path,
        free_bytes=free_bytes(node, path),
        host=host or node.host_name,
        reservation_id=reservation_id,
    )
