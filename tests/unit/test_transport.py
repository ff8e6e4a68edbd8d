"""Command-line quoting (checked through a real sh) and the local transport, for real."""

from __future__ import annotations

import subprocess

import pytest

from tests.events import HUNG, finishes, pid_ended
from tests.waiting import wait_for
from vclvirt.errors import CommandFailed, CommandTimeout
from vclvirt.node.local import LocalTransport
from vclvirt.node.transport import CommandResult, command_line, path_exists, write_file

HOSTILE_ARGS = [
    "$(touch pwned)",
    "`touch pwned`",
    "a;touch pwned",
    "a && touch pwned",
    "a | cat",
    "it's",
    'say "hi"',
    "two  spaces",
    " leading and trailing ",
    "line1\nline2",
    "tab\there",
    "-rf",
    "--help",
    "*",
    "~",
    "$HOME",
    "${IFS}",
    "a\\b",
    "#comment",
    "!bang",
    "",
    "é unicode ✓",
    "> /tmp/redirect",
]


def through_sh(argv: list[str], cwd) -> list[str]:
    """Run command_line(["printf", "%s\\0", *argv]) with sh -c and split its output."""
    line = command_line(["printf", "%s\\0", *argv])
    out = subprocess.run(
        ["sh", "-c", line], cwd=cwd, capture_output=True, check=True, timeout=10
    ).stdout
    return out.decode().split("\0")[:-1]


@pytest.mark.parametrize("arg", HOSTILE_ARGS)
def test_each_hostile_arg_survives_sh(tmp_path, arg):
    """A single hostile-looking argument reaches the program unchanged and runs nothing."""
    assert through_sh([arg], tmp_path) == [arg]
    assert list(tmp_path.iterdir()) == []


def test_all_hostile_args_together_survive_sh(tmp_path):
    """All hostile arguments in one command line arrive as separate, unchanged args."""
    assert through_sh(HOSTILE_ARGS, tmp_path) == HOSTILE_ARGS
    assert list(tmp_path.iterdir()) == []


def test_plain_args_stay_readable():
    """Arguments without special characters are not quoted."""
    assert command_line(["qemu-img", "info", "-U", "/var/lib/x.qcow2"]) == (
        "qemu-img info -U /var/lib/x.qcow2"
    )


def test_empty_argv_raises():
    """An empty argv has no command line."""
    with pytest.raises(ValueError):
        command_line([])


def test_command_result_properties():
    """ok is true only for exit 0; text decodes stdout, replacing bad bytes."""
    assert CommandResult(("true",), 0, b"hi\xff", b"").ok
    assert CommandResult(("true",), 0, b"hi\xff", b"").text == "hi\ufffd"
    assert not CommandResult(("false",), 1, b"", b"").ok


def test_check_message_prefers_stderr_and_names_host():
    """CommandResult.check raises CommandFailed with the command, status and stderr."""
    result = CommandResult(("ls", "/no such"), 2, b"out", b"ls: cannot access\n")
    with pytest.raises(CommandFailed) as caught:
        result.check("kvm1")
    assert caught.value.host == "kvm1"
    assert caught.value.message == "ls '/no such' exited 2: ls: cannot access"


def test_check_without_output_says_so():
    """A failed command with no output says '(no output)'."""
    with pytest.raises(CommandFailed, match=r"exited 1: \(no output\)"):
        CommandResult(("false",), 1, b"", b"").check("kvm1")


# --- LocalTransport, with real processes --------------------------------------


@pytest.fixture
def local():
    """A LocalTransport named like a host."""
    return LocalTransport("testhost")


def test_local_run_captures_stdout(local):
    """run returns exit 0 and the command's stdout."""
    result = local.run(["printf", "%s", "hello world"])
    assert (result.exit_status, result.stdout, result.argv) == (
        0,
        b"hello world",
        ("printf", "%s", "hello world"),
    )


def test_local_run_passes_args_without_shell(local):
    """Arguments go to the program as they are; no shell interprets them."""
    result = local.run(["printf", "%s\\n", "$(touch x)", ";", "*"], timeout=10)
    assert result.text == "$(touch x)\n;\n*\n"


def test_local_run_check_false_returns_exit_code(local):
    """With check=False a non-zero exit is returned, not raised."""
    result = local.run(["sh", "-c", "echo err >&2; exit 3"], check=False)
    assert (result.exit_status, result.stderr, result.ok) == (3, b"err\n", False)


def test_local_run_nonzero_raises_command_failed_with_stderr(local):
    """A non-zero exit raises CommandFailed naming the host, with stderr in the message."""
    with pytest.raises(CommandFailed) as caught:
        local.run(["sh", "-c", "echo 'disk is on fire' >&2; exit 4"])
    assert caught.value.host == "testhost"
    assert "exited 4" in str(caught.value)
    assert "disk is on fire" in str(caught.value)


