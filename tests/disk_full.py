"""A real full filesystem for tests: a small tmpfs mounted over a directory, filled up.

What runs out of space is the kernel's filesystem, so every writer (libvirtd's storage
pools, qemu-img, cat over SSH) meets the real ENOSPC, as on a host whose vm_path is full.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FILLER = "filler"


@contextmanager
def small_filesystem(directory: Path, size: str = "1M") -> Iterator[Path]:
    """A tmpfs of `size` mounted at directory (created if need be), unmounted afterwards;
    whatever the directory held is hidden while it is mounted, and back after."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        check=True,
        capture_output=True,
    )
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)  # still busy: detach


def fill(directory: Path) -> None:
    """Write `filler` until the filesystem has no byte left."""
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={directory / FILLER}", "bs=4096"],
        check=False,  # ends with "No space left on device", as meant
        capture_output=True,
    )
    assert free_bytes(directory) == 0


def free_space(directory: Path) -> None:
    """Remove the filler: the operator's "free space there"."""
    (directory / FILLER).unlink()


def free_bytes(directory: Path) -> int:
    out = subprocess.run(
        ["df", "-B1", "--output=avail", str(directory)], check=True, capture_output=True, text=True
    )
    return int(out.stdout.split()[-1])


def resize(directory: Path, size: str) -> None:
    """Grow the filesystem (more space freed than a filler held)."""
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(directory)], check=True, capture_output=True
    )


def entries(directory: Path) -> list[str]:
    """What the directory holds besides the filler: nothing half-written must be there."""
    return sorted(p.name for p in directory.iterdir() if p.name != FILLER)
