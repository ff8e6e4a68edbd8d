"""SSHTransport against node-a's real sshd: quoting, exit status, streams, timeouts, pooling."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SSH_PORT_A, wait_for
from tests.events import HUNG, finishes
from tests.outages import cut_connection
from vclvirt.errors import (
    AuthenticationFailed,
    CommandFailed,
    CommandTimeout,
    HostKeyRejected,
    NodeUnreachable,
)
from vclvirt.node.ssh import SSHTransport, ssh_transport


@pytest.fixture
def host(inventory: Any) -> Any:
    return inventory.host("node-a")


@pytest.fixture
def transport(host: Any) -> Any:
    node = SSHTransport(host, connect_timeout=10)
    yield node
    node.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sshd_log(testbed: Path) -> Path:
    return testbed / "sshd" / "node-a" / "sshd.log"


def accepted_lines(log: Path, offset: int) -> list[str]:
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    return [line for line in text.splitlines() if "Accepted publickey" in line]


def local_port(node: SSHTransport) -> int:
    """The client-side port of the transport's pooled connection."""
    assert node._client is not None
    paramiko_transport = node._client.get_transport()
    assert paramiko_transport is not None
    return int(paramiko_transport.sock.getsockname()[1])


def test_hostile_arguments_reach_the_command_verbatim(transport: SSHTransport) -> None:
    """Every argv element arrives as one literal argument; nothing is run by the remote shell."""
    token = uuid.uuid4().hex
    pwned = [Path(f"/tmp/pwned-{token}-{i}") for i in range(5)]
    args = [
        "two  spaces",
        " leading and trailing ",
        "it's",
        'say "hi"',
        f"$(touch {pwned[0]})",
        f"`touch {pwned[1]}`",
        f"a; touch {pwned[2]}",
        f"a | touch {pwned[3]}",
        f"a && touch {pwned[4]}",
        "line1\nline2",
        "tab\there",
        "*",
        "~",
        "$HOME",
        "${IFS}",
        "-n",
        "--help",
        "a\\b",
        "#comment",
        "!bang",
        "> /tmp/redirect",
        "",
        "é unicode ✓ 日本",
    ]
    result = transport.run(["printf", "%s\\n", *args])
    assert result.stdout.decode() == "".join(f"{arg}\n" for arg in args)
    assert [p for p in pwned if p.exists()] == []


def test_nonzero_exit_raises_command_failed_with_stderr_and_host(
    transport: SSHTransport,
) -> None:
    """check=True turns a non-zero exit into CommandFailed naming stderr, status and host."""
    with pytest.raises(CommandFailed) as caught:
        transport.run(["sh", "-c", "echo boom-on-stderr >&2; exit 3"])
    text = str(caught.value)
    assert "boom-on-stderr" in text
    assert "exited 3" in text
    assert caught.value.host == "node-a"
    assert "host node-a" in text


def test_check_false_returns_status_and_both_streams(transport: SSHTransport) -> None:
    """check=False returns the exit status with stdout and stderr kept apart."""
    result = transport.run(["sh", "-c", "echo out; echo err >&2; exit 7"], check=False)
    assert (result.exit_status, result.stdout, result.stderr) == (7, b"out\n", b"err\n")
    assert not result.ok


def test_stdin_of_one_mebibyte_is_echoed_exactly(transport: SSHTransport) -> None:
    """Bytes given as stdin reach the command unchanged (cat echoes 1 MiB back), every time."""
    for _ in range(10):
        data = os.urandom(1 << 20)
        echoed = transport.run(["cat"], stdin=data, timeout=60).stdout
        received = len(echoed)
        assert received == len(data)
        assert echoed == data


