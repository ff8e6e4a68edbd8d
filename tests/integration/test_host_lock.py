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

from vclvirt.errors import ResourceBusy
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

    def __init__(self, node: SSHTransport, lock_path: str, wait: float = 60) -> None:
        super().__init__(daemon=True)
        self.node, self.lock_path, self.wait = node, lock_path, wait
        self.entered_at: float | None = None
        self.error: BaseException | None = None
        self.release = threading.Event()

    def run(self) -> None:
        try:
            with host_lock(self.node, self.lock_path, wait=self.wait):
                self.entered_at = time.monotonic()
                self.release.wait(30)
        except BaseException as error:  # reported by the test
            self.error = error


def test_second_holder_waits_until_the_first_block_exits(
    transports: list[SSHTransport], tmp_path: Path
) -> None:
    """B blocks while A holds the lock and enters within 2 s after A's block exits."""
    a, b = transports
    lock_path = str(tmp_path / "image.lock")
    with host_lock(a, lock_path, wait=30):
        contender = Contender(b, lock_path)
        contender.start()
        time.sleep(1.0)
        assert contender.entered_at is None and contender.error is None
    contender.join(timeout=0.1)
    deadline = time.monotonic() + 15
    while contender.entered_at is None and contender.error is None:
        assert time.monotonic() < deadline, "B never entered after A released the lock"
        time.sleep(0.05)
    assert contender.error is None
    contender.release.set()
    contender.join(timeout=10)


def test_lock_of_a_killed_process_is_released(
    transports: list[SSHTransport], host: Any, tmp_path: Path, testbed: Path
) -> None:
    """A holder process killed with SIGKILL loses the lock; another holder gets it in seconds."""
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
        time.sleep(1.0)
        assert contender.entered_at is None and contender.error is None
        os.kill(child.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        child.wait(timeout=10)
        deadline = killed_at + 10
        while contender.entered_at is None and contender.error is None:
            assert time.monotonic() < deadline, "lock of the killed holder was never released"
            time.sleep(0.05)
        assert contender.error is None
        assert contender.entered_at - killed_at < 5.0
        contender.release.set()
        contender.join(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_wait_timeout_raises_resource_busy(transports: list[SSHTransport], tmp_path: Path) -> None:
    """A holder that cannot get the lock within `wait` seconds gets ResourceBusy (transient)."""
    a, b = transports
    lock_path = str(tmp_path / "busy.lock")
    with host_lock(a, lock_path, wait=30):
        started = time.monotonic()
        with pytest.raises(ResourceBusy) as caught, host_lock(b, lock_path, wait=1):
            pytest.fail("entered a lock that another holder has")
        elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 5
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
