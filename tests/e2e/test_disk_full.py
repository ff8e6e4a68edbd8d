"""A load on a host whose vm_path is full, through a real worker: it fails at once with
HOST_DISK_FULL (permanent, not retried for 15 minutes as a libvirt outage), naming the
overlay and the free space; nothing is left in vm_path; `vclvirt retry` succeeds once
space is freed.

vm_path is a real filesystem that is really full: a small tmpfs mounted over node-b's
vm_path (tests/disk_full.py), unmounted after the test's domains are gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.conftest import computer_domains, make_reservation, repository_image, vclvirt_cli
from tests.disk_full import entries, fill, free_space, small_filesystem
from vclvirt import dispatch
from vclvirt.naming import file_base_name

IMAGE = "linux-E2eDiskFull-653-v0"
COMPUTER = "e2e-full"


@pytest.fixture
def full_vm_path(testbed: Path) -> Iterator[Path]:
    """node-b's vm_path on a 4 MiB tmpfs with no byte free. Request it before start_worker
    and cleanup_computers: it is then torn down after them, once no QEMU holds a file."""
    with small_filesystem(testbed / "hosts/node-b/vms", size="4M") as vms:
        fill(vms)
        yield vms


def test_a_full_vm_path_fails_the_load_at_once_and_retry_works_once_space_is_freed(
    testbed, full_vm_path, cleanup_computers, start_worker
):
    repository_image(testbed, IMAGE)
    cleanup_computers.append(COMPUTER)
    start_worker("node-b")
    overlay = full_vm_path / f"{file_base_name(COMPUTER, 653, 0)}.qcow2"

    failed = dispatch.load(
        make_reservation(7653, COMPUTER, IMAGE, image_id=653, host="node-b")
    ).wait(120)

    assert (failed.state, failed.failed_step) == ("failed", "pre_define"), failed.to_dict()
    error = failed.error
    assert error is not None
    assert error["code"] == "HOST_DISK_FULL"
    assert error["transient"] is False
    assert error["path"] == str(overlay)
    assert error["free_bytes"] == 0
    assert str(overlay) in error["hint"] and "0 bytes free" in error["hint"]
    assert "no space left on device" in error["message"].lower()
    step = failed.step_records["pre_define"]
    assert step["attempt"] == 1
    assert "transient_failures" not in step  # failed at once, never retried
    assert entries(full_vm_path) == []  # no overlay, not even a partial one
    assert computer_domains(COMPUTER) == []
    shown = vclvirt_cli("status", "7653")
    assert "HOST_DISK_FULL" in shown.stdout and str(overlay) in shown.stdout

    free_space(full_vm_path)
    retried = vclvirt_cli("retry", "7653", "--wait", "--timeout", "180")

    assert retried.returncode == 0, retried.stdout + retried.stderr
    final = dispatch.status(7653)
    assert final is not None and final.state == "succeeded", final
    assert final.step_records["pre_define"]["state"] == "succeeded"
    assert final.history[-1]["error_code"] == "HOST_DISK_FULL"
    assert entries(full_vm_path) == [overlay.name]
    (name,) = computer_domains(COMPUTER)
    conn = libvirt.open("qemu:///system")
    try:
        assert conn.lookupByName(name).isActive()
    finally:
        conn.close()
