"""host_lock on node-a over real SSH: exclusive, released with its block or its dead holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SSH_PORT_A, wait_for
from tests.events import HUNG, finishes, wait_for_lock_waiters
from tests.outages import cut_connection
from vclvirt.errors import NodeUnreachable, ResourceBusy
from vclvirt.node.host_lock import host_lock
from vclvirt.node.ssh import SSHTransport

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def host(inventory: Any) -> Any:
    return inventory.host("node-a")


@pytest.fixture
def transports(host: Any) -> Any:
    nodes = [SSHTransport(host, connect_timeout=10) for _ in range(2)]
    yield nodes
    for node in nodes:
        node.close()


class Contender(threading.Thread):
    """Takes the lock in a thread and records when it got in."""

    def __init__(self, node: SSHTransport, lock_path: str, wait: float = 600) -> None:
        super().__init__(daemon=True)
        self.node, self.lock_path, self.wait = node, lock_path, wait
        self.entered_at: float | None = None
        self.error: BaseException | None = None
        self.release = threading.Event()

    def run(self) -> None:
        try:
            with host_lock(self.node, self.lock_path, wait=self.wait):
                self.entered_at = time.monotonic()
                self.release.wait(HUNG)
        except BaseException as error:  # reported by the test
            self.error = error

    def inside_too_early(self) -> str | None:
        """While another holder has the lock: why this one is wrong, if it is."""
        if self.entered_at is not None:
            return "entered a lock that another holder has"
        return f"failed instead of queueing: {self.error!r}" if self.error else None


def test_second_holder_waits_until_the_first_block_exits(
    transports: list[SSHTransport], tmp_path: Path
) -> None:
    """B queues for the lock while A holds it (as the host's lock table shows) and enters
    once A's block exits."""
    a, b = transports
    lock_path = str(tmp_path / "image.lock")
    with host_lock(a, lock_path, wait=30):
        contender = Contender(b, lock_path)
        contender.start()
        wait_for_lock_waiters(tmp_path, 1, unless=contender.inside_too_early)
        assert contender.entered_at is None and contender.error is None
    wait_for(lambda: contender.entered_at or contender.error, HUNG, "B to enter the lock")
    assert contender.error is None
    contender.release.set()
    contender.join(timeout=HUNG)


def test_lock_of_a_killed_process_is_released(
    transports: list[SSHTransport], host: Any, tmp_path: Path, testbed: Path
) -> None:
    """A holder process killed with SIGKILL loses the lock; the holder queued behind it
    gets it (it would otherwise wait for 600 s, far past the test's deadline)."""
    lock_path = str(tmp_path / "killed.lock")
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from vclvirt.config.inventory import load_inventory
        from vclvirt.node.host_lock import host_lock
        from vclvirt.node.ssh import SSHTransport
        host = load_inventory(Path({str(testbed / "inventory.toml")!r})).host("node-a")
        with host_lock(SSHTransport(host), {lock_path!r}, wait=30):
            print("held", flush=True)
            time.sleep(120)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        contender = Contender(transports[1], lock_path)
        contender.start()
        wait_for_lock_waiters(tmp_path, 1, unless=contender.inside_too_early)
        assert contender.entered_at is None and contender.error is None
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=HUNG)
        wait_for(
            lambda: contender.entered_at or contender.error,
            HUNG,
            "the lock of the killed holder to pass to the next",
        )
        assert contender.error is None
        contender.release.set()
        contender.join(timeout=HUNG)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_wait_timeout_raises_resource_busy(transports: list[SSHTransport], tmp_path: Path) -> None:
    """A holder that cannot get the lock within `wait` seconds gets ResourceBusy (transient)
    after waiting that long, not at once and not for ever."""
    a, b = transports
    lock_path = str(tmp_path / "busy.lock")

    def take_b() -> None:
        with host_lock(b, lock_path, wait=1):
            pytest.fail("entered a lock that another holder has")

    with host_lock(a, lock_path, wait=30):
        started = time.monotonic()
        with pytest.raises(ResourceBusy) as caught:
            finishes(take_b, "host_lock(wait=1) on a held lock")
        elapsed = time.monotonic() - started
    assert elapsed >= 0.8  # it did wait (a lower bound: load only makes it longer)
    assert caught.value.transient
    assert caught.value.host == "node-a"
    assert lock_path in str(caught.value)


def test_lock_is_free_again_after_resource_busy(
    transports: list[SSHTransport], tmp_path: Path
) -> None:
    """After a holder gave up with ResourceBusy and A released, B can take the lock."""
    a, b = transports
    lock_path = str(tmp_path / "again.lock")
    with (
        host_lock(a, lock_path, wait=30),
        pytest.raises(ResourceBusy),
        host_lock(b, lock_path, wait=1),
    ):
        pass
    with host_lock(b, lock_path, wait=15):  # ResourceBusy if the lock were still held
        pass


def test_exception_in_the_block_releases_the_lock(
    transports: list[SSHTransport], tmp_path: Path
) -> None:
    """An exception leaving the block still releases the lock for the next holder."""
    a, b = transports
    lock_path = str(tmp_path / "raise.lock")
    with pytest.raises(RuntimeError), host_lock(a, lock_path, wait=5):
        raise RuntimeError("step failed")
    with host_lock(b, lock_path, wait=15):  # ResourceBusy if the lock were still held
        pass


def test_a_lock_lost_with_its_connection_stops_later_host_work(
    transports: list[SSHTransport], tmp_path: Path
) -> None:
    """The connection holding the lock is cut: the lock is gone on the host, so the next
    command in the block fails (NodeUnreachable, transient) instead of running on a new
    connection without it; after the block the transport reconnects as usual."""
    a, b = transports
    lock_path = str(tmp_path / "cut.lock")
    marker = tmp_path / "ran-without-the-lock"
    with pytest.raises(NodeUnreachable, match="held a host-side lock"), host_lock(a, lock_path):
        cut_connection(a, SSH_PORT_A)
        a.run(["touch", str(marker)])
    assert not marker.exists()
    with host_lock(b, lock_path, wait=15):  # the host released it with the connection
        pass
    assert a.run(["echo", "again"]).text == "again\n"
