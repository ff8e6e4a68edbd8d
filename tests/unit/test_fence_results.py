"""What a fenced command's result means (vclvirt/node/fence.py `checked`): the command's
own result, or the wrapper's refusal, or the wrapper unable to write its own files."""

from __future__ import annotations

import pytest

from vclvirt.cancellation import Cancelled
from vclvirt.errors import CommandFailed, Fenced, HostDiskFull
from vclvirt.node.fence import REFUSED, UNWRITABLE, HostFence, checked
from vclvirt.node.transport import CommandResult

FENCE = HostFence("kvm01", "/var/lib/vclvirt/fence/vm1", 500, 77)
ARGV = ("virsh", "list")


def result(status: int, stderr: bytes) -> CommandResult:
    return CommandResult(("sh", "-c", "..."), status, b"out", stderr)


def test_the_commands_own_result_is_returned_as_if_unwrapped():
    got = checked(result(3, b"virsh: error"), FENCE, ARGV)
    assert (got.argv, got.exit_status, got.stdout) == (ARGV, 3, b"out")


def test_a_refusal_cancels_the_run():
    stderr = b"vclvirt-fence: refused: token 500 is older than 600 (/x)"
    with pytest.raises(Cancelled) as stopped:
        checked(result(REFUSED, stderr), FENCE, ARGV)
    assert isinstance(stopped.value.reason, Fenced)


def test_a_full_fence_directory_is_host_disk_full_naming_it():
    stderr = b"vclvirt-fence: cannot write /var/lib/vclvirt/fence/vm1 (0 KiB free)"
    with pytest.raises(HostDiskFull) as full:
        checked(result(UNWRITABLE, stderr), FENCE, ARGV)
    assert full.value.path == FENCE.directory and full.value.free_bytes == 0
    assert full.value.host == "kvm01" and full.value.reservation_id == 77


def test_an_unwritable_fence_directory_with_room_left_names_the_setting_to_fix():
    stderr = b"vclvirt-fence: cannot write /var/lib/vclvirt/fence/vm1 (5120 KiB free)"
    with pytest.raises(CommandFailed) as failed:
        checked(result(UNWRITABLE, stderr), FENCE, ARGV)
    assert "fence_dir" in failed.value.hint and FENCE.directory in failed.value.message


def test_exit_74_of_the_command_itself_is_its_own_result():
    got = checked(result(UNWRITABLE, b"cp: some error"), FENCE, ARGV)
    assert got.exit_status == UNWRITABLE


def test_a_fence_lock_that_cannot_be_opened_runs_nothing_and_names_the_directory(tmp_path):
    """The wrapper itself, run by sh: a lock file it cannot open (a directory stands in
    its place) is reported by the wrapper (not by sh dying on the redirection), and the
    command does not run."""
    from vclvirt.node import fence
    from vclvirt.node.local import LocalTransport

    directory = tmp_path / "fence" / "vm1"
    (directory / "lock").mkdir(parents=True)
    held = HostFence("local", str(directory), 700, 78)
    marker = tmp_path / "ran"
    with fence.holding(held), pytest.raises(CommandFailed) as failed:
        LocalTransport("local", fenced=True).run(["touch", str(marker)])
    assert f"cannot write {directory}" in failed.value.message
    assert "fence_dir" in failed.value.hint
    assert not marker.exists()
