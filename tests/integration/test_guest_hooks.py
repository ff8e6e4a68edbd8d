"""The guest side of a load, without booting a guest: post_load's tags and hostname, and
the READY / POST_LOAD / RELOAD decision node_status takes from them.

The guest is busybox in a chroot with its own UTS namespace (tests/guest_root.py):
real files, a real shell, a real `hostname`. The slow tier does the same in a booted
guest (tests/e2e/test_guest.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_reservation
from tests.guest_root import NamespaceGuest
from vclvirt.errors import CommandFailed
from vclvirt.guest import hooks
from vclvirt.guest.currentimage import parse_tags
from vclvirt.models import parse_reservation

IMAGE = "linux-TestsHooks-643-v2"
REVISION_ID = 643 * 100 + 2  # make_reservation's revision_id for image 643, revision 2


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[NamespaceGuest]:
    machine = socket.gethostname()
    namespace_guest = NamespaceGuest(tmp_path / "guest")
    yield namespace_guest
    namespace_guest.stop()
    assert socket.gethostname() == machine, "a test renamed the machine, not its guest"


def reservation(os_type: str = "linux", computer: str = "tests-hooks1") -> Any:
    document = make_reservation(9700, computer, IMAGE, image_id=643, revision=2, os_type=os_type)
    assert document["image"]["revision_id"] == REVISION_ID
    return parse_reservation(document)


def captured_currentimage(revision_id: int = REVISION_ID, *extra: str) -> str:
    """currentimage.txt as a capture leaves it in an image (hooks.pre_capture)."""
    lines = [IMAGE, "id=643", "prettyname=Tests hooks", f"imagerevision_id={revision_id}", *extra]
    return "\n".join(lines) + "\n"


def tags(guest: NamespaceGuest) -> dict[str, str]:
    return parse_tags(guest.file("currentimage.txt").read_text())


# --- post_load ---------------------------------------------------------------------------


def test_post_load_names_the_guest_and_marks_its_image_then_it_is_ready(guest):
    """hostname and /etc/hostname become the computer's short name; currentimage.txt keeps
    the image's lines and gains imagerevision_id and vcld_post_load; the guest is READY."""
    guest.file("currentimage.txt").write_text(captured_currentimage())
    assert hooks.guest_status(guest, reservation())[0] == hooks.POST_LOAD

    done = hooks.post_load(guest, reservation())

    assert guest.run(["hostname"]).text == "tests-hooks1\n"
    assert guest.file("/etc/hostname").read_text() == "tests-hooks1\n"
    text = guest.file("currentimage.txt").read_text()
    assert text.splitlines()[:3] == [IMAGE, "id=643", "prettyname=Tests hooks"]
    assert tags(guest)["imagerevision_id"] == str(REVISION_ID)
    assert tags(guest)["vcld_post_load"] == f"success ({done['vcld_post_load']})"
    assert done["hostname"] == "tests-hooks1" and done["scripts"] == []
    assert hooks.guest_status(guest, reservation()) == (
        hooks.READY,
        "guest runs the reservation's image and post_load has run",
    )


def test_post_load_records_the_revision_in_a_guest_without_currentimage(guest):
    """A guest whose image carries no currentimage.txt gets one with both tags."""
    hooks.post_load(guest, reservation())
    assert set(tags(guest)) == {"imagerevision_id", "vcld_post_load"}
    assert tags(guest)["imagerevision_id"] == str(REVISION_ID)
    assert hooks.guest_status(guest, reservation())[0] == hooks.READY


def test_post_load_of_a_windows_guest_leaves_its_name_to_its_setup(guest):
    """Windows guests are not renamed (their own setup does it); the tags are written."""
    done = hooks.post_load(guest, reservation(os_type="windows"))
    assert guest.run(["hostname"]).text == "localhost\n"
    assert not guest.file("/etc/hostname").exists()
    assert done["hostname"].startswith("not set")
    assert hooks.guest_status(guest, reservation(os_type="windows"))[0] == hooks.READY


