"""An exclusive lock held on the host itself, which dies with its holder.

`flock` keeps the lock while its child (`cat`) waits on stdin; the child sees
end-of-file when our SSH channel closes, including when the worker is killed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from vclvirt.config.settings import COPY_TIMEOUT
from vclvirt.errors import ResourceBusy
from vclvirt.node import fence
from vclvirt.node.transport import Transport

_LOCKED = "locked"


@contextmanager
def host_lock(node: Transport, lock_path: str, *, wait: float = COPY_TIMEOUT) -> Iterator[None]:
    """Hold `flock -x lock_path` on the host for the duration of the block."""
    held = node.spawn(
        # A constant script; the lock path is an argument, quoted by the transport.
        ["flock", "-x", "-w", str(int(wait)), lock_path, "sh", "-c", f"echo {_LOCKED}; exec cat"]
    )
    try:
        line = held.read_line(timeout=wait + 30)
        if not line and fence.current(node.host_name):
            node.run(["true"])  # ended at once: Cancelled(Fenced) if the host refused us
        if line.strip() != _LOCKED:
            raise ResourceBusy(
                f"could not take lock {lock_path} within {wait:.0f}s", host=node.host_name
            )
        yield
    finally:
        held.close()
