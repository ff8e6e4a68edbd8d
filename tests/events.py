"""Waiting for events instead of sleeping "long enough".

A deadline here only ends a test that hangs: it is generous (a minute or more) and
never the thing a test measures.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import wait_for

T = TypeVar("T")

HUNG = 120.0  # seconds after which a call that should return is taken as hung


def finishes(call: Callable[[], T], what: str, deadline: float = HUNG) -> T:
    """Run call in a thread; return its result or raise its exception, or fail the test
    if it is still running after `deadline` seconds (the call hangs)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    thread = threading.Thread(target=run, name=f"finishes: {what}", daemon=True)
    thread.start()
    thread.join(deadline)
    if thread.is_alive():
        raise AssertionError(f"{what} still running after {deadline:g}s: it hangs")
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def _inodes_under(directory: Path) -> set[tuple[int, int, int]]:
    """(major, minor, inode) of every file and directory under directory, dotfiles too."""
    found = set()
    for parent, dirs, files in os.walk(directory):
        for name in [*dirs, *files, "."]:
            try:
                st = os.lstat(os.path.join(parent, name))
            except FileNotFoundError:
                continue  # removed while we looked
            found.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
    return found


def lock_waiters(directory: Path) -> int:
    """How many processes wait for a lock (flock or POSIX) on a file under directory.

    Read from /proc/locks, whose blocked requests are the lines marked `->`: this
    sees a holder queueing for a lock whatever command or library took it.
    """
    inodes = _inodes_under(directory)
    waiting = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" not in fields:
            continue
        device = fields[fields.index("->") + 5]
        major, minor, inode = device.split(":")
        if (int(major, 16), int(minor, 16), int(inode)) in inodes:
            waiting += 1
    return waiting


def wait_for_lock_waiters(
    directory: Path, count: int, *, unless: Callable[[], str | None] = lambda: None
) -> None:
    """Wait until `count` processes queue for a lock under directory.

    `unless` is checked on every poll: when it returns a message the wait fails at
    once with it (e.g. "a second copy started"), instead of running into the deadline.
    """

    def queued() -> bool:
        problem = unless()
        if problem:
            raise AssertionError(problem)
        return lock_waiters(directory) >= count

    wait_for(queued, HUNG, f"{count} holder(s) to queue for a lock under {directory}")


def pid_ended(pid: int) -> bool:
    """True once no process has this pid (for processes that are not our children)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