def test_site_scripts_run_in_name_order_before_post_load_counts_as_done(guest, tmp_path):
    """Scripts run in name order, see the new revision but no vcld_post_load yet, and are
    removed from the guest afterwards."""
    scripts = tmp_path / "post-load.d"
    scripts.mkdir()
    (scripts / "20-second").write_text(
        "#!/bin/sh\necho second >> /root/order\ncp /root/currentimage.txt /root/seen\n"
    )
    (scripts / "10-first").write_text("#!/bin/sh\necho first >> /root/order\n")

    done = hooks.post_load(guest, reservation(), scripts_dir=scripts)

    assert done["scripts"] == ["10-first", "20-second"]
    assert guest.file("order").read_text() == "first\nsecond\n"
    seen = parse_tags(guest.file("seen").read_text())
    assert seen.get("imagerevision_id") == str(REVISION_ID) and "vcld_post_load" not in seen
    assert sorted(p.name for p in guest.file("/tmp").iterdir()) == []


def test_a_failed_site_script_leaves_the_guest_needing_post_load(guest, tmp_path):
    """A script that fails fails post_load, and a vcld_post_load left from an earlier load
    is gone: node_status says POST_LOAD, so the next load runs post_load again."""
    guest.file("currentimage.txt").write_text(
        captured_currentimage(REVISION_ID, "vcld_post_load=success (earlier load)")
    )
    scripts = tmp_path / "post-load.d"
    scripts.mkdir()
    (scripts / "10-fails").write_text("#!/bin/sh\necho 'license server down' >&2\nexit 3\n")

    with pytest.raises(CommandFailed, match="license server down"):
        hooks.post_load(guest, reservation(), scripts_dir=scripts)

    assert hooks.guest_status(guest, reservation())[0] == hooks.POST_LOAD


# --- guest_status (node_status inside the guest) -----------------------------------------


@pytest.mark.parametrize(
    ("currentimage", "status", "reason"),
    [
        (None, hooks.RELOAD, "revision none"),
        (captured_currentimage(REVISION_ID - 1), hooks.RELOAD, f"revision {REVISION_ID - 1}"),
        (captured_currentimage(), hooks.POST_LOAD, "post_load has not run"),
        (captured_currentimage(REVISION_ID, "vcld_post_load=success (x)"), hooks.READY, "has run"),
        (
            captured_currentimage(REVISION_ID, "vcld_post_load=success (x)", "vcld_tainted=user"),
            hooks.RELOAD,
            "tainted: user",
        ),
        (
            captured_currentimage(REVISION_ID, "vcld_tainted=user"),
            hooks.RELOAD,
            "tainted: user",
        ),
        (
            f"{IMAGE}\n imagerevision_id = {REVISION_ID} \nvcld_post_load = success (x)\n",
            hooks.READY,
            "has run",
        ),
    ],
    ids=[
        "no-file",
        "other-revision",
        "post-load-not-run",
        "ready",
        "tainted",
        "tainted-before-post-load",
        "spaces-around-equals",
    ],
)
def test_guest_status_from_currentimage(guest, currentimage, status, reason):
    """READY only for the reservation's revision with post_load done and no taint."""
    if currentimage is not None:
        guest.file("currentimage.txt").write_text(currentimage)
    found, why = hooks.guest_status(guest, reservation())
    assert found == status
    assert reason in why


# --- pre_capture ---------------------------------------------------------------------------


def test_pre_capture_replaces_earlier_definitions_with_busybox_tools(guest):
    """In a busybox guest (whose find has no -delete), pre_capture removes the earlier
    captures' `~/*-v*.xml` files — regular files only, none elsewhere — writes the new
    image's definition and describes the image in currentimage.txt."""
    for name in ("linux-Old-643-v0.xml", "linux-Older-643-v1.xml"):
        guest.file(name).write_text("<domain>old</domain>\n")
    guest.file("notes.xml").write_text("kept: no revision in its name\n")
    guest.file("dir-v9.xml").mkdir()
    guest.file("/tmp/linux-Elsewhere-1-v0.xml").write_text("kept: not in the home\n")
    new = "linux-TestsHooks-643-v3"

    done = hooks.pre_capture(guest, reservation(), new, "<domain>new</domain>\n")

    home = sorted(p.name for p in guest.file(".").iterdir())
    assert home == ["currentimage.txt", "dir-v9.xml", f"{new}.xml", "notes.xml"]
    assert guest.file(f"{new}.xml").read_text() == "<domain>new</domain>\n"
    assert guest.file("/tmp/linux-Elsewhere-1-v0.xml").exists()
    lines = guest.file("currentimage.txt").read_text().splitlines()
    assert lines[0] == new and f"imagerevision_id={REVISION_ID}" in lines
    assert done == {"currentimage": new}
