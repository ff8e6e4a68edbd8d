"""Images through real workers: one master copy per host however many loads ask,
capture of a real guest into a new image, and snapshots (of the guest loaded from the
captured image: one boot fewer than a guest of their own)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import (
    computer_domains,
    guest_shell,
    make_reservation,
    uncached_image,
)
from vclvirt import dispatch


def test_concurrent_loads_of_an_uncached_image_copy_it_once(
    testbed, start_worker, cleanup_computers
):
    """Four loads of the same image, not yet on the host, at once: one copy, four domains."""
    image = "linux-E2eShared-620-v0"
    uncached_image(testbed, image, "512M", "300M", "node-a")
    computers = [f"e2e-many{i}" for i in range(4)]
    cleanup_computers.extend(computers)
    start_worker("node-a", concurrency=4)

    handles = [
        dispatch.load(make_reservation(7100 + i, c, image, image_id=620))
        for i, c in enumerate(computers)
    ]
    finals = [h.wait(timeout=300) for h in handles]

    assert [f.state for f in finals] == ["succeeded"] * 4, [f.to_dict() for f in finals]
    copies = [f.step_records["pre_define"]["result"]["master_copied"] for f in finals]
    assert copies.count(True) == 1, copies
    assert all(len(computer_domains(c)) == 1 for c in computers)
    masters = sorted(p.name for p in (testbed / "hosts/node-a/images").glob(f"{image}*"))
    assert masters == [f"{image}.qcow2"]


@pytest.mark.slow
def test_capture_of_a_real_guest_gives_a_bootable_standalone_image_and_snapshots_revert(
    testbed, guest_image, start_worker, cleanup_computers, tmp_path
):
    """Capture after post_load: new master in datastore and repository, no backing file;
    loading it elsewhere boots and keeps what post_load wrote in the captured guest. On
    that guest: snapshot create → write a file in the guest → revert → the file is gone."""
    scripts = tmp_path / "post-load.d"
    scripts.mkdir()
    marker = scripts / "10-marker"
    marker.write_text('#!/bin/sh\nhostname > "/root/post-load-marker-$(hostname)"\n')
    marker.chmod(0o755)
    cleanup_computers.extend(["e2e-capt", "e2e-capt2"])
    new = "linux-CapturedGuest-900-v1"
    for earlier in [*testbed.glob(f"hosts/*/images/{new}.*"), testbed / "repository" / new]:
        subprocess.run(["rm", "-rf", str(earlier)], check=True)  # from an earlier run
    start_worker("node-a", VCLVIRT_POST_LOAD_SCRIPTS_DIR=str(scripts))
    base = make_reservation(8101, "e2e-capt", guest_image, image_id=900, os_type="linux")
    assert dispatch.load(base).wait(300).state == "succeeded"
    first_marker = "/root/post-load-marker-e2e-capt"
    assert guest_shell(testbed, base, "cat", first_marker).strip() == "e2e-capt"

    capture = {
        **base,
        "reservation_id": 8102,
        "state": "image",
        "image": {
            **base["image"],
            "revision": 1,
            "revision_id": 90001,
            "pretty_name": "Captured Guest",
            "os_name": "vmwarelinux",
        },
    }
    final = dispatch.capture(capture).wait(600)

    assert final.state == "succeeded", final.to_dict()
    assert final.outcome and final.outcome["new_image"] == new
    assert final.outcome["size_bytes"] > 0
    master = testbed / f"hosts/node-a/images/{new}.qcow2"
    published = testbed / f"repository/{new}/{new}.qcow2"
    for image_file in (master, published):
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(image_file)],
                capture_output=True,
                check=True,
            ).stdout
        )
        assert "backing-filename" not in info, info
    compat = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(published)], capture_output=True, check=True
        ).stdout
    )
    assert compat["format-specific"]["data"]["compat"] == "0.10"
    assert (published.parent / f"{new}.xml").exists() and master.with_suffix(".xml").exists()
    assert computer_domains("e2e-capt") == []  # state image: the domain is gone...
    assert (testbed / f"hosts/node-a/images/{guest_image}.qcow2").exists()  # ...not the master
    assert not list(testbed.glob("hosts/node-a/**/*.part"))

    reload = make_reservation(8103, "e2e-capt2", new, image_id=900, revision=1, os_type="linux")
    reload["image"]["revision_id"] = 90001
    assert dispatch.load(reload).wait(300).state == "succeeded"
    # the captured disk still holds what post_load wrote in the first guest...
    assert guest_shell(testbed, reload, "cat", first_marker).strip() == "e2e-capt"
    # ...and post_load ran again in the new one
    second_marker = "/root/post-load-marker-e2e-capt2"
    assert guest_shell(testbed, reload, "cat", second_marker).strip() == "e2e-capt2"
    first_line = guest_shell(testbed, reload, "head", "-n", "1", "currentimage.txt").strip()
    assert first_line == new

    def snapshot(action: str, name: str | None = None) -> dict:
        handle = dispatch.run(reload, f"snapshot_{action}", {"name": name} if name else None)
        final = handle.wait(300)
        assert final.state == "succeeded", final.to_dict()
        return final.step_records[f"snapshot_{action}"]["result"]

    snapshot("create", "before-change")
    guest_shell(testbed, reload, "sh", "-c", "echo changed > /root/change && sync")
    assert guest_shell(testbed, reload, "cat", "/root/change").strip() == "changed"
    assert [s["name"] for s in snapshot("list")["snapshots"]] == ["before-change"]

    snapshot("revert", "before-change")

    missing = guest_shell(testbed, reload, "sh", "-c", "test -e /root/change; echo $?")
    assert missing.strip() == "1"
    snapshot("delete", "before-change")
    assert snapshot("list")["snapshots"] == []
