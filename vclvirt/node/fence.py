"""The host's own fence: a holder that lost its computer cannot change it any more.

A check in Redis followed by an action on the host is not enough: a worker can pause
between the two for longer than its lease. So the host itself keeps, per computer, the
highest fencing token it has seen (issued with the computer lock, locks.py) and checks it
in the same critical section as the action:

    flock <fence dir>/lock:
        token < highest seen         -> refuse (exit 75), run nothing
        token > highest seen         -> record it; kill every process that an older token
                                        started here (commands, copies, the libvirt tunnel)
        register this process         (pid, process group, start time)
    unlock, run the command, unregister

Every command a fenced operation runs on its host goes through this wrapper, and so does
its libvirt connection (a tunnel to libvirtd: hypervisor/tunnel.py). When a newer holder
takes the computer, the older holder's tunnel and commands are killed on the host, and
anything it sends afterwards is refused there: its libvirt calls find the connection
gone, its commands exit 75. The limit: an action that had reached libvirtd or started
before the takeover may still complete; nothing starts after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass

from vclvirt.cancellation import Cancelled
from vclvirt.errors import CommandFailed, Fenced, HostDiskFull, VclvirtError
from vclvirt.node.transport import CommandResult
from vclvirt.scoped import bound

REFUSED = 75  # EX_TEMPFAIL: the wrapper's exit status for a stale token
UNWRITABLE = 74  # EX_IOERR: the wrapper could not write its own files; nothing ran
MARKER = "vclvirt-fence: refused"
UNWRITABLE_MARKER = "vclvirt-fence: cannot write"

# A constant script: the fence directory, the token and the command are positional
# arguments, quoted by the transport like every argument.
SCRIPT = r"""
dir=$1 token=$2
shift 2
unwritable() {  # say where, and the room left there (a full disk is the usual cause)
  free=$(df -Pk -- "$dir" 2>/dev/null | { read -r _; read -r _ _ _ kib _; echo "$kib"; })
  echo "vclvirt-fence: cannot write $dir (${free:-?} KiB free)" >&2
  exit 74
}
{ [ -d "$dir" ] || mkdir -p -- "$dir"; } && command exec 9>>"$dir/lock" || unwritable
flock -x -w 120 9 || { echo "vclvirt-fence: cannot lock $dir" >&2; exit 74; }
seen=0
[ -e "$dir/token" ] && read -r seen < "$dir/token"
case $seen in ''|*[!0-9]*) seen=0 ;; esac
if [ "$seen" -gt "$token" ]; then
  echo "vclvirt-fence: refused: token $token is older than $seen ($dir)" >&2
  exit 75
fi
identity() {  # "<process group> <start time>" of a live pid (builtins only: no fork)
  [ -e "/proc/$1/stat" ] && read -r line < "/proc/$1/stat" || return 1
  set -- ${line##*) }
  echo "$3 ${20}"
}
if [ "$seen" -lt "$token" ]; then
  printf '%s\n' "$token" > "$dir/token.new" && mv -f -- "$dir/token.new" "$dir/token" || {
    rm -f -- "$dir/token.new"; unwritable; }
  for run in "$dir"/run.*; do
    [ -e "$run" ] || continue
    if read -r pid group start < "$run" && [ "$group" -gt 1 ] \
        && [ "$(identity "$pid")" = "$group $start" ]; then
      kill -s KILL -- "-$group" \
        && echo "vclvirt-fence: killed process group $group of an older token ($dir)" >&2
    fi
    rm -f -- "$run"
  done
fi
[ "$#" -gt 0 ] || exit 0
run="$dir/run.$$"
me=$(identity $$) && echo "$$ $me" > "$run" || { rm -f -- "$run"; unwritable; }
trap 'rm -f -- "$run"' EXIT
trap 'exit 129' HUP
trap 'exit 143' TERM
exec 9>&-
"$@"
status=$?
rm -f -- "$run"
trap - EXIT
exit $status
"""


@dataclass(frozen=True)
class HostFence:
    """The fencing token a run holds for one computer on one host."""

    host: str
    directory: str  # on the host: <fence_dir>/<computer>
    token: int
    reservation_id: int

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """argv, run on the host only if this token is still the newest it has seen."""
        return ["sh", "-c", SCRIPT, "vclvirt-fence", self.directory, str(self.token), *argv]

    def unwritable(self, detail: str) -> VclvirtError:
        """The host could not record the token (nothing ran): HOST_DISK_FULL when its
        filesystem has no room left, else a failed command naming the fence directory."""
        why = detail.strip()[-300:]
        message = f"host {self.host} cannot write its fence directory {self.directory}: {why}"
        if "(0 KiB free)" in why:
            return HostDiskFull(
                f"{message}; no space left on device",
                path=self.directory,
                free_bytes=0,
                host=self.host,
                reservation_id=self.reservation_id,
            )
        return CommandFailed(
            message,
            host=self.host,
            reservation_id=self.reservation_id,
            hint=f"Make {self.directory} writable on {self.host} (fence_dir in the "
            "inventory), then retry the reservation (vclvirt retry ID)",
        )

    def refusal(self, detail: str) -> Cancelled:
        return Cancelled(
            Fenced(
                f"host {self.host} refused fencing token {self.token} for {self.directory}: "
                f"a newer holder has taken the computer ({detail.strip()[-300:]})",
                host=self.host,
                reservation_id=self.reservation_id,
            )
        )


_current: ContextVar[HostFence | None] = ContextVar("vclvirt_host_fence", default=None)


def holding(fence: HostFence) -> AbstractContextManager[HostFence]:
    """Every command on `fence.host` in this thread runs behind `fence`."""
    return bound(_current, fence)


def current(host: str) -> HostFence | None:
    """The fence this thread holds for `host`, if any."""
    fence = _current.get()
    return fence if fence is not None and fence.host == host else None


def guard(host: str, argv: Sequence[str]) -> tuple[Sequence[str], HostFence | None]:
    """What a host transport runs for argv: wrapped when a fence for the host is held."""
    fence = current(host)
    return (fence.wrap(argv), fence) if fence else (argv, None)


def checked(result: CommandResult, fence: HostFence | None, argv: Sequence[str]) -> CommandResult:
    """The command's own result (as if unwrapped); Cancelled(Fenced) if the host refused."""
    if fence is None:
        return result
    if result.exit_status == REFUSED and MARKER.encode() in result.stderr:
        raise fence.refusal(result.stderr.decode(errors="replace"))
    if result.exit_status == UNWRITABLE and UNWRITABLE_MARKER.encode() in result.stderr:
        raise fence.unwritable(result.stderr.decode(errors="replace"))
    return CommandResult(tuple(argv), result.exit_status, result.stdout, result.stderr)
