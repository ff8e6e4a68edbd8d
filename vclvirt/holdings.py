"""What a run holds besides its lease: the computer's lock, with the fencing token its
host checks, and one of the host's operation slots; and the scope in which every command
and libvirt call on the host carries that token (node/fence.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
import structlog

from vclvirt.config.inventory import HostConfig
from vclvirt.hypervisor.connection import release_fenced
from vclvirt.locks import ResourceLock, RunOwner
from vclvirt.node import fence
from vclvirt.node.fence import HostFence
from vclvirt.recovery import LeaseKeeper
from vclvirt.state.slots import HostSlot

log = structlog.get_logger(__name__)

COMPUTER_LOCK_WAIT = 0.5  # a busy computer is waited for outside the worker slot


class RunHoldings:
    """The computer and host side of one run; renewed and released by its keeper."""

    def __init__(
        self,
        client: redis.Redis,
        keeper: LeaseKeeper,
        *,
        host: HostConfig,
        computer: str,
        owner: RunOwner,
        ttl: float,
    ) -> None:
        self.client, self.keeper = client, keeper
        self.host, self.computer, self.owner, self.ttl = host, computer, owner, ttl
        self.fence: HostFence | None = None
        self.held_by: str | None = None  # who has the computer, when we could not take it

    def take_computer(self) -> bool:
        """The computer's lock, and with it the fencing token its host checks."""
        lock = ResourceLock(
            self.client,
            f"computer:{self.host.name}:{self.computer}",
            self.owner,
            ttl=self.ttl,
            fenced=True,
        )
        if not lock.acquire(wait=COMPUTER_LOCK_WAIT):
            self.held_by = lock.held_by
            return False
        self.keeper.hold(lock)
        assert lock.token is not None
        self.fence = HostFence(
            self.host.name,
            f"{self.host.fence_dir}/{self.computer}",
            lock.token,
            self.owner.reservation_id,
        )
        log.info("computer_taken", fencing_token=lock.token)
        return True

    def take_host_slot(self) -> bool:
        """One of the host's operation slots, counted across all its workers; False when
        the host runs as many operations as it may (the run then waits outside the worker:
        a worker serving several hosts must not lend one host's processes to another's
        queue)."""
        limit = self.host.max_concurrent_loads
        slot = HostSlot(self.client, self.host.name, str(self.owner), limit=limit, ttl=self.ttl)
        if not slot.acquire():
            log.info("host_busy", limit=limit, holders=slot.holders())
            return False
        self.keeper.hold(slot)
        return True

    @contextmanager
    def behind_the_fence(self) -> Iterator[None]:
        """Every command and libvirt call on the host carries the computer's fencing token
        (operations that only read hold none); the run's fenced connections end with it."""
        try:
            if self.fence is None:
                yield
            else:
                with fence.holding(self.fence):
                    yield
        finally:
            release_fenced(self.host.name)
