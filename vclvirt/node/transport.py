"""The cut between vclvirt and a host: run an argv (never a shell string built from input).

Arguments are quoted by one function, `command_line`, for transports that need a
command line (SSH); local execution passes the argv list as it is.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from vclvirt.errors import CommandFailed


def command_line(argv: Sequence[str]) -> str:
    """The only place an argv becomes a command line: every element is quoted."""
    if not argv:
        raise ValueError("empty argv")
    return shlex.join(argv)


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one command on a host."""

    argv: tuple[str, ...]
    exit_status: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    def check(self, host: str) -> CommandResult:
        """Raise CommandFailed (with the command and its error output) unless exit 0."""
        if self.exit_status != 0:
            detail = (self.stderr or self.stdout).decode(errors="replace").strip()[-2000:]
            raise CommandFailed(
                f"{command_line(self.argv)!s} exited {self.exit_status}: {detail or '(no output)'}",
                host=host,
            )
        return self


class Readable(Protocol):
    """What stdin can be besides bytes: anything with read(size), e.g. an open file."""

    def read(self, size: int = -1, /) -> bytes: ...


class HeldProcess(Protocol):
    """A long-running command kept alive until closed (used for host-side locks)."""

    def read_line(self, timeout: float) -> str:
        """Next line of stdout; '' at end of output. Raises CommandTimeout."""
        ...

    def close(self) -> None: ...


class Stream(Protocol):
    """A byte stream to a command on the host (its stdin and stdout)."""

    def fileno(self) -> int: ...
    def recv(self, size: int, /) -> bytes: ...
    def sendall(self, data: bytes, /) -> None: ...
    def close(self) -> None: ...


class Transport(Protocol):
    """Runs commands on one host."""

    host_name: str

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
        """Run argv to completion (within `timeout`, by default the transport's command
        timeout); with check, a non-zero exit raises CommandFailed.

        `stdin` may be a file, streamed in chunks (large uploads).

        `on_output` sees stdout as it arrives (progress of long commands). With
        `keep_output=False` stdout goes only there and the result's stdout is empty: a
        download of any size passes through without being held in memory.
        """
        ...

    def spawn(self, argv: Sequence[str]) -> HeldProcess:
        """Start argv and keep it running until the returned handle is closed."""
        ...

    def open_stream(self, argv: Sequence[str]) -> Stream:
        """Start argv and hand back its stdin/stdout as one byte stream (a tunnel)."""
        ...

    def close(self) -> None: ...


# Constant scripts: the paths are positional arguments, quoted like every argument.
_WRITE_AND_RENAME = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1.part" && mv -f -- "$1.part" "$1"'


def write_file(node: Transport, path: str, data: bytes, *, timeout: float = 60.0) -> None:
    """Write a file on the host atomically (to `<path>.part`, then rename), creating its
    directory: one command, so one round trip."""
    node.run(["sh", "-c", _WRITE_AND_RENAME, "sh", path], stdin=data, timeout=timeout)


def path_exists(node: Transport, path: str) -> bool:
    return node.run(["test", "-e", path], check=False).exit_status == 0
