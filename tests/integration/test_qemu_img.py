"""KvmDriver's qemu-img operations, run on node-a over SSH against real image files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vclvirt.errors import ImageInvalid
from vclvirt.hypervisor.drivers.kvm import KvmDriver
from vclvirt.node.ssh import SSHTransport


@pytest.fixture
def driver(inventory: Any) -> Any:
    host = inventory.host("node-a")
    node = SSHTransport(host, connect_timeout=10)
    yield KvmDriver(host, node)
    node.close()


def qemu_img_info(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    info: dict[str, Any] = json.loads(out)
    return info


def create_image(path: Path, fmt: str, size: str = "16M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
    return path


def qemu_io(path: Path, fmt: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", fmt, "-c", command, str(path)], capture_output=True, text=True
    )


@pytest.mark.parametrize("master_format", ["qcow2", "raw"])
def test_ensure_overlay_creates_a_qcow2_backed_by_the_master(
    driver: KvmDriver, tmp_path: Path, master_format: str
) -> None:
    """The overlay is a qcow2 whose backing file and backing format are the master's."""
    master = create_image(tmp_path / f"master.{master_format}", master_format)
    overlay = tmp_path / "vm1_7-v0.qcow2"
    assert driver.ensure_overlay(str(master), master_format, str(overlay)) is True
    info = qemu_img_info(overlay)
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == str(master)
    assert info["backing-filename-format"] == master_format
    assert not Path(f"{overlay}.part").exists()


def test_second_ensure_overlay_leaves_the_file_untouched(driver: KvmDriver, tmp_path: Path) -> None:
    """A correct overlay is kept as it is: False, same inode, same mtime, same data."""
    master = create_image(tmp_path / "master.qcow2", "qcow2")
    overlay = tmp_path / "vm1_7-v0.qcow2"
    assert driver.ensure_overlay(str(master), "qcow2", str(overlay)) is True
    assert qemu_io(overlay, "qcow2", "write -P 0x5a 0 64k").returncode == 0
    before = overlay.stat()
    assert driver.ensure_overlay(str(master), "qcow2", str(overlay)) is False
    after = overlay.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    assert qemu_io(overlay, "qcow2", "read -P 0x5a 0 64k").returncode == 0


def test_overlay_of_another_master_is_recreated(driver: KvmDriver, tmp_path: Path) -> None:
    """An overlay backed by a different master is replaced by one backed by the right master."""
    old_master = create_image(tmp_path / "old.qcow2", "qcow2")
    new_master = create_image(tmp_path / "new.qcow2", "qcow2")
    overlay = tmp_path / "vm1_7-v0.qcow2"
    assert driver.ensure_overlay(str(old_master), "qcow2", str(overlay)) is True
    assert driver.ensure_overlay(str(new_master), "qcow2", str(overlay)) is True
    assert qemu_img_info(overlay)["backing-filename"] == str(new_master)


def test_overlay_with_the_wrong_backing_format_is_recreated(
    driver: KvmDriver, tmp_path: Path
) -> None:
    """Same master but another recorded backing format: the overlay is recreated."""
    master = create_image(tmp_path / "master.img", "raw")
    overlay = tmp_path / "vm1_7-v0.qcow2"
    wrong = ["-b", str(master), "-F", "qcow2", "-u"]
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", *wrong, str(overlay), "16M"], check=True
    )
    assert driver.ensure_overlay(str(master), "raw", str(overlay)) is True
    assert qemu_img_info(overlay)["backing-filename-format"] == "raw"


def test_file_of_garbage_in_place_of_the_overlay_is_replaced(
    driver: KvmDriver, tmp_path: Path
) -> None:
    """A non-image file where the overlay should be is replaced by a real overlay."""
    master = create_image(tmp_path / "master.qcow2", "qcow2")
    overlay = tmp_path / "vm1_7-v0.qcow2"
    overlay.write_bytes(b"not an image")
    assert driver.ensure_overlay(str(master), "qcow2", str(overlay)) is True
    assert qemu_img_info(overlay)["backing-filename"] == str(master)


def test_convert_flattens_an_overlay_chain(driver: KvmDriver, tmp_path: Path) -> None:
    """convert writes a standalone image holding the data of the whole chain."""
    master = create_image(tmp_path / "master.qcow2", "qcow2")
    assert qemu_io(master, "qcow2", "write -P 0x62 1M 1M").returncode == 0
    overlay = tmp_path / "vm1_7-v0.qcow2"
    driver.ensure_overlay(str(master), "qcow2", str(overlay))
    written = qemu_io(overlay, "qcow2", "write -P 0x61 0 1M")
    assert written.returncode == 0, written.stderr
    flat = tmp_path / "flat.qcow2"
    driver.convert(str(overlay), str(flat), "qcow2")
    info = qemu_img_info(flat)
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info
    for command in ("read -P 0x61 0 1M", "read -P 0x62 1M 1M"):
        read = qemu_io(flat, "qcow2", command)
        assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, (
            read.stdout
        )
    driver.verify(str(flat))


def test_verify_accepts_a_good_qcow2(driver: KvmDriver, tmp_path: Path) -> None:
    """A freshly written qcow2 passes verify."""
    image = create_image(tmp_path / "good.qcow2", "qcow2")
    assert qemu_io(image, "qcow2", "write -P 0x11 0 2M").returncode == 0
    driver.verify(str(image))


def test_verify_rejects_random_bytes_named_qcow2(driver: KvmDriver, tmp_path: Path) -> None:
    """A .qcow2 file of random bytes is not accepted as an image (ImageInvalid)."""
    image = tmp_path / "random.qcow2"
    image.write_bytes(os.urandom(1 << 20))
    with pytest.raises(ImageInvalid):
        driver.verify(str(image), "qcow2")


def test_verify_rejects_a_truncated_qcow2(driver: KvmDriver, tmp_path: Path) -> None:
    """A qcow2 cut short after its data was written raises ImageInvalid."""
    image = create_image(tmp_path / "whole.qcow2", "qcow2", "64M")
    assert qemu_io(image, "qcow2", "write -P 0x61 0 8M").returncode == 0
    truncated = tmp_path / "truncated.qcow2"
    truncated.write_bytes(image.read_bytes()[:300_000])
    with pytest.raises(ImageInvalid) as caught:
        driver.verify(str(truncated))
    assert str(truncated) in str(caught.value)


def test_verify_rejects_a_qcow2_with_a_short_header(driver: KvmDriver, tmp_path: Path) -> None:
    """A qcow2 whose header is cut short raises ImageInvalid."""
    image = create_image(tmp_path / "whole.qcow2", "qcow2")
    short = tmp_path / "short.qcow2"
    short.write_bytes(image.read_bytes()[:100])
    with pytest.raises(ImageInvalid):
        driver.verify(str(short))


def test_image_info_of_a_missing_file_raises_image_invalid(
    driver: KvmDriver, tmp_path: Path
) -> None:
    """image_info on a path that does not exist raises ImageInvalid naming the path and host."""
    missing = tmp_path / "missing.qcow2"
    with pytest.raises(ImageInvalid) as caught:
        driver.image_info(str(missing))
    assert str(missing) in str(caught.value)
    assert caught.value.host == "node-a"


def test_image_info_reports_format_and_size(driver: KvmDriver, tmp_path: Path) -> None:
    """image_info returns qemu-img's JSON: format and virtual size."""
    image = create_image(tmp_path / "sized.qcow2", "qcow2", "32M")
    info = driver.image_info(str(image))
    assert (info["format"], info["virtual-size"]) == ("qcow2", 32 << 20)