def test_stdin_is_sent_at_more_than_a_packet_per_wait(transport: SSHTransport) -> None:
    """32 MiB of stdin reach the host at 16 MiB/s or more: the send loop waits only while
    the peer's window is full (a 10 ms wait per 32 KiB packet capped it at ~2 MiB/s; now
    ~130 MiB/s on loopback)."""
    data = os.urandom(1 << 20) * 32
    transport.run(["true"])
    began = time.monotonic()
    result = transport.run(["wc", "-c"], stdin=data)
    seconds = time.monotonic() - began
    assert int(result.stdout.split()[0]) == len(data)
    assert 32 / seconds >= 16, f"{32 / seconds:.1f} MiB/s"


def test_large_stdout_is_read_to_the_end(transport: SSHTransport, tmp_path: Path) -> None:
    """A command printing 5 MiB is read completely, not cut off when the exit status arrives."""
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(5 << 20))
    for _ in range(3):
        output = transport.run(["cat", "--", str(source)], timeout=60).stdout
        received = len(output)
        assert received == 5 << 20
        assert output == source.read_bytes()


def test_output_not_kept_is_streamed_whole(transport: SSHTransport, tmp_path: Path) -> None:
    """keep_output=False: 5 MiB of stdout reach on_output exactly, the result keeps none."""
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(5 << 20))
    received = bytearray()
    result = transport.run(
        ["cat", "--", str(source)], timeout=60, on_output=received.extend, keep_output=False
    )
    assert bytes(received) == source.read_bytes()
    assert (result.ok, result.stdout) == (True, b"")


@pytest.fixture
def long_command(tmp_path: Path) -> Iterator[list[str]]:
    """An argv that runs for an hour on node-a (this machine); ended by pid afterwards."""
    pid_file = tmp_path / "long-command.pid"
    yield ["sh", "-c", 'echo $$ > "$0"; exec sleep 3600', str(pid_file)]
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_timeout_raises_command_timeout_and_transport_survives(
    transport: SSHTransport, long_command: list[str]
) -> None:
    """A command running past timeout=1 raises CommandTimeout instead of being waited for;
    the next command works on the same connection."""
    transport.run(["true"])
    with pytest.raises(CommandTimeout) as caught:
        finishes(lambda: transport.run(long_command, timeout=1), "run() with timeout=1")
    assert caught.value.transient and caught.value.host == "node-a"
    assert transport.run(["echo", "still here"]).text == "still here\n"
    assert transport.connections_opened == 1


def test_large_stdin_to_an_echoing_command_does_not_hang(transport: SSHTransport) -> None:
    """16 MiB through `cat` finishes (or times out) within its timeout instead of hanging."""
    data = os.urandom(16 << 20)
    outcome: list[object] = []

    def send() -> None:
        try:
            outcome.append(transport.run(["cat"], stdin=data, timeout=5).stdout)
        except BaseException as error:  # reported below
            outcome.append(error)

    worker = threading.Thread(target=send, daemon=True)
    worker.start()
    worker.join(timeout=HUNG)
    hung = worker.is_alive()
    transport.close()  # unblocks a hung sendall so the thread ends
    assert not hung, f"run() still blocked {HUNG:g}s after it was given timeout=5"
    assert outcome and (outcome[0] == data or isinstance(outcome[0], CommandTimeout)), outcome


def test_timeout_holds_while_stdin_is_not_read(
    transport: SSHTransport, long_command: list[str]
) -> None:
    """A command that never reads its (large) stdin still times out with CommandTimeout,
    rather than the call waiting for the command."""
    with pytest.raises(CommandTimeout):
        finishes(
            lambda: transport.run(long_command, stdin=b"x" * (8 << 20), timeout=2),
            "run() with 8 MiB of unread stdin and timeout=2",
        )