def test_local_run_timeout_raises_command_timeout(local, tmp_path):
    """A command running past its timeout raises the transient CommandTimeout, naming the
    command, and the command is ended (it would otherwise run for an hour)."""
    pid_file = tmp_path / "pid"
    argv = ["sh", "-c", 'echo $$ > "$0"; exec sleep 3600', str(pid_file)]
    with pytest.raises(CommandTimeout) as caught:
        finishes(lambda: local.run(argv, timeout=0.5), "a command run with timeout=0.5")
    assert caught.value.transient
    assert caught.value.host == "testhost"
    assert "exec sleep 3600" in str(caught.value)
    pid = int(pid_file.read_text())
    wait_for(lambda: pid_ended(pid), HUNG, f"the timed-out command (pid {pid}) to end")


def test_local_run_passes_stdin(local):
    """Bytes given as stdin reach the command, binary-safe."""
    data = b"line1\nline2\x00\xff"
    assert local.run(["cat"], stdin=data).stdout == data


def test_local_run_missing_program_raises_command_failed(local):
    """A program that does not exist fails like any command (as over SSH, exit 127)."""
    try:
        local.run(["vclvirt-no-such-program"])
    except CommandFailed:
        return
    except OSError as error:
        pytest.fail(f"raised {type(error).__name__} instead of CommandFailed: {error}")
    pytest.fail("a missing program succeeded")


def test_write_file_and_path_exists(local, tmp_path):
    """write_file writes atomically via .part; path_exists sees the result."""
    target = tmp_path / "out.xml"
    assert not path_exists(local, str(target))
    write_file(local, str(target), b"<domain/>\n")
    assert target.read_bytes() == b"<domain/>\n"
    assert path_exists(local, str(target))
    assert not (tmp_path / "out.xml.part").exists()


def test_spawn_read_line(local):
    """A spawned process's output is read line by line; close ends it."""
    held = local.spawn(["sh", "-c", "echo locked; exec cat"])
    try:
        assert held.read_line(timeout=5) == "locked\n"
    finally:
        held.close()


def test_spawn_read_line_times_out(local):
    """read_line raises CommandTimeout when no line arrives in time."""
    held = local.spawn(["cat"])
    try:
        with pytest.raises(CommandTimeout):
            finishes(lambda: held.read_line(timeout=0.3), "read_line(timeout=0.3)")
    finally:
        held.close()


def test_spawn_read_line_at_end_of_output_is_empty(local):
    """read_line returns '' once the process has ended its output."""
    held = local.spawn(["true"])
    try:
        assert held.read_line(timeout=5) == ""
    finally:
        held.close()


def test_spawn_read_line_returns_lines_that_arrived_together(local):
    """Two lines written at once are both returned by two read_line calls."""
    held = local.spawn(["sh", "-c", "printf 'first\\nsecond\\n'; exec cat"])
    try:
        assert held.read_line(timeout=5) == "first\n"
        try:
            second = held.read_line(timeout=0.5)
        except CommandTimeout:
            pytest.fail("second buffered line was not returned (read_line timed out)")
        assert second == "second\n"
    finally:
        held.close()


def test_spawn_close_ends_process_waiting_on_stdin(local, tmp_path):
    """close() ends a child that waits for end of input by giving it end-of-file (the
    child gets to say so), not by killing it."""
    said = tmp_path / "eof"
    held = local.spawn(["sh", "-c", 'cat > /dev/null; echo end-of-file > "$0"', str(said)])
    finishes(held.close, "close()")
    assert said.read_text() == "end-of-file\n"


def test_local_run_without_keeping_output_streams_it_all_and_keeps_none(local, tmp_path):
    """keep_output=False: every byte of stdout reaches on_output in order, the result holds
    none of it (a download passes through), stderr and the exit status are kept."""
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 40_000)  # 10 MB
    received = bytearray()
    result = local.run(
        ["sh", "-c", 'cat -- "$0"; echo done >&2', str(source)],
        on_output=received.extend,
        keep_output=False,
    )
    assert bytes(received) == source.read_bytes()
    assert (result.ok, result.stdout, result.stderr) == (True, b"", b"done\n")
    failed = local.run(["sh", "-c", "exit 5"], keep_output=False, check=False)
    assert failed.exit_status == 5
    with pytest.raises(CommandFailed):
        local.run(["cat", "--", str(tmp_path / "absent")], keep_output=False)


def test_local_streaming_run_times_out_and_ends_the_command(local, tmp_path):
    """The streaming run keeps its deadline too: CommandTimeout, and the command ends."""
    pid_file = tmp_path / "pid"
    argv = ["sh", "-c", 'echo $$ > "$0"; exec sleep 3600', str(pid_file)]
    with pytest.raises(CommandTimeout):
        finishes(
            lambda: local.run(argv, timeout=0.5, keep_output=False, on_output=lambda _: None),
            "a streaming command run with timeout=0.5",
        )
    pid = int(pid_file.read_text())
    wait_for(lambda: pid_ended(pid), HUNG, f"the timed-out command (pid {pid}) to end")
