"""Pre-staging on fleet hosts (#20 item 2): a master put on hosts ahead of their loads,
through the CLI and the HTTP API, by a real worker; the load that follows copies nothing."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from tests.conftest import make_reservation, vclvirt_cli, wait_for
from tests.fleet.conftest import fleet_ssh, library_image, remove_computers
from vclvirt import dispatch
from vclvirt.api import create_api
from vclvirt.config.settings import Settings

IMAGE, IMAGE_ID = "linux-FleetStaged-618-v0", 618


def test_a_master_staged_on_two_hosts_is_there_verified_and_the_load_copies_nothing(
    fleet_env, testbed, start_worker
):
    fleet = fleet_env
    one, two = fleet.host("fleet-1"), fleet.host("fleet-2")
    library_image(fleet, testbed, IMAGE, data="16M")
    for host in (one, two):
        fleet_ssh(host, "rm", "-f", f"{host.datastore_path}/{IMAGE}.qcow2")
        fleet_ssh(host, "rm", "-f", f"{host.datastore_path}/{IMAGE}.xml")
    remove_computers(two, "staged1")
    start_worker(["fleet-1", "fleet-2"], concurrency=None)

    # Bad input: a clear error, nothing staged.
    assert vclvirt_cli("images", "stage", "bad name", "--host", "fleet-1").returncode == 2
    unknown = vclvirt_cli("images", "stage", IMAGE, "--host", "fleet-1", "--host", "nowhere")
    assert unknown.returncode == 2 and "nowhere" in unknown.stderr
    assert vclvirt_cli("images", "stage", IMAGE).returncode == 2  # neither --host nor --all
    assert dispatch.stages(IMAGE, ["fleet-1", "fleet-2"]) == {}

    staged = vclvirt_cli(
        "images", "stage", IMAGE, "--host", "fleet-1", "--host", "fleet-2", "--wait"
    )
    assert staged.returncode == 0, staged.stdout + staged.stderr
    for name in ("fleet-1", "fleet-2"):
        assert f"{name}: done, copied from the repository" in staged.stdout
    for host in (one, two):
        compare = fleet_ssh(
            host,
            "qemu-img",
            "compare",
            "-q",
            f"{host.repository_path}/{IMAGE}/{IMAGE}.qcow2",
            f"{host.datastore_path}/{IMAGE}.qcow2",
            check=False,
        )
        assert compare.returncode == 0, compare.stderr

    token = "s" * 40
    api = TestClient(create_api(Settings(api_token=token)))
    auth = {"Authorization": f"Bearer {token}"}
    answer = api.post(f"/v1/images/{IMAGE}/stage", json={"hosts": ["fleet-1"]}, headers=auth)
    assert answer.status_code == 202, answer.text
    assert set(answer.json()["stages"]) == {"fleet-1"}

    def staged_again() -> bool:
        shown = api.get(f"/v1/images/{IMAGE}/stage", headers=auth).json()["stages"]
        return shown["fleet-1"]["state"] == "done"

    wait_for(staged_again, 120, "the second stage on fleet-1 to end")
    shown = api.get(f"/v1/images/{IMAGE}/stage", headers=auth).json()["stages"]
    assert shown["fleet-1"]["copied"] is False  # already there: nothing copied again
    assert shown["fleet-2"]["copied"] is True
    refused = api.post(f"/v1/images/{IMAGE}/stage", json={"hosts": ["x y"]}, headers=auth)
    assert refused.status_code == 422

    started = time.monotonic()
    reservation = make_reservation(7790, "staged1", IMAGE, image_id=IMAGE_ID, host="fleet-2")
    try:
        final = dispatch.load(reservation).wait(timeout=240)
        assert final.state == "succeeded", final.to_dict()
        assert final.step_records["pre_define"]["result"]["master_copied"] is False
        print(f"load after staging: {time.monotonic() - started:.1f} s, no master copy")
    finally:
        remove_computers(two, "staged1")
