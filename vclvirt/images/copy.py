"""A verified qcow2 copy of an image, made on the host in one command.

One constant shell script (paths and names are its positional arguments, quoted like
every argument, never parsed into code) does what took a dozen SSH round trips:

1. optionally take the image's lock (`flock` on `.<image>.lock`, held until the script
   ends, so it dies with the command) and look again for a master (a file, or a symlink
   to one): another load may have copied it while this one waited;
2. check the source (`qemu-img info`, and `qemu-img check` for formats that have
   metadata: a damaged source converts "successfully" with zeros where data was lost);
3. convert it to `<destination>.part` (or receive it on stdin: exactly the announced
   length, then the sender's BLAKE2b of those bytes, which must match the host's own sum
   of what it wrote), check the result;
4. put the reference XML in place, then rename the `.part` to the destination.

So a master is never visible before it is whole, and its reference XML is in place
before the master is (a reader that finds the master finds its XML). A failure, or a
signal, removes the `.part` files — but only once the lock is held: a waiter never
touches the copy it waits for. When the worker dies mid-copy, the copy on the host runs
to its end under the lock (qemu-img ignores the closed channel; the script's next write
ends it): the next load waits for the lock and finds a whole master, not a second copy.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vclvirt.config.settings import COPY_TIMEOUT
from vclvirt.errors import CommandFailed, ImageInvalid, ResourceBusy
from vclvirt.node.transport import Readable, Transport

_SCRIPT = r"""
lock=$1 wait=$2 image=$3 source=$4 source_format=$5 destination=$6 compat=$7
source_xml=$8 destination_xml=$9 length=${10}
shift 10
part=$destination.part
owned=
[ -n "$lock" ] || owned=1
cleanup() { [ -z "$owned" ] || rm -f -- "$part" "$destination_xml.part"; }
fail() { status=$1; shift; cleanup; printf '%s\n' "$*" >&2; exit "$status"; }
trap 'cleanup; exit 129' HUP
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 141' PIPE
trap 'cleanup; exit 143' TERM
format_of() { printf '%s\n' "$1" | sed -n 's/^file format: //p' | head -n 1; }
directory=$(dirname -- "$destination")
mkdir -p -- "$directory" || fail 27 "cannot create directory $directory"
if [ -n "$lock" ]; then
  command exec 9>>"$lock" || fail 27 "cannot open lock file $lock"
  flock -x -w "$wait" 9 || fail 75 "could not take lock $lock within ${wait}s"
  found=$(find -H "$directory" -xtype f -iname "$image.*" "$@")
  if [ -n "$found" ]; then printf '@@found\n%s\n' "$found"; exit 0; fi
  owned=1
fi
exec 3>&1
if [ "$source" = - ]; then
  # exactly $length bytes, then the sender's BLAKE2b of them on a line of its own
  case $length in ''|*[!0-9]*) fail 23 "no length given for the bytes on stdin" ;; esac
  # tee's own failure is lost in the pipeline: the .part must be writable before it starts
  # (a write failing later shows as fewer bytes written, with tee's error)
  true > "$part" || fail 23 "cannot write $part"
  got=$(head -c "$length" | tee -- "$part" | b2sum) || fail 23 "cannot checksum $part"
  IFS= read -r want || want=
  written=$(stat -c %s -- "$part") || fail 23 "cannot write $part"
  [ "$written" = "$length" ] || fail 28 "received $written of $length bytes"
  [ "${got%% *}" = "$want" ] || fail 28 "BLAKE2b of the bytes received ${got%% *}, sent $want"
else
  info=$(qemu-img info -U "$source" 2>&1) || fail 20 "$info"
  detected=$(format_of "$info")
  if [ -n "$source_format" ] && [ "$detected" != "$source_format" ]; then
    fail 21 "$detected"
  fi
  case $detected in
    qcow2|qed|vdi|vhdx|vmdk) out=$(qemu-img check -U "$source" 2>&1) || fail 22 "$out" ;;
  esac
  size=$(printf '%s\n' "$info" | sed -n 's/^virtual size: .*(\([0-9]*\) bytes).*$/\1/p')
  printf '@@size %s\n' "${size:-0}"
  converted=
  if [ -n "$compat" ]; then
    if err=$(qemu-img convert -p -O qcow2 -o "compat=$compat" "$source" "$part" 2>&1 1>&3)
    then
      converted=1
    else
      case $(printf '%s' "$err" | tr 'A-Z' 'a-z') in
        *compat*) ;;
        *) fail 23 "$err" ;;
      esac
    fi
  fi
  if [ -z "$converted" ]; then
    err=$(qemu-img convert -p -O qcow2 "$source" "$part" 2>&1 1>&3) || fail 23 "$err"
  fi
fi
info=$(qemu-img info -U "$part" 2>&1) || fail 24 "$info"
detected=$(format_of "$info")
[ "$detected" = qcow2 ] || fail 25 "$detected"
out=$(qemu-img check -U "$part" 2>&1) || fail 26 "$out"
if [ -n "$source_xml" ] && [ -e "$source_xml" ]; then
  { cp -f -- "$source_xml" "$destination_xml.part" &&
    mv -f -- "$destination_xml.part" "$destination_xml"; } ||
    fail 27 "cannot copy $source_xml to $destination_xml"
