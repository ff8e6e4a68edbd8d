"""Fault injection for the image copy tests: a `qemu-img` earlier in PATH than the real one.

Named as a fault, because what it stands for cannot be produced on demand: storage
that loses data under a write that reported success (`corrupt`), and a copy held
half-way while a test looks at the datastore (`pause`). A failing write is real:
`fsize` runs the real qemu-img under a file size limit, so it dies half-written
with EFBIG, as on a full disk.

Every other subcommand, and `convert` itself, is the real qemu-img. The shim works for
any code that runs `qemu-img` by name through a local transport (directly or inside a
`sh -c` script), so the tests that use it do not depend on how the copy is composed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.events import HUNG

_SHIM = r"""#!/bin/sh
# Test fault injection (tests/faults.py): the real qemu-img, with `convert` logged and,
# when the state directory says so, limited, corrupted after the fact or paused.
real=@REAL@
state=@STATE@
[ "$1" = convert ] || exec "$real" "$@"
for destination; do :; done
printf '%s\n' "$destination" >> "$state/converts"
if [ -e "$state/fsize" ]; then
    ulimit -f 2048  # 1 MiB in 512-byte blocks: the write fails half-way with EFBIG
fi
"$real" "$@"
status=$?
if [ $status -eq 0 ] && [ -e "$state/corrupt" ]; then
    size=$(stat -c %s "$destination")
    truncate -s $((size / 2)) "$destination"  # data lost after a write that succeeded
fi
if [ -e "$state/pause" ]; then
    touch "$state/paused.$$"
    while [ ! -e "$state/resume" ]; do sleep 0.02; done
fi
exit $status
"""


class QemuImgFaults:
    """Controls the shim; every method changes what the next `qemu-img convert` does."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        real = shutil.which("qemu-img")
        assert real, "qemu-img is not installed"
        self.state = directory / "state"
        self.state.mkdir(parents=True)
        bin_dir = directory / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "qemu-img"
        shim.write_text(_SHIM.replace("@REAL@", real).replace("@STATE@", str(self.state)))
        shim.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def converts(self) -> list[str]:
        """Destinations of the `qemu-img convert` runs so far, in order."""
        log = self.state / "converts"
        return log.read_text().splitlines() if log.exists() else []

    def fail_half_written(self) -> None:
        """The next converts die after writing 1 MiB (a real EFBIG)."""
        (self.state / "fsize").touch()

    def corrupt_output(self) -> None:
        """The next converts succeed, then lose the second half of what they wrote."""
        (self.state / "corrupt").touch()

    def pause(self) -> None:
        """The next converts write their whole output, then wait for resume()."""
        (self.state / "pause").touch()

    def paused(self) -> int:
        return len(list(self.state.glob("paused.*")))

    def wait_until_paused(self, count: int = 1) -> None:
        wait_for(lambda: self.paused() >= count, HUNG, f"{count} qemu-img convert to pause")

    def resume(self) -> None:
        (self.state / "resume").touch()

    def clear(self) -> None:
        """Back to the plain qemu-img (the log is kept)."""
        for flag in ("fsize", "corrupt", "pause"):
            (self.state / flag).unlink(missing_ok=True)