class ClientWatcher(threading.Thread):
    """Records which process owns each client port connected to node-a's sshd.

    Other engineers' workers use node-a at the same time, so sshd's log lines are
    attributed to processes by their client port.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.owners: dict[int, int] = {}
        self.stop = threading.Event()

    def poll(self) -> None:
        listing = subprocess.run(
            ["ss", "-Htnp", "state", "established", f"( dport = :{SSH_PORT_A} )"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for port, pid in re.findall(
            rf"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:{SSH_PORT_A}\s.*?pid=(\d+)", listing
        ):
            self.owners.setdefault(int(port), int(pid))

    def run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            time.sleep(0.01)


def test_one_connection_serves_sequential_and_concurrent_commands(
    transport: SSHTransport, testbed: Path
) -> None:
    """30 commands (20 from 8 threads at once) use one SSH connection, as sshd's log confirms."""
    log = sshd_log(testbed)
    offset = log.stat().st_size
    watcher = ClientWatcher()
    watcher.start()
    try:
        for i in range(10):
            assert transport.run(["echo", str(i)]).text == f"{i}\n"
        port = local_port(transport)
        with ThreadPoolExecutor(max_workers=8) as pool:
            outputs = list(pool.map(lambda i: transport.run(["echo", f"t{i}"]).text, range(20)))
    finally:
        watcher.stop.set()
        watcher.join()
    watcher.poll()
    assert outputs == [f"t{i}\n" for i in range(20)]
    assert transport.connections_opened == 1
    assert local_port(transport) == port

    # A connection's "Accepted" line is written before it serves a command, so every
    # connection that ran one of ours is in the log by now; wait only for the write.
    def accepted_ports() -> list[int]:
        ports = [
            int(re.search(r" port (\d+) ", line).group(1)) for line in accepted_lines(log, offset)
        ]
        return ports if port in ports else []

    accepted = wait_for(accepted_ports, HUNG, f"sshd to log our connection from port {port}")
    ours = [p for p in accepted if watcher.owners.get(p) == os.getpid()]
    unattributed = [p for p in accepted if p not in watcher.owners]
    assert ours == [port]
    assert unattributed == [], f"sshd accepted connections from unknown owners: {unattributed}"


def test_an_idle_connection_costs_about_one_wake_up_a_second(transport: SSHTransport) -> None:
    """paramiko's reader thread of an idle connection wakes once a second, not ten times:
    a worker keeps one connection per host in every pool process (bench/footprint.py)."""
    transport.run(["true"])
    assert transport._client is not None
    reader = transport._client.get_transport()
    assert reader is not None and reader.native_id is not None

    def switches() -> int:
        status = Path(f"/proc/self/task/{reader.native_id}/status").read_text()
        return int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))

    before = switches()
    time.sleep(4)
    assert switches() - before <= 8  # 4 wake-ups and some slack; at 0.1 s it was 40


def test_pool_returns_one_transport_per_process_and_host(host: Any) -> None:
    """ssh_transport gives the same object twice in a process, and a new one in a forked child."""
    first = ssh_transport(host)
    assert ssh_transport(host) is first
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report, never return into pytest
        try:
            child = ssh_transport(host)
            same = child is first
            again = ssh_transport(host) is child
            ok = child.run(["echo", "child"]).text == "child\n"
            message = f"{same} {again} {ok} {child.connections_opened}"
        except BaseException as error:  # any failure must reach the parent
            message = f"error {error!r}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as reader:
        report = reader.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "False True True 1"
    assert ssh_transport(host) is first


def test_next_command_reconnects_after_close(transport: SSHTransport) -> None:
    """After close(), the next command opens a second connection and works."""
    transport.run(["true"])
    transport.close()
    assert transport.run(["echo", "again"]).text == "again\n"
    assert transport.connections_opened == 2


def test_next_command_reconnects_after_server_side_kill(transport: SSHTransport) -> None:
    """When sshd's process for our connection is killed, the next command reconnects."""
    transport.run(["true"])
    cut_connection(transport, SSH_PORT_A)
    assert transport.run(["echo", "back"]).text == "back\n"
    assert transport.connections_opened == 2


def test_known_hosts_with_another_key_is_rejected(host: Any, tmp_path: Path) -> None:
    """A known_hosts entry for the host with a different key raises HostKeyRejected."""
    other_key = tmp_path / "other"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True
    )
    known_hosts = tmp_path / "known_hosts"
    public = other_key.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{host.port} {public[0]} {public[1]}\n")
    node = SSHTransport(host.model_copy(update={"known_hosts": known_hosts}), connect_timeout=10)
    with pytest.raises(HostKeyRejected) as caught:
        node.run(["true"])
    assert not caught.value.transient
    assert node.connections_opened == 0


