"""A libvirt connection carried through the host's fence.

libvirt cannot check a fencing token, so a fenced run does not reach libvirtd over a
connection of libvirt's own: it listens on a private local socket, and the one client
that connects (this process's libvirt) is carried to the host over a command that the
host's fence wrapper starts (`virt-ssh-helper`, libvirt's own SSH proxy, else `nc -U`).
A newer holder taking the computer kills that command on the host, so every libvirt call
the older holder makes afterwards fails: it cannot destroy, define or start anything.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable

import paramiko
import structlog

from vclvirt.node.transport import Stream

log = structlog.get_logger(__name__)

# A constant script: libvirt's SSH proxy if the host has it (it finds the daemon's
# socket), else netcat on the monolithic daemon's socket.
PROXY = [
    "sh",
    "-c",
    "if command -v virt-ssh-helper >/dev/null 2>&1; then exec virt-ssh-helper qemu:///system; fi;"
    " exec nc -U /var/run/libvirt/libvirt-sock",
]
_CHUNK = 65536


class LibvirtTunnel:
    """A local socket whose one connection is carried to the host by `open_stream`."""

    def __init__(self, open_stream: Callable[[], Stream], host: str) -> None:
        self.host = host
        self._open_stream = open_stream
        self._dir = tempfile.mkdtemp(prefix="vclvirt-libvirt-")
        self.path = os.path.join(self._dir, "sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(1)
        self._ends: list[Stream | socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="libvirt-tunnel", daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.path}"

    def _serve(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return  # closed before libvirt connected
        self._ends.append(client)
        try:
            remote = self._open_stream()
        except Exception as error:
            log.warning("libvirt_tunnel_failed", host=self.host, error=str(error))
            client.close()
            return
        self._ends.append(remote)
        _pump(client, remote, self._closed)
        self.close()

    def close(self) -> None:
        """End the tunnel: libvirt's next call on it fails."""
        self._closed.set()
        for end in (self._listener, *self._ends):
            with contextlib.suppress(OSError, EOFError):
                end.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _pump(a: socket.socket, b: Stream, closed: threading.Event) -> None:
    """Copy bytes both ways until either side ends."""
    other: dict[int, tuple[Stream | socket.socket, Stream | socket.socket]] = {
        a.fileno(): (a, b),
        b.fileno(): (b, a),
    }
    while not closed.is_set():
        try:
            ready, _, _ = select.select(list(other), [], [], 1.0)
            for fd in ready:
                source, sink = other[fd]
                if not _has_output(source):
                    continue
                data = source.recv(_CHUNK)
                if not data:
                    return
                sink.sendall(data)
        except (OSError, EOFError, ValueError):
            return


def _has_output(end: Stream | socket.socket) -> bool:
    """Whether a read of `end` returns at once. An SSH channel's descriptor also signals
    its stderr (the fence wrapper's note that it ended an older holder's processes): that
    is logged, and the channel's output is read only when there is some, or it ended —
    a read would otherwise block the tunnel, libvirt's request unsent, until the open
    times out."""
    if not isinstance(end, paramiko.Channel):
        return True
    while end.recv_stderr_ready():
        note = end.recv_stderr(_CHUNK).decode(errors="replace").strip()
        log.info("libvirt_tunnel_note", note=note)
    return bool(end.recv_ready() or end.eof_received or end.closed)
