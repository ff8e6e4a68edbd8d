"""A guest for post_load and node_status that needs no boot: the test guest's userland
(busybox, as scripts/build-test-guest installs it) in a chroot, in a UTS namespace of
its own, so that `hostname` renames only this "guest", never the machine.

Commands reach it as SSH brings them to a real guest: the argv becomes one command
line (vclvirt's own `command_line`), which the guest's shell runs in root's home.
Root is not a stand-in for SSH: the SSH transport has its own tests; these are about
what post_load and guest_status do inside a guest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.conftest import wait_for
from tests.events import HUNG
from vclvirt.node.local import LocalProcess, LocalTransport
from vclvirt.node.transport import CommandResult, Readable, command_line


class NamespaceGuest:
    """Transport into the chroot `root`, inside the UTS namespace held by a `sleep`."""

    def __init__(self, root: Path, name: str = "tests-guest") -> None:
        busybox = shutil.which("busybox")
        assert busybox, "busybox is not installed (scripts/bootstrap installs busybox-static)"
        self.root = root
        self.host_name = name
        for directory in ("bin", "etc", "root", "tmp"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        subprocess.run(["chroot", str(root), "/bin/busybox", "--install", "-s", "/bin"], check=True)
        self._holder = subprocess.Popen(["unshare", "--uts", "sleep", "infinity"])
        own = os.readlink("/proc/self/ns/uts")

        def in_own_namespace() -> bool:
            assert self._holder.poll() is None, "unshare --uts failed"
            return os.readlink(f"/proc/{self._holder.pid}/ns/uts") != own

        wait_for(in_own_namespace, HUNG, "unshare to enter a new UTS namespace")
        self._local = LocalTransport(name)
        self.run(["hostname", "localhost"])

    def _inside(self, argv: Sequence[str]) -> list[str]:
        return [
            "nsenter",
            f"--target={self._holder.pid}",
            "--uts",
            "--",
            "chroot",
            str(self.root),
            "/bin/sh",
            "-c",
            f"cd /root && {command_line(argv)}",
        ]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 300.0,
        stdin: bytes | Readable | None = None,
        check: bool = True,
        on_output: Callable[[bytes], None] | None = None,
        keep_output: bool = True,
    ) -> CommandResult:
        done = self._local.run(
            self._inside(argv),
            timeout=timeout,
            stdin=stdin,
            check=False,
            on_output=on_output,
            keep_output=keep_output,
        )
        result = CommandResult(tuple(argv), done.exit_status, done.stdout, done.stderr)
        return result.check(self.host_name) if check else result

    def spawn(self, argv: Sequence[str]) -> LocalProcess:
        return self._local.spawn(self._inside(argv))

    def close(self) -> None:
        pass  # a connection would end here; the guest lives until stop()

    def stop(self) -> None:
        self._holder.kill()
        self._holder.wait()

    def file(self, path: str) -> Path:
        """A path in the guest (relative paths are in root's home), on this machine."""
        return self.root / (path.lstrip("/") if path.startswith("/") else f"root/{path}")
