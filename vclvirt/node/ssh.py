"""SSH transport (paramiko): one pooled connection per process and host, known_hosts enforced.

Each command runs on its own channel of the shared connection, so a worker opens
one SSH session per host instead of one per command (the reference opens one per
command). Connections are created lazily, after the worker forks.
"""

from __future__ import annotations

import io
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol

import paramiko

from vclvirt.config.settings import COMMAND_TIMEOUT
from vclvirt.errors import (
    AuthenticationFailed,
    CommandTimeout,
    HostKeyRejected,
    NodeUnreachable,
    VclvirtError,
)
from vclvirt.node import fence
from vclvirt.node.transport import CommandResult, Readable, command_line

_READ_SIZE = 65536
_SEND_BURST = 4 << 20  # stdin bytes sent between two looks at output and the deadline
# How often an idle connection's reader thread wakes: to send keepalives (every 30 s) and
# to end after close() (which does not wait for it). Data wakes it at once.
_READER_WAKE = 1.0
# A command's channel may carry a whole image to us (a capture's fetch): a window and
# packets larger than paramiko's defaults (2 MiB, 32 KiB) cost less Python per byte
# received (on loopback 155-228 -> 215-285 MiB/s).
_RUN_WINDOW = 8 << 20
_RUN_PACKET = 256 << 10
_RUN_READ = 1 << 20
# AES-GCM first (one AEAD pass per packet with AES-NI) instead of paramiko's first choice,
# aes128-ctr with a new HMAC object per packet: on loopback 136-165 -> 330-434 MiB/s sent.
# The other ciphers stay, after these, for servers without GCM.
_PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _gcm_first(sock: Any, /, **kwargs: Any) -> paramiko.Transport:
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    rest = tuple(c for c in options.ciphers if c not in _PREFERRED_CIPHERS)
    options.ciphers = (*(c for c in _PREFERRED_CIPHERS if c in options.ciphers), *rest)
    return transport


