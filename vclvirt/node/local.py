"""Transport for the machine the worker runs on (subprocess, argv as a list)."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

from vclvirt.config.settings import COMMAND_TIMEOUT
from vclvirt.errors import CommandTimeout
from vclvirt.node import fence
from vclvirt.node.transport import CommandResult, Readable, command_line


class LocalProcess:
    """A local process held open until closed."""

    def __init__(self, argv: Sequence[str]) -> None:
        # Its own process group: a host's fence kills a stale holder's group, never ours.
        self._proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._buffer = b""

    def read_line(self, timeout: float) -> str:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandTimeout(f"no output from {self._proc.args!r} in {timeout:g}s")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self._buffer += chunk
        line, newline, self._buffer = self._buffer.partition(b"\n")
        return (line + newline).decode(errors="replace")

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class LocalTransport:
    """Runs commands on this machine."""

    def __init__(
        self,
        host_name: str = "localhost",
        *,
        command_timeout: float = COMMAND_TIMEOUT,
        fenced: bool = False,
    ) -> None:
        self.host_name = host_name
        self.command_timeout = command_timeout
        self.fenced = fenced  # this machine is the hypervisor host (transport = "local")

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
        if not keep_output:
            result = fence.checked(self._stream(argv, timeout, stdin, on_output), held, asked)
            return result.check(self.host_name) if check else result
        try:
            data = stdin if stdin is None or isinstance(stdin, bytes) else stdin.read()
            proc = subprocess.run(
                list(argv),
                input=data,
                capture_output=True,
                timeout=timeout,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise CommandTimeout(
                f"{command_line(asked)} did not finish in {timeout:g}s", host=self.host_name
            ) from None
        except FileNotFoundError:
            # What a shell on a remote host reports: exit 127, command not found.
            proc = subprocess.CompletedProcess(
                list(argv), 127, b"", f"{argv[0]}: command not found".encode()
            )
        if on_output is not None and proc.stdout:
            on_output(proc.stdout)  # locally the whole output comes at the end
        result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        result = fence.checked(result, held, asked)
        return result.check(self.host_name) if check else result

    def _stream(
        self,
        argv: Sequence[str],
        timeout: float,
        stdin: bytes | Readable | None,
        on_output: Callable[[bytes], None] | None,
    ) -> CommandResult:
        """Run argv handing stdout to on_output chunk by chunk, keeping none of it."""
        deadline = time.monotonic() + timeout
        with tempfile.TemporaryFile() as given, tempfile.TemporaryFile() as errors:
            data = stdin if stdin is None or isinstance(stdin, bytes) else stdin.read()
            given.write(data or b"")
            given.seek(0)
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=given,
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    start_new_session=True,
                )
            except FileNotFoundError:
                message = f"{argv[0]}: command not found".encode()
                return CommandResult(tuple(argv), 127, b"", message)
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise CommandTimeout(
                            f"{command_line(argv)} did not finish in {timeout:g}s",
                            host=self.host_name,
                        )
                    if not select.select([fd], [], [], remaining)[0]:
                        continue
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        break
                    if on_output is not None:
                        on_output(chunk)
                try:
                    status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise CommandTimeout(
                        f"{command_line(argv)} did not finish in {timeout:g}s",
                        host=self.host_name,
                    ) from None
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                proc.stdout.close()
            errors.seek(0)
            return CommandResult(tuple(argv), status, b"", errors.read())

    def spawn(self, argv: Sequence[str]) -> LocalProcess:
        if self.fenced:
            argv, _ = fence.guard(self.host_name, argv)
        return LocalProcess(argv)

    def open_stream(self, argv: Sequence[str]) -> socket.socket:
        """Start argv with a socket as its stdin and stdout; the other end is returned.
        Not fenced here: the caller wraps argv (it runs in another thread)."""
        ours, theirs = socket.socketpair()
        with theirs:
            proc = subprocess.Popen(
                list(argv), stdin=theirs.fileno(), stdout=theirs.fileno(), start_new_session=True
            )
        # Reaped once it ends (when we close our end, or the host's fence kills it).
        threading.Thread(target=proc.wait, name="stream-reaper", daemon=True).start()
        return ours

    def close(self) -> None:
        pass
