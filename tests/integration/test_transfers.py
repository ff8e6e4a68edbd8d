"""Transfers (#19.3) on the test bed's real sshd. Checksums end to end: an image streamed
from a worker-side repository and a master fetched for a worker-side repository each arrive
with the sender's BLAKE2b, and a byte changed on the way fails the transfer and publishes
nothing. Speed (figures: benchmark 7, never asserted here): AES-GCM negotiated, larger
packets for a command's output."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from vclvirt.errors import CommandFailed
from vclvirt.hypervisor.drivers.kvm import KvmDriver
from vclvirt.images.capture import publish_to_repository
from vclvirt.images.master import ensure_master
from vclvirt.node.ssh import SSHTransport
from vclvirt.node.transport import CommandResult

IMAGE = "linux-TransferSum-7020-v0"
AT = 2 << 20  # the byte changed in transit: inside the 3 MiB of 0x5a data


class FlipsOneByte:
    """The host's transport, with one byte of a command's output changed on its way here
    (what a faulty NIC, cable or memory would do under the SSH layer's own check)."""

    def __init__(self, inner: SSHTransport) -> None:
        self.inner = inner
        self.host_name = inner.host_name

    def run(
        self, argv: Sequence[str], *, on_output: Callable[[bytes], None] | None = None, **kw: Any
    ) -> CommandResult:
        if on_output is None:
            return self.inner.run(argv, **kw)
        seen = 0

        def damage(chunk: bytes) -> None:
            nonlocal seen
            at = AT - seen  # a byte of guest data, which no structure check can judge
            if 0 <= at < len(chunk):
                chunk = chunk[:at] + bytes([chunk[at] ^ 1]) + chunk[at + 1 :]
            seen += len(chunk)
            on_output(chunk)

        return self.inner.run(argv, on_output=damage, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def qcow2(path: Path, data: str, options: str = "compat=1.1") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", options, str(path), "64M"], check=True
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data}", str(path)],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture
def worker_side(inventory: Any, tmp_path: Path) -> Any:
    """node-b with its repository on the worker's machine (tmp_path/repo)."""
    host = inventory.hosts["node-b"].model_copy(
        update={"repository_location": "worker", "repository_path": str(tmp_path / "repo")}
    )
    node = SSHTransport(host)
    master = Path(host.datastore_path) / f"{IMAGE}.qcow2"
    yield host, node, master
    node.run(["rm", "-f", "--", str(master), str(master.with_suffix(".xml"))])
    node.close()


def test_an_image_streamed_from_the_worker_arrives_checked(worker_side, tmp_path):
    """stream_from_worker over paramiko: the host's BLAKE2b of what it wrote matches the
    worker's, so the master is renamed into place. A standalone qcow2 (here a v2 one) is
    sent byte for byte, with no conversion before the wire."""
    host, node, master = worker_side
    source = qcow2(tmp_path / "repo" / IMAGE / f"{IMAGE}.qcow2", "3M", "compat=0.10")
    got = ensure_master(node, KvmDriver(host, node), host, IMAGE)
    assert got.copied and got.path == str(master)
    on_host = node.run(["b2sum", "--", str(master)]).text.split()[0]
    assert on_host == hashlib.blake2b(source.read_bytes()).hexdigest()


def test_an_image_with_a_backing_file_is_flattened_before_it_is_streamed(worker_side, tmp_path):
    """Not sendable as it is: the host gets a standalone qcow2 with the backing file's data."""
    host, node, master = worker_side
    base = qcow2(tmp_path / "base.qcow2", "3M")
    top = tmp_path / "repo" / IMAGE / f"{IMAGE}.qcow2"
    top.parent.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)],
        check=True,
    )
    ensure_master(node, KvmDriver(host, node), host, IMAGE)
    info = json.loads(node.run(["qemu-img", "info", "-U", "--output=json", str(master)]).stdout)
    assert "backing-filename" not in info
    compare = ["qemu-img", "compare", "-U", str(master), str(base)]
    assert node.run(compare, check=False).ok


def test_a_captured_master_damaged_on_its_way_to_the_worker_is_not_published(worker_side, tmp_path):
    """A master fetched for a worker-side repository with one byte changed in transit:
    the capture fails naming both sums, nothing appears in the repository (no image, no
    scratch file); the same fetch undamaged publishes the image."""
    host, node, master = worker_side
    source = qcow2(tmp_path / "src.qcow2", "3M")
    node.run(["cp", "--", str(source), str(master)])
    driver = KvmDriver(host, node)
    repository = tmp_path / "repo"
    with pytest.raises(CommandFailed, match=r"arrived damaged.*BLAKE2b"):
        publish_to_repository(FlipsOneByte(node), driver, host, str(master), IMAGE, "<domain/>")
    assert not (repository / IMAGE / f"{IMAGE}.qcow2").exists()
    assert sorted(p.name for p in (repository / IMAGE).iterdir() if p.name != f".{IMAGE}.lock") == [
        f"{IMAGE}.xml"
    ]
    target = publish_to_repository(node, driver, host, str(master), IMAGE, "<domain/>")
    assert target == str(repository / IMAGE / f"{IMAGE}.qcow2") and Path(target).exists()


def test_a_commands_output_arrives_whole_in_the_larger_packets(worker_side):
    """run() opens its channel with an 8 MiB window and 256 KiB packets (what sshd is told
    it may send); 40 MiB of output arrive whole and in order, matching the host's sum."""
    _host, node, _master = worker_side
    digest, seen = hashlib.blake2b(), []
    opened = node._open_channel

    def spy(**kw: Any) -> Any:
        channel = opened(**kw)
        seen.append((channel.in_window_size, channel.in_max_packet_size))
        return channel

    node._open_channel = spy
    script = "head -c 40M /dev/urandom | tee /dev/fd/3 | b2sum >&2"
    result = node.run(
        ["sh", "-c", f"{{ {script}; }} 3>&1"], on_output=digest.update, keep_output=False
    )
    assert result.stderr.decode().split()[0] == digest.hexdigest()
    assert seen == [(8 << 20, 256 << 10)]


def test_the_pooled_connection_negotiates_aes_gcm(worker_side):
    """paramiko's first choice would be aes128-ctr with an HMAC per packet; the host's
    sshd offers AES-GCM, so both directions use it."""
    _host, node, _master = worker_side
    node.run(["true"])
    transport = node._client.get_transport()
    assert (transport.local_cipher, transport.remote_cipher) == ("aes128-gcm@openssh.com",) * 2