def test_empty_known_hosts_never_accepts_the_host(host: Any, tmp_path: Path) -> None:
    """With an empty known_hosts the unknown host key is rejected, not learned."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    node = SSHTransport(host.model_copy(update={"known_hosts": known_hosts}), connect_timeout=10)
    for _ in range(2):
        with pytest.raises(HostKeyRejected):
            node.run(["true"])
    assert known_hosts.read_text() == ""


def test_wrong_private_key_raises_authentication_failed(host: Any, tmp_path: Path) -> None:
    """A key the host does not authorize raises AuthenticationFailed (permanent)."""
    key = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    node = SSHTransport(host.model_copy(update={"key_file": key}), connect_timeout=10)
    with pytest.raises(AuthenticationFailed) as caught:
        node.run(["true"])
    assert not caught.value.transient
    assert caught.value.host == "node-a"


def test_closed_port_raises_node_unreachable(host: Any) -> None:
    """Nothing listening on the port raises NodeUnreachable, which is transient, at once:
    the refusal is not waited out like a silent host (connect_timeout is an hour here)."""
    node = SSHTransport(host.model_copy(update={"port": free_port()}), connect_timeout=3600)
    with pytest.raises(NodeUnreachable) as caught:
        finishes(lambda: node.run(["true"]), "connecting to a closed port")
    assert caught.value.transient
    assert f"127.0.0.1:{node.host.port}" in str(caught.value)


def test_spawned_process_is_read_line_by_line(transport: SSHTransport, tmp_path: Path) -> None:
    """spawn keeps a command running; read_line returns each line as it comes (the second
    is printed only after the test read the first), then '' at the end."""
    go_on = tmp_path / "go-on"
    script = 'echo one; while [ ! -e "$0" ]; do sleep 0.01; done; echo two'
    held = transport.spawn(["sh", "-c", script, str(go_on)])
    try:
        assert held.read_line(timeout=HUNG) == "one\n"
        go_on.touch()
        assert held.read_line(timeout=HUNG) == "two\n"
        assert held.read_line(timeout=HUNG) == ""
    finally:
        held.close()


def test_read_line_times_out_on_a_silent_command(transport: SSHTransport) -> None:
    """read_line raises CommandTimeout when the held command prints nothing in time."""
    held = transport.spawn(["sleep", "30"])  # had the timeout no effect: '' after 30 s
    try:
        with pytest.raises(CommandTimeout):
            finishes(lambda: held.read_line(timeout=1), "read_line(timeout=1)")
    finally:
        held.close()


def test_closing_a_spawned_process_ends_it_on_the_host(transport: SSHTransport) -> None:
    """Closing the handle ends the remote command (its stdin reaches end-of-file)."""
    marker = f"vclvirt-held-{uuid.uuid4().hex}"
    held = transport.spawn(["sh", "-c", f"echo ready; cat >/dev/null; true {marker}"])
    assert held.read_line(timeout=HUNG) == "ready\n"

    def running() -> bool:
        return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0

    assert running()
    held.close()
    wait_for(lambda: not running(), HUNG, "the held command to end on the host")


def test_threads_share_the_transport_without_mixing_outputs(
    transport: SSHTransport, tmp_path: Path
) -> None:
    """Eight commands open at once on one connection (each waits on the host until all
    eight have started) each get their own output."""
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    script = 'touch "$0/$1"; while [ "$(ls "$0" | wc -l)" -lt 8 ]; do sleep 0.01; done; echo "$1"'

    def work(i: int) -> str:
        return transport.run(["sh", "-c", script, str(rendezvous), str(i)], timeout=HUNG).text

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(work, range(8))) == [f"{i}\n" for i in range(8)]
    assert transport.connections_opened == 1
