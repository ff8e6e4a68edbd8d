"""images.copy: the one-command verified copy, run here with the local transport and the
real qemu-img, flock and sh it runs on a host."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vclvirt.errors import ImageInvalid, ResourceBusy
from vclvirt.images.copy import FROM_STDIN, Recheck, copy_command, verified_copy
from vclvirt.images.repository import NOT_DISKS
from vclvirt.node.local import LocalTransport

NODE = LocalTransport("local")


def image(path: Path, fmt: str = "qcow2", size: str = "64M", data: str | None = None) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
    if data:
        subprocess.run(
            ["qemu-io", "-f", fmt, "-c", f"write -P 0x5a 0 {data}", str(path)],
            check=True,
            capture_output=True,
        )
    return path


def info(path: Path) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, check=True
    )
    return json.loads(out.stdout)


def parts(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*.part"))


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def test_copy_is_a_verified_qcow2_with_its_xml_and_no_part(tmp_path):
    """Source with data → standalone qcow2 holding it, reference XML beside it, no `.part`,
    bytes written = blocks on disk, progress reported up to the virtual size."""
    source = image(tmp_path / "src.raw", "raw", data="2M")
    (tmp_path / "src.xml").write_text("<domain/>\n")
    store = tmp_path / "store"
    destination = store / "img.qcow2"
    seen: list[tuple[int, int]] = []

    outcome = verified_copy(
        NODE,
        str(source),
        str(destination),
        source_format="raw",
        source_xml=str(tmp_path / "src.xml"),
        destination_xml=str(store / "img.xml"),
        progress=lambda done, total: seen.append((done, total)),
    )

    assert info(destination)["format"] == "qcow2"
    assert "backing-filename" not in info(destination)
    read = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 2M", str(destination)],
        capture_output=True,
        text=True,
    )
    assert read.returncode == 0 and "verification failed" not in read.stdout
    assert (store / "img.xml").read_text() == "<domain/>\n"
    assert parts(tmp_path) == []
    assert outcome.found == ()
    assert outcome.bytes_written == destination.stat().st_blocks * 512
    assert seen and seen[-1] == (64 * 2**20, 64 * 2**20)


def test_source_with_a_cut_header_is_rejected_and_leaves_nothing(tmp_path):
    """A qcow2 cut short: ImageInvalid naming it, no destination, no `.part`."""
    source = image(tmp_path / "src.qcow2", data="1M")
    source.write_bytes(source.read_bytes()[:100])
    destination = tmp_path / "out" / "img.qcow2"
    with pytest.raises(ImageInvalid, match=r"src\.qcow2"):
        verified_copy(NODE, str(source), str(destination))
    assert not destination.exists() and parts(tmp_path) == []


def test_source_of_another_format_than_its_name_says_is_rejected(tmp_path):
    """A raw file given as qcow2: ImageInvalid saying what qemu-img reads, nothing written."""
    source = image(tmp_path / "src.qcow2", "raw")
    destination = tmp_path / "img.qcow2"
    with pytest.raises(ImageInvalid, match=r"should be qcow2 but qemu-img reads it as raw"):
        verified_copy(NODE, str(source), str(destination), source_format="qcow2")
    assert not destination.exists() and parts(tmp_path) == []


def test_recheck_under_the_lock_reports_a_master_already_there(tmp_path):
    """After the lock: `<image>.*` anywhere below the directory, any case, counts as found
    (non-disk files do not); the copy does not run."""
    store = tmp_path / "store"
    (store / "sub").mkdir(parents=True)
    image(store / "sub" / "IMG.QCOW2")
    (store / "img.xml").write_text("x")
    (store / "img.qcow2.part").write_text("x")
    source = image(tmp_path / "src.qcow2")
    recheck = Recheck(str(store / ".img.lock"), "img", NOT_DISKS)

    outcome = verified_copy(NODE, str(source), str(store / "img.qcow2"), recheck=recheck)

    assert outcome.found == (str(store / "sub" / "IMG.QCOW2"),)
    assert not (store / "img.qcow2").exists()
    assert (store / "img.qcow2.part").exists()  # not ours to remove: no copy ran


def hold_lock(lock: Path) -> subprocess.Popen[bytes]:
    """Another copier holding the image's lock (until its stdin closes)."""
    holder = subprocess.Popen(
        ["flock", "-x", str(lock), "sh", "-c", "echo held; exec cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    return holder


def release(holder: subprocess.Popen[bytes]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(timeout=30)


def test_lock_not_taken_in_time_is_busy_and_the_holders_part_stays(tmp_path):
    """While another copier holds the lock: ResourceBusy after the wait, its `.part` kept."""
    store = tmp_path / "store"
    store.mkdir()
    lock = store / ".img.lock"
    holder = hold_lock(lock)
    (store / "img.qcow2.part").write_text("being written by the holder")
    try:
        with pytest.raises(ResourceBusy, match="within 1s"):
            verified_copy(
                NODE,
                str(image(tmp_path / "src.qcow2")),
                str(store / "img.qcow2"),
                recheck=Recheck(str(lock), "img", NOT_DISKS, wait=1),
            )
        assert (store / "img.qcow2.part").read_text() == "being written by the holder"
    finally:
        release(holder)


def test_waiter_stopped_while_waiting_does_not_touch_the_holders_part(tmp_path):
    """A copy terminated while it waits for the lock leaves the holder's `.part` alone."""
    store = tmp_path / "store"
    store.mkdir()
    lock = store / ".img.lock"
    holder = hold_lock(lock)
    (store / "img.qcow2.part").write_text("holder's")
    argv = copy_command(
        str(image(tmp_path / "src.qcow2")),
        str(store / "img.qcow2"),
        recheck=Recheck(str(lock), "img", NOT_DISKS, wait=60),
    )
    try:
        waiter = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        wait_for(
            lambda: (
                "flock"
                in subprocess.run(
                    ["ps", "-o", "comm=", "--ppid", str(waiter.pid)], capture_output=True, text=True
                ).stdout
            ),
            30,
            "the copy to wait in flock",
        )
        os.killpg(waiter.pid, signal.SIGTERM)  # the command's process group, as a host would
        assert waiter.wait(timeout=30) != 0
        assert (store / "img.qcow2.part").read_text() == "holder's"
    finally:
        release(holder)


def test_copy_stopped_midway_removes_its_part(tmp_path):
    """The copy's own `.part` goes when it is terminated half-way (here: mid-receive)."""
    destination = tmp_path / "img.qcow2"
    copy = subprocess.Popen(
        copy_command(FROM_STDIN, str(destination), length=1 << 20),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert copy.stdin is not None
    copy.stdin.write(b"\0" * 65536)
    copy.stdin.flush()
    wait_for(lambda: Path(f"{destination}.part").exists(), 30, "the .part file")
    os.killpg(copy.pid, signal.SIGTERM)
    assert copy.wait(timeout=30) == 143
    assert not destination.exists() and parts(tmp_path) == []


def test_image_received_on_stdin_is_verified_then_renamed(tmp_path):
    """FROM_STDIN: the bytes of a qcow2 become the destination once qemu-img checked them;
    bytes that are no qcow2 are rejected and leave nothing."""
    good = image(tmp_path / "src.qcow2", data="1M")
    destination = tmp_path / "store" / "img.qcow2"
    outcome = verified_copy(NODE, FROM_STDIN, str(destination), stdin=good.read_bytes())
    assert info(destination)["format"] == "qcow2" and outcome.bytes_written > 0
    with pytest.raises(ImageInvalid, match="should be qcow2"):
        verified_copy(NODE, FROM_STDIN, str(tmp_path / "bad.qcow2"), stdin=b"not an image" * 99)
    assert not (tmp_path / "bad.qcow2").exists() and parts(tmp_path) == []


@pytest.mark.parametrize(("compat", "expected"), [("0.10", "0.10"), ("7.7", "1.1")])
def test_compat_is_asked_for_and_dropped_when_qemu_img_refuses_it(tmp_path, compat, expected):
    """compat=0.10 gives a qcow2 v2; a compat this qemu-img refuses falls back to its default."""
    destination = tmp_path / "img.qcow2"
    verified_copy(NODE, str(image(tmp_path / "src.qcow2")), str(destination), compat=compat)
    assert info(destination)["format-specific"]["data"]["compat"] == expected


def test_image_on_stdin_arrives_with_its_checksum_and_a_damaged_byte_is_refused(tmp_path):
    """FROM_STDIN sends the announced length, then the sender's BLAKE2b: the host compares it
    with its own sum of what it wrote. One byte changed on the way, or bytes missing, fails
    the copy and leaves neither the destination nor a `.part`."""
    good = image(tmp_path / "src.qcow2", data="1M").read_bytes()
    destination = tmp_path / "store" / "img.qcow2"
    argv = copy_command(FROM_STDIN, str(destination), length=len(good))
    trailer = f"{hashlib.blake2b(good).hexdigest()}\n".encode()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0x01
    for sent, what in (
        (bytes(damaged) + trailer, "BLAKE2b of the bytes received"),
        (good[:-4096] + trailer, f"of {len(good)} bytes"),  # the stream ended early
        (good, "BLAKE2b of the bytes received"),  # no sum sent
    ):
        result = NODE.run(argv, stdin=sent, check=False)
        assert result.exit_status == 28 and what in result.stderr.decode(), result
        assert not destination.exists() and parts(tmp_path) == []
    assert NODE.run(argv, stdin=good + trailer, check=False).ok and info(destination)


def test_a_copy_from_stdin_is_refused_without_its_length(tmp_path):
    with pytest.raises(ValueError, match="length"):
        verified_copy(NODE, FROM_STDIN, str(tmp_path / "img.qcow2"), stdin=io.BytesIO(b"x"))
