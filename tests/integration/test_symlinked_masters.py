"""Masters that are symlinks (sites keep masters on another volume and link them into the
datastore) are found like files, used for loads and never deleted nor replaced.

The host is this machine (transport local, real qemu:///system, real files in the test's
tmp dir), reached both ways vclvirt reaches a host's files: libvirt's storage pools (the
fast path) and commands (test driver, inactive pools). The same image also sits in the
repository: a master not found would be copied from there over the link.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.conftest import make_reservation
from tests.local_host import holds_pattern, local_host, local_server, qemu_img
from tests.local_host import repository_image as repo_image
from vclvirt.errors import ImageExists
from vclvirt.images.files import CommandFiles, LibvirtFiles
from vclvirt.models import parse_reservation

COMPUTER = "tests-link1"
IMAGE = "linux-TestsLinked-521-v0"


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    connection = libvirt.open("qemu:///system")
    yield connection
    for domain in connection.listAllDomains(0):
        if domain.name().startswith(f"{COMPUTER}_"):
            if domain.isActive():
                domain.destroy()
            domain.undefine()
    connection.close()


@pytest.fixture(params=["storage pools", "commands"])
def linked(request: Any, tmp_path: Path, conn: libvirt.virConnect) -> dict[str, Any]:
    """A host whose datastore holds `<image>.qcow2` as a symlink to a master on another
    volume (pattern 0x5a), while the repository holds the image too (pattern 0x33)."""
    # guest_network "user": the domains carry the computer's MAC (capture finds them so)
    host = local_host(tmp_path / "host", guest_network="user")
    volume = tmp_path / "other-volume"
    volume.mkdir()
    target = volume / "masters-live-here.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(target), "64M")
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 4M", str(target)],
        check=True,
        capture_output=True,
    )
    link = Path(host.datastore_path) / f"{IMAGE}.qcow2"
    link.symlink_to(target)
    repo_image(host, IMAGE)  # pattern 0x5a: a copy of it would not read as the master
    server = local_server(host)
    if request.param == "commands":
        server.access._files = CommandFiles(server.access.node, server.access.driver)
    else:
        assert isinstance(server.access.files, LibvirtFiles)
    return {"host": host, "server": server, "link": link, "target": target}


def reservation(rid: int, image: str = IMAGE, image_id: int = 521) -> Any:
    return parse_reservation(make_reservation(rid, COMPUTER, image, image_id=image_id))


def intact(linked: dict[str, Any]) -> bool:
    """The link is still a link to the same master, which still holds its data (0x77, not
    the repository's 0x5a), and no copy is half-written beside it."""
    link, target = linked["link"], linked["target"]
    return (
        link.is_symlink()
        and link.resolve() == target
        and holds_pattern(target, "4M", "0x77")
        and not list(link.parent.glob("*.part"))
    )


def test_a_symlinked_master_is_found_and_used_not_copied_over(linked):
    """pre_define takes the link as the master (no copy from the repository) and builds the
    overlay on it; the image queries see it as a master."""
    server, link = linked["server"], linked["link"]
    result = server.load.pre_define(reservation(9501))
    assert (result["master"], result["master_copied"]) == (str(link), False)
    info = server.access.driver.image_info(result["overlay"])
    assert (info["backing-filename"], info["backing-filename-format"]) == (str(link), "qcow2")
    assert server.images.exists(IMAGE)
    assert IMAGE in server.images.listing()["datastore"]
    assert server.images.size_bytes(IMAGE) == os.stat(linked["target"]).st_blocks * 512
    assert intact(linked)


def test_nothing_that_removes_a_computers_files_removes_a_linked_master(linked, conn):
    """A failed load's cleanup, a reload's delete_existing_domains, unload and an `image`
    capture of a hand-made VM whose disk is the link itself remove the computer's own files
    only (domains defined on the real libvirtd; tests/e2e runs them)."""
    server, link = linked["server"], linked["link"]
    first = reservation(9502)
    server.load.pre_define(first)
    assert server.cleanup.remove_overlay(first)  # a load abandoned after pre_define
    assert intact(linked)

    server.load.pre_define(first)
    server.load.define(first, server.load.generate_xml(first)["xml"])
    (domain,) = [d for d in conn.listAllDomains(0) if d.name().startswith(f"{COMPUTER}_")]
    assert server.cleanup.delete_existing_domains(first)["deleted_domains"] == [domain.name()]
    assert intact(linked)

    server.load.pre_define(first)
    server.load.define(first, server.load.generate_xml(first)["xml"])
    assert server.cleanup.delete_existing_domains(first)["deleted_domains"]
    assert intact(linked)

    # A hand-made VM of the computer running straight on the linked master, captured.
    xml = server.load.generate_xml(first)["xml"].replace(
        str(Path(linked["host"].vm_dir) / f"{COMPUTER}_521-v0.qcow2"), str(link)
    )
    conn.defineXML(xml)
    document = make_reservation(9503, COMPUTER, IMAGE, image_id=521, state="image")
    document["image"].update(revision=1, revision_id=52101)
    capture = parse_reservation(document)
    prepared = server.capture.prepare(capture)
    assert prepared["disk"] == str(link)
    server.capture.flatten(capture, prepared)
    assert server.capture.finish(capture, prepared)["action"] == "deleted"
    assert [d for d in conn.listAllDomains(0) if d.name().startswith(f"{COMPUTER}_")] == []
    assert intact(linked)


def test_a_capture_does_not_take_a_linked_master_for_its_own_earlier_attempt(linked, conn):
    """The new image's name already taken by a linked master: IMAGE_EXISTS, the link and
    its master untouched (an unseen link would be taken for an earlier attempt's copy)."""
    server = linked["server"]
    first = reservation(9504)
    server.load.pre_define(first)
    server.load.define(first, server.load.generate_xml(first)["xml"])
    taken = make_reservation(9505, COMPUTER, IMAGE, image_id=521, state="image")
    taken["image"].update(os_name="linux", pretty_name="Tests Linked", revision=0)
    with pytest.raises(ImageExists) as caught:
        server.capture.prepare(parse_reservation(taken))
    assert str(linked["link"]) in str(caught.value)
    assert intact(linked)