fi
mv -f -- "$part" "$destination" || fail 27 "cannot rename $part to $destination"
owned=
printf '@@done %s\n' "$(stat -c %b:%B -- "$destination")"
"""

FROM_STDIN = "-"
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_SIZE = re.compile(rb"@@size (\d+)\n")

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


@dataclass(frozen=True)
class Recheck:
    """Under this lock, look for `<image>.*` in the destination's directory (recursively,
    any case, minus these file endings) before copying."""

    lock: str
    image: str
    not_disks: Sequence[str]
    wait: float = COPY_TIMEOUT


@dataclass(frozen=True)
class CopyOutcome:
    """`found`: what the re-check saw (the copy did not run); else the bytes written."""

    found: tuple[str, ...] = ()
    bytes_written: int = 0


def copy_command(
    source: str,
    destination: str,
    *,
    source_format: str | None = None,
    compat: str | None = None,
    source_xml: str | None = None,
    destination_xml: str | None = None,
    recheck: Recheck | None = None,
    length: int | None = None,
) -> list[str]:
    """The argv of the copy: the constant script, then its positional arguments
    (`length`: the bytes to read from stdin when source is FROM_STDIN)."""
    exclusions: list[str] = []
    for ending in recheck.not_disks if recheck else ():
        exclusions += ["!", "-iname", f"*{ending}"]
    return [
        "sh",
        "-c",
        _SCRIPT,
        "sh",
        recheck.lock if recheck else "",
        str(int(recheck.wait)) if recheck else "0",
        recheck.image if recheck else "",
        source,
        source_format or "",
        destination,
        compat or "",
        source_xml or "",
        destination_xml or "",
        "" if length is None else str(length),
        *exclusions,
    ]


def verified_copy(
    node: Transport,
    source: str,
    destination: str,
    *,
    source_format: str | None = None,
    compat: str | None = None,
    source_xml: str | None = None,
    destination_xml: str | None = None,
    recheck: Recheck | None = None,
    progress: Progress | None = None,
    stdin: bytes | Readable | None = None,
    stdin_length: int | None = None,
    timeout: float = COPY_TIMEOUT,
) -> CopyOutcome:
    """Copy source (a path on the host, or FROM_STDIN with `stdin`: bytes, or a file of
    `stdin_length` bytes) to a verified qcow2 at destination, as described in the module
    docstring."""
    length = None
    if source == FROM_STDIN:
        if isinstance(stdin, bytes):
            stdin_length, stdin = len(stdin), io.BytesIO(stdin)
        if stdin is None or stdin_length is None:
            raise ValueError("a copy from stdin needs the data and its length")
        stdin, length = Checksummed(stdin), stdin_length
    argv = copy_command(
        source,
        destination,
        source_format=source_format,
        compat=compat,
        source_xml=source_xml,
        destination_xml=destination_xml,
        recheck=recheck,
        length=length,
    )
    output = _Output(progress)
    wait = recheck.wait if recheck else 0.0
    result = node.run(argv, timeout=wait + timeout, check=False, stdin=stdin, on_output=output.feed)
    if result.ok:
        return _outcome(result.stdout)
    detail = (result.stderr or result.stdout).decode(errors="replace").strip()
    raise _error(result.exit_status, detail, source, destination, source_format, node.host_name)


def _outcome(stdout: bytes) -> CopyOutcome:
    lines = stdout.decode(errors="replace").splitlines()
    if "@@found" in lines:
        found = lines[lines.index("@@found") + 1 :]
        return CopyOutcome(found=tuple(line for line in found if line))
    done = next(line for line in lines if line.startswith("@@done "))
    blocks, block_size = done.split()[1].split(":")
    return CopyOutcome(bytes_written=int(blocks) * int(block_size))


def _error(
    status: int,
    detail: str,
    source: str,
    destination: str,
    source_format: str | None,
    host: str,
) -> Exception:
    part = f"{destination}.part"
    invalid: dict[int, str] = {
        20: f"qemu-img info {source} failed: {detail}",
        21: f"{source} should be {source_format} but qemu-img reads it as {detail}",
        22: f"qemu-img check {source} found errors: {detail[-500:]}",
        24: f"qemu-img info {part} failed: {detail}",
        25: f"{part} should be qcow2 but qemu-img reads it as {detail}",
        26: f"qemu-img check {part} found errors: {detail[-500:]}",
    }
    if status in invalid:
        return ImageInvalid(invalid[status], host=host)
    if status == 75:
        return ResourceBusy(detail, host=host)
    if status == 28:
        return CommandFailed(
            f"the copy to {part} arrived damaged ({detail}); it was removed",
            host=host,
            hint="Retry; if it recurs, check the host's disk and memory",
        )
    what = "convert" if status == 23 else "copy"
    return CommandFailed(
        f"{what} of {source} to {destination} failed (exit {status}): "
        f"{detail[-2000:] or '(no output)'}",
        host=host,
    )


class _Output:
    """Feeds `qemu-img convert -p` percentages to progress as bytes of the virtual size."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.head = b""
        self.total: int | None = None

    def feed(self, chunk: bytes) -> None:
        if self.progress is None:
            return
        if self.total is None:
            self.head += chunk
            found = _SIZE.search(self.head)
            if found is None:
                return
            self.total = int(found.group(1))
            chunk = self.head[found.end() :]
        percents = _PERCENT.findall(chunk)
        if percents and self.total:
            self.progress(int(float(percents[-1]) / 100 * self.total), self.total)


class Checksummed:
    """A file's bytes, then their BLAKE2b (b2sum's) on a line of its own: what the copy
    script compares with its own sum of the bytes it wrote."""

    def __init__(self, data: Readable) -> None:
        self.data = data
        self.digest: hashlib.blake2b | None = hashlib.blake2b()

    def read(self, size: int = -1, /) -> bytes:
        if self.digest is None:
            return b""
        chunk = self.data.read(size)
        self.digest.update(chunk)
        if chunk and size >= 0:
            return chunk
        trailer, self.digest = f"{self.digest.hexdigest()}\n".encode(), None
        return chunk + trailer  # at the end, or all at once for read()