class SSHTarget(Protocol):
    """Where and as whom to log in. A host's inventory entry is one; so is a guest."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def key_file(self) -> Path | None: ...
    @property
    def known_hosts(self) -> Path | None:
        """None accepts any host key: only for freshly provisioned guests."""
        ...


class SSHProcess:
    """A command kept running on its own channel; closing the channel ends it."""

    def __init__(
        self, channel: paramiko.Channel, host_name: str, on_close: Callable[[], None]
    ) -> None:
        self._channel = channel
        self._host_name = host_name
        self._buffer = b""
        self._on_close: Callable[[], None] | None = on_close

    def read_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandTimeout(
                    f"no answer from a held command in {timeout:.0f}s", host=self._host_name
                )
            readable, _, _ = select.select([self._channel], [], [], min(remaining, 1.0))
            if readable:
                chunk = self._channel.recv(_READ_SIZE)
                if not chunk:
                    break
                self._buffer += chunk
        line, newline, self._buffer = self._buffer.partition(b"\n")
        return (line + newline).decode(errors="replace")

    def close(self) -> None:
        self._channel.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


class SSHTransport:
    """Runs commands on one host over a single, lazily (re)opened SSH connection."""

    def __init__(
        self,
        host: SSHTarget,
        *,
        connect_timeout: float = 15.0,
        command_timeout: float = COMMAND_TIMEOUT,
        fenced: bool = False,
    ) -> None:
        self.host = host
        self.host_name = host.name
        # A hypervisor host's transport: commands of a run holding the host's fence for a
        # computer go through it (node/fence.py). A guest's transport never is.
        self.fenced = fenced
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.connections_opened = 0
        self.commands_run = 0  # and the seconds they took: what a benchmark reads
        self.command_seconds = 0.0
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()
        self._held = 0  # spawned processes (host-side locks) living on the connection

    def _connect(self) -> paramiko.SSHClient:
        if self.host.key_file is None:
            raise AuthenticationFailed(
                f"no SSH key configured for {self.host_name}",
                host=self.host_name,
                hint="Set key_file in the inventory",
            )
        client = paramiko.SSHClient()
        # A target may decide on host keys itself (guests pin theirs per reservation).
        policy = getattr(self.host, "host_key_policy", None)
        if policy is not None:
            client.set_missing_host_key_policy(policy)
        elif self.host.known_hosts is None:
            # A guest just built from an image has a key nobody can know in advance.
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507
        else:
            try:
                client.load_host_keys(str(self.host.known_hosts))
            except OSError as error:
                raise HostKeyRejected(
                    f"cannot read known_hosts file {self.host.known_hosts}: {error}",
                    host=self.host_name,
                ) from None
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        where = f"{self.host.user}@{self.host.address}:{self.host.port}"
        via = getattr(self.host, "via", None)  # a guest reached through its host's relay
        try:
            client.connect(
                self.host.address,
                port=self.host.port,
                username=self.host.user,
                key_filename=str(self.host.key_file),
                look_for_keys=False,
                allow_agent=False,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                sock=via() if via is not None else None,
                transport_factory=_gcm_first,
            )
        except VclvirtError:  # raised by the target's host key policy
            client.close()
            raise
        except paramiko.BadHostKeyException:
            client.close()
            raise HostKeyRejected(
                f"SSH host key of {where} does not match {self.host.known_hosts}",
                host=self.host_name,
            ) from None
        except paramiko.AuthenticationException as error:
            client.close()
            raise AuthenticationFailed(
                f"{where} refused key {self.host.key_file}: {error}", host=self.host_name
            ) from None
        except paramiko.SSHException as error:
            client.close()
            if "known_hosts" in str(error):
                raise HostKeyRejected(
                    f"{where} is not in {self.host.known_hosts}", host=self.host_name
                ) from None
            raise NodeUnreachable(f"SSH to {where} failed: {error}", host=self.host_name) from None
        except (OSError, EOFError) as error:
            client.close()
            raise NodeUnreachable(
                f"cannot connect to {where}: {error}", host=self.host_name
            ) from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(30)
            # Each command is a few small packets each way; with Nagle's algorithm the
            # channel-open request waits for the server's delayed ACK (~40 ms a command).
            if isinstance(transport.sock, socket.socket):
                with suppress(OSError):
                    transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # paramiko's reader thread wakes every 0.1 s to look at its flags: with a
                # connection per host in every pool process, an idle worker serving 100
                # hosts spent ~7% of a core on it (bench/footprint.py).
                transport.sock.settimeout(_READER_WAKE)
        self.connections_opened += 1
        return client

    def _open_channel(self, *, bulk: bool = False) -> paramiko.Channel:
        """A new session channel, reconnecting once if the pooled connection died; `bulk`:
        with run()'s larger window and packets."""
        for attempt in (1, 2):
            with self._lock:
                transport = self._client.get_transport() if self._client else None
                if transport is None or not transport.is_active():
                    self._refuse_if_held()
                    if self._client is not None:
                        self._client.close()
                    self._client = self._connect()
                    transport = self._client.get_transport()
                assert transport is not None
            try:
                if bulk:
                    return transport.open_session(
                        timeout=self.connect_timeout,
                        window_size=_RUN_WINDOW,
                        max_packet_size=_RUN_PACKET,
                    )
                return transport.open_session(timeout=self.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError) as error:
                with self._lock:
                    if self._client is not None:
                        self._client.close()
                        self._client = None
                    self._refuse_if_held()
                if attempt == 2:
                    raise NodeUnreachable(
                        f"cannot open an SSH channel: {error}", host=self.host_name
                    ) from None
        raise AssertionError("unreachable")

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | Readable | None = None,
        check: bool = True,
        on_output: Callable[[bytes], None] | None = None,
        keep_output: bool = True,
    ) -> CommandResult:
        timeout = self.command_timeout if timeout is None else timeout
        asked = argv
        argv, held = fence.guard(self.host_name, argv) if self.fenced else (argv, None)
        line, shown = command_line(argv), command_line(asked)  # shown: without the fence
        began = time.monotonic()
        channel = self._open_channel(bulk=True)
        stdout, stderr = bytearray(), bytearray()
        source = io.BytesIO(stdin) if isinstance(stdin, bytes) else stdin
        pending, sending = b"", source is not None
        deadline = time.monotonic() + timeout
        try:
            # Without stdin the login shell gives the command /dev/null instead of our EOF:
            # an EOF sent after a fast command's channel closed makes sshd drop the whole
            # connection ("ieof packet referred to nonexistent channel"), and paramiko
            # can send it that late (it builds the EOF and the reply to the server's
            # CLOSE under the channel's lock but sends them after releasing it).
            channel.exec_command(line if sending else f"{line} </dev/null")
            # One loop sends stdin (bytes or a file, chunk by chunk) and reads output, so
            # neither side can fill its window and wait for the other, and the deadline
            # holds throughout.
            while True:
                # Send while the peer's window is open (a burst at most, then read output
                # and check the deadline); a wait per packet would cap stdin at ~2 MiB/s.
                burst = _SEND_BURST
                while sending and burst > 0 and channel.send_ready():
                    pending = pending or source.read(_READ_SIZE)  # type: ignore[union-attr]
                    if pending:
                        sent = channel.send(pending)
                        pending, burst = pending[sent:], burst - sent
                    else:
                        sending = False
                        channel.shutdown_write()
                while channel.recv_ready():
                    chunk = channel.recv(_RUN_READ)
                    if keep_output:
                        stdout += chunk
                    if on_output is not None:
                        on_output(chunk)
                while channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(_READ_SIZE)
                finished = channel.exit_status_ready() and (channel.eof_received or channel.closed)
                if finished and not (channel.recv_ready() or channel.recv_stderr_ready()):
                    break
                if channel.closed and not channel.exit_status_ready():
                    raise NodeUnreachable(
                        f"connection dropped while running {shown}", host=self.host_name
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandTimeout(
                        f"{shown} did not finish in {timeout:g}s", host=self.host_name
                    )
                if sending and channel.send_ready():
                    continue  # the window is open: no wait
                # A window adjust does not wake select: while the window is full, poll often.
                select.select([channel], [], [], min(remaining, 0.001 if sending else 0.5))
            status = channel.recv_exit_status()
            if status == -1:  # paramiko's word for "the connection closed, no exit status"
                raise NodeUnreachable(
                    f"connection dropped while running {shown}", host=self.host_name
                )
        except (OSError, paramiko.SSHException, EOFError) as error:
            raise NodeUnreachable(
                f"SSH failed while running {shown}: {error}", host=self.host_name
            ) from None
        finally:
            channel.close()
            self.commands_run += 1
            self.command_seconds += time.monotonic() - began
        result = CommandResult(tuple(argv), status, bytes(stdout), bytes(stderr))
        result = fence.checked(result, held, asked)
        return result.check(self.host_name) if check else result

    def spawn(self, argv: Sequence[str]) -> SSHProcess:
        """Keep argv running until closed. While it runs, the connection is not replaced:
        a host-side lock held by it died with a lost connection, so every later command
        fails (NodeUnreachable) instead of running on a new connection without the lock."""
        if self.fenced:
            argv, _ = fence.guard(self.host_name, argv)
        channel = self._open_channel()
        channel.exec_command(command_line(argv))
        with self._lock:
            self._held += 1
        return SSHProcess(channel, self.host_name, on_close=self._release_held)

    def open_stream(self, argv: Sequence[str]) -> paramiko.Channel:
        """Start argv and hand back its channel as a byte stream (stdin/stdout).
        Not fenced here: the caller wraps argv (it runs in another thread)."""
        channel = self._open_channel()
        channel.exec_command(command_line(argv))
        return channel

    def _release_held(self) -> None:
        with self._lock:
            self._held = max(0, self._held - 1)

    def _refuse_if_held(self) -> None:
        """Called under self._lock when the connection is gone."""
        if self._held:
            raise NodeUnreachable(
                f"the SSH connection to {self.host_name} was lost while it held a host-side "
                "lock: the lock is gone, so no more host work runs under it",
                host=self.host_name,
                hint="Transient: the step is retried and takes the lock again",
            )

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


_pool: dict[tuple[int, str], SSHTransport] = {}
_pool_lock = threading.Lock()


def ssh_transport(
    host: SSHTarget, *, connect_timeout: float = 15.0, command_timeout: float = COMMAND_TIMEOUT
) -> SSHTransport:
    """The process's shared transport for this hypervisor host (a new one after fork)."""
    key = (os.getpid(), host.name)
    with _pool_lock:
        transport = _pool.get(key)
        if transport is None or transport.host != host:
            transport = SSHTransport(
                host, connect_timeout=connect_timeout, command_timeout=command_timeout, fenced=True
            )
            _pool[key] = transport
        return transport
