"""A fake host for the unit tier: records every argv, answers scripted results per command
pattern, fails or hangs on demand, and keeps a host's fence like node/fence.py's script.

It stands where a LocalTransport or SSHTransport stands (node/transport.py's Transport),
so a step, a provisioning module or the runner runs unchanged against it.
"""

from __future__ import annotations

import fnmatch
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vclvirt.config.settings import COMMAND_TIMEOUT
from vclvirt.errors import CommandTimeout, VclvirtError
from vclvirt.node import fence
from vclvirt.node.transport import CommandResult, Readable, command_line


@dataclass
class Reply:
    """What a scripted command does: exit with this status and output, raise `error`, or
    hang until `release` is set (then the command's timeout raises CommandTimeout)."""

    exit_status: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    error: VclvirtError | None = None
    hang: bool = False
    times: int | None = None  # answers this many calls, then the next rule matches


@dataclass(frozen=True)
class Call:
    """One command as the host saw it: its argv (unwrapped) and the fencing token it came
    behind, if any."""

    argv: tuple[str, ...]
    token: int | None
    stdin: bytes | None


@dataclass
class _Rule:
    pattern: tuple[str, ...]
    reply: Reply
    used: int = 0

    def matches(self, argv: Sequence[str]) -> bool:
        if len(argv) < len(self.pattern):
            return False
        return all(fnmatch.fnmatchcase(a, p) for a, p in zip(argv, self.pattern, strict=False))

    def answers(self) -> bool:
        """False once it has answered its `times` calls."""
        return self.reply.times is None or self.used < self.reply.times


class FakeHeld:
    """A spawned command: its scripted stdout, a line at a time."""

    def __init__(self, stdout: bytes) -> None:
        self._lines = stdout.decode(errors="replace").splitlines(keepends=True)
        self.closed = False

    def read_line(self, timeout: float) -> str:
        return self._lines.pop(0) if self._lines else ""

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeTransport:
    """A host that runs nothing. Rules are tried newest first; a command no rule matches
    exits 0 with no output. With `fenced` (a host whose commands run behind the computer's
    fencing token) it refuses a token older than the newest it has seen per fence directory,
    as the real fence script does (exit 75), before the command "runs"."""

    host_name: str = "fake-host"
    fenced: bool = True
    command_timeout: float = COMMAND_TIMEOUT  # how long a hung command hangs, by default
    calls: list[Call] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)  # fence directory -> newest token
    release: threading.Event = field(default_factory=threading.Event)
    streams: list[socket.socket] = field(default_factory=list)  # the host's ends
    _rules: list[_Rule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on(
        self,
        *pattern: str,
        exit_status: int = 0,
        stdout: bytes = b"",
        stderr: bytes = b"",
        error: VclvirtError | None = None,
        hang: bool = False,
        times: int | None = None,
    ) -> Reply:
        """Script the commands whose argv starts with `pattern` (fnmatch per element).
        The newest rule wins."""
        answer = Reply(exit_status, stdout, stderr, error, hang, times)
        with self._lock:
            self._rules.insert(0, _Rule(tuple(pattern), answer))
        return answer

    def argvs(self, *pattern: str) -> list[tuple[str, ...]]:
        """The argv of every call so far that starts with `pattern`."""
        rule = _Rule(tuple(pattern), Reply())
        return [c.argv for c in self.calls if rule.matches(c.argv)]

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
        if not argv:
            raise ValueError("empty argv")
        held = fence.current(self.host_name) if self.fenced else None
        data = stdin if stdin is None or isinstance(stdin, bytes) else stdin.read()
        self.calls.append(Call(tuple(argv), held.token if held else None, data))
        if held is not None:
            refused = self._refused(held)
            if refused is not None:
                return fence.checked(refused, held, argv)  # raises Cancelled(Fenced)
        reply = self._reply(argv)
        if reply.error is not None:
            raise reply.error
        if reply.hang:
            timeout = self.command_timeout if timeout is None else timeout
            self.release.wait(timeout)
            raise CommandTimeout(
                f"{command_line(argv)} did not finish in {timeout:g}s", host=self.host_name
            )
        if on_output is not None and reply.stdout:
            on_output(reply.stdout)
        stdout = reply.stdout if keep_output else b""
        result = CommandResult(tuple(argv), reply.exit_status, stdout, reply.stderr)
        return result.check(self.host_name) if check else result

    def _refused(self, held: fence.HostFence) -> CommandResult | None:
        """The fence script's verdict: None to run, or its refusal (exit 75)."""
        with self._lock:
            seen = self.tokens.get(held.directory, 0)
            if seen > held.token:
                message = f"{fence.MARKER}: token {held.token} is older than {seen}"
                return CommandResult((), fence.REFUSED, b"", message.encode())
            self.tokens[held.directory] = held.token
        return None

    def _reply(self, argv: Sequence[str]) -> Reply:
        with self._lock:
            for rule in self._rules:
                if rule.matches(argv) and rule.answers():
                    rule.used += 1
                    return rule.reply
        return Reply()

    def spawn(self, argv: Sequence[str]) -> FakeHeld:
        """A held command; behind a refused token it ends at once, saying nothing (as the
        fence script exits 75 before running it)."""
        held = fence.current(self.host_name) if self.fenced else None
        self.calls.append(Call(tuple(argv), held.token if held else None, None))
        if held is not None and self._refused(held) is not None:
            return FakeHeld(b"")
        return FakeHeld(self._reply(argv).stdout)

    def open_stream(self, argv: Sequence[str]) -> socket.socket:
        """One end of a socket pair; the other (the "host's") is kept in `streams`."""
        self.calls.append(Call(tuple(argv), None, None))
        ours, theirs = socket.socketpair()
        self.streams.append(theirs)
        return ours

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
