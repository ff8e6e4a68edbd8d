"""Master copies on a host that is this machine: one copy per host and image, nothing
half-written under a master's name, a copy verified before it is renamed.

Real files, the real qemu-img and flock, through the load step pre_define as a
worker runs it; faults come from tests/faults.py. What is checked is what a load or
an operator would see: files in the datastore, what qemu-img says, which copies ran.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_reservation
from tests.events import HUNG, wait_for_lock_waiters
from tests.local_host import (
    holds_pattern,
    local_host,
    local_server,
    qemu_img,
    repository_image,
)
from vclvirt.errors import ImageInvalid, VclvirtError
from vclvirt.models import parse_reservation

IMAGE = "linux-TestsCopy-641-v0"


@pytest.fixture
def host(tmp_path: Path) -> Any:
    return local_host(tmp_path / "host")


def reservation(number: int, image: str = IMAGE) -> Any:
    return parse_reservation(
        make_reservation(9400 + number, f"tests-copy{number}", image, image_id=641)
    )


def master_of(host: Any, image: str = IMAGE) -> Path:
    return Path(host.datastore_path) / f"{image}.qcow2"


def part_files(host: Any) -> list[str]:
    root = Path(host.datastore_path).parent
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.part"))


def test_concurrent_loads_of_a_missing_master_copy_it_once(host, qemu_img_faults):
    """Four loads ask at once for a master the host lacks: one copies it while the others
    wait for the lock; after it, they re-check, find the master and copy nothing."""
    repository_image(host, IMAGE)
    server = local_server(host)
    qemu_img_faults.pause()  # the first copy stays in progress until all others queue
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        futures = [pool.submit(server.load.pre_define, reservation(i)) for i in range(4)]
        qemu_img_faults.wait_until_paused()

        def second_copy() -> str | None:
            copies = qemu_img_faults.converts()
            return f"a second copy started while the first ran: {copies}" if copies[1:] else None

        wait_for_lock_waiters(Path(host.datastore_path), 3, unless=second_copy)
    finally:
        qemu_img_faults.resume()
        wait(futures, timeout=HUNG)
        pool.shutdown(wait=False)
    results = [f.result(timeout=0) for f in futures]

    assert len(qemu_img_faults.converts()) == 1, qemu_img_faults.converts()
    assert sorted(r["master_copied"] for r in results) == [False, False, False, True]
    assert {r["master"] for r in results} == {str(master_of(host))}
    for result in results:
        info = qemu_img("info", "--output=json", result["overlay"])
        assert f'"backing-filename": "{master_of(host)}"' in info
    assert holds_pattern(master_of(host), "8M")
    assert part_files(host) == []


def test_a_copy_in_progress_is_invisible_under_the_masters_name(host, qemu_img_faults):
    """While the copy runs, only `<master>.part` exists: no file under the master's name,
    and the datastore lists no such image; the rename comes after the copy."""
    repository_image(host, IMAGE)
    server = local_server(host)
    qemu_img_faults.pause()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(server.load.pre_define, reservation(0))
        try:
            qemu_img_faults.wait_until_paused()
            assert not master_of(host).exists()
            assert IMAGE not in server.images.listing()["datastore"]
            assert qemu_img_faults.converts() == [f"{master_of(host)}.part"]
        finally:
            qemu_img_faults.resume()
        result = future.result(timeout=HUNG)
    assert result["master_copied"] is True
    assert master_of(host).exists() and holds_pattern(master_of(host), "8M")
    assert part_files(host) == []


def test_a_copy_that_fails_half_way_leaves_nothing(host, qemu_img_faults):
    """A copy that dies half-written (EFBIG) leaves neither a master nor a `.part`; the
    next load copies the image whole."""
    repository_image(host, IMAGE)
    server = local_server(host)
    qemu_img_faults.fail_half_written()
    with pytest.raises(VclvirtError):
        server.load.pre_define(reservation(0))
    assert qemu_img_faults.converts() == [f"{master_of(host)}.part"]  # it did start writing
    assert not master_of(host).exists()
    assert part_files(host) == []

    qemu_img_faults.clear()
    assert server.load.pre_define(reservation(0))["master_copied"] is True
    assert holds_pattern(master_of(host), "8M")


def test_a_copy_damaged_on_write_is_never_renamed(host, qemu_img_faults):
    """A copy that qemu-img wrote "successfully" but that lost data is caught by the
    verification before the rename: ImageInvalid, no master, no `.part`."""
    repository_image(host, IMAGE)
    qemu_img_faults.corrupt_output()
    with pytest.raises(ImageInvalid):
        local_server(host).load.pre_define(reservation(0))
    assert len(qemu_img_faults.converts()) == 1
    assert not master_of(host).exists()
    assert part_files(host) == []


def test_a_damaged_repository_image_is_refused_before_any_copy(host, qemu_img_faults):
    """A truncated repository image is rejected (ImageInvalid) before anything is written:
    converting it would give a "valid" master with zeros where data was lost."""
    source = repository_image(host, IMAGE)
    source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(ImageInvalid):
        local_server(host).load.pre_define(reservation(0))
    assert qemu_img_faults.converts() == []
    assert not master_of(host).exists()


def test_a_left_over_part_is_never_taken_for_the_master(host, qemu_img_faults):
    """A `.part` left by a crashed copy is not a master: the image is copied again."""
    repository_image(host, IMAGE)
    stray = Path(f"{master_of(host)}.part")
    qemu_img("create", "-q", "-f", "qcow2", str(stray), "64M")
    server = local_server(host)
    assert IMAGE not in server.images.listing()["datastore"]
    result = server.load.pre_define(reservation(0))
    assert result["master_copied"] is True and result["master"] == str(master_of(host))
    assert holds_pattern(master_of(host), "8M")
