"""Real faults for the fault suite: a host's sshd stopped (and its open connections cut),
one SSH connection cut on the server side, the broker restarted, libvirtd restarted. Each
ends only what the test bed started, by pid."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import REDIS_PORT, ROOT
from vclvirt.node.ssh import SSHTransport


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _end(pids: list[int], deadline: float = 30.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    end = time.monotonic() + deadline
    while any(_alive(p) for p in pids):
        if time.monotonic() > end:
            raise AssertionError(f"processes {pids} did not end within {deadline}s")
        time.sleep(0.05)


def cut_connection(transport: SSHTransport, server_port: int) -> None:
    """Kill sshd's processes for the transport's pooled connection (found by its client
    port), as a dropped network path or a restarted host would end it."""
    assert transport._client is not None
    paramiko_transport = transport._client.get_transport()
    assert paramiko_transport is not None
    port = int(paramiko_transport.sock.getsockname()[1])
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{server_port} and dport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pids = sorted({int(p) for p in re.findall(r"pid=(\d+)", listing)})
    assert pids, f"no sshd process found for the connection from port {port}:\n{listing}"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 30
    while any(_alive(p) for p in pids):
        if time.monotonic() > end:
            raise AssertionError(f"sshd processes {pids} did not end")
        time.sleep(0.05)


def stop_host(testbed: Path, node: str) -> None:
    """The host goes away: its sshd listener and every connection it serves (a reboot
    drops established connections too), so pooled SSH and libvirt connections break."""
    listener = int((testbed / "sshd" / node / "sshd.pid").read_text().strip())
    # Stopped first, so no connection is accepted between listing its sessions and ending
    # them (a worker warming up its connection at that moment once kept it, and loaded).
    os.kill(listener, signal.SIGSTOP)
    sessions = _children(listener)
    os.kill(listener, signal.SIGKILL)
    _end([listener, *sessions])


def start_testbed() -> None:
    """Bring back whatever of the test bed is down (sshd, Redis)."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "testbed"), "start"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def redis_cli(*args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", REDIS_PORT, *args], capture_output=True, text=True, check=False
    ).stdout.strip()


def restart_redis() -> float:
    """Shut the test bed's Redis down (it writes its append-only file) and start it again;
    returns how long it was away, in seconds."""
    started = time.monotonic()
    redis_cli("shutdown")
    while redis_cli("ping") == "PONG":
        time.sleep(0.05)
    start_testbed()
    while redis_cli("ping") != "PONG":
        time.sleep(0.05)
    return time.monotonic() - started


def restart_libvirtd() -> None:
    """Stop the system libvirtd (running domains keep running) and start it again."""
    pid = int(Path("/run/libvirtd.pid").read_text().strip())
    _end([pid])
    start_testbed()
