"""VCL's provisioning module (contrib/vcl/VCL/Module/Provisioning/vclvirt.pm) run by a real
`perl` against the real API, workers and test bed.

Here tests/e2e/vcld_stand_in.pl (test-only) gives the module the framework it uses (data
accessors, notify, insertloadlog, the database updates it makes, an OS object) and prints
every call as a JSON line with its time: for what VCL's own code cannot show, the
sub-second order of load-log entries and vclvirt's steps, the long-polls, deadlines and
configuration errors. The module inside VCL's real code and real vcld: test_vcl_real.py,
test_vcl_vcld.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, computer_domains, make_reservation, wait_for
from tests.e2e.vcl_helpers import ApiServer, api_server, free_port
from vclvirt import dispatch

STAND_IN = ROOT / "tests" / "e2e" / "vcld_stand_in.pl"
MODULE_DIR = ROOT / "contrib" / "vcl"


@dataclass
class VcldRun:
    events: list[dict[str, Any]]
    log: str  # the stand-in's readable lines

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())
        ]

    def result(self, call: str) -> Any:
        (found,) = self.of("result", call=call)
        return found["value"]

    def loadlog(self) -> list[str]:
        return [e["name"] for e in self.of("loadlog")]

    def warnings(self) -> list[str]:
        return [e["message"] for e in self.of("notify", level="WARNING")]


def vcl_data(reservation: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """What vcld's DataStructure would hold for the reservation (DBI gives strings)."""
    computer, image = reservation["computer"], reservation["image"]
    data = {
        "reservation_id": str(reservation["reservation_id"]),
        "request_id": str(reservation["request_id"]),
        "request_state_name": reservation["state"],
        "computer_id": str(computer["id"]),
        "computer_hostname": computer["hostname"],
        "computer_short_name": computer["hostname"].split(".")[0],
        "computer_eth0_mac_address": computer["eth0_mac"],
        "computer_eth1_mac_address": computer["eth1_mac"],
        "computer_private_ip_address": computer["private_ip"],
        "vmhost_short_name": reservation["host"],
        "vmhost_profile_eth0generated": "0",
        "vmhost_profile_eth1generated": "0",
        "image_id": str(image["id"]),
        "image_name": image["name"],
        "imagerevision_revision": str(image["revision"]),
        "imagerevision_id": str(image["revision_id"]),
        "image_prettyname": image["pretty_name"],
        "image_os_type": image["os_type"],
        "image_os_name": image["os_name"],
        "image_minram": str(image["min_ram_mb"]),
        "image_os_minram": "0",
        "image_minprocnumber": str(image["vcpus"]),
        "image_project": image["project"],
        "imagetype_name": "qcow2",
    }
    data.update(changes)
    return data


@pytest.fixture
def api(testbed: Path, tmp_path: Path) -> Iterator[ApiServer]:
    with api_server(tmp_path) as server:
        yield server


@pytest.fixture
def vcld(api: ApiServer, tmp_path: Path) -> Callable[..., VcldRun]:
    """Run the module's methods in a real perl through the stand-in; the configuration file
    is written as the README says (mode 0600, owned by the user running vcld)."""
    runs = 0

    def run(
        data: dict[str, Any],
        calls: list[list[Any]],
        *,
        config: dict[str, Any] | None = None,
        mode: int = 0o600,
        timeout: float = 900,
    ) -> VcldRun:
        nonlocal runs
        runs += 1
        settings = {"api_url": api.url, "api_token": api.token, **(config or {})}
        config_path = tmp_path / f"vclvirt-{runs}.conf"
        config_path.write_text(
            "# vcld's vclvirt module\n"
            + "".join(f"{k} = {v}\n" for k, v in settings.items() if v is not None)
        )
        config_path.chmod(mode)
        case = tmp_path / f"case-{runs}.json"
        case.write_text(json.dumps({"data": data, "calls": calls}))
        done = subprocess.run(
            ["perl", "-I", str(MODULE_DIR), str(STAND_IN), str(case)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "VCLVIRT_VCL_CONFIG": str(config_path)},
            check=False,
        )
        (tmp_path / f"vcld-{runs}.log").write_text(done.stderr)
        assert done.returncode == 0, done.stderr
        return VcldRun([json.loads(line) for line in done.stdout.splitlines()], done.stderr)

    return run


def _remove_image(testbed: Path, name: str) -> None:
    for path in [*testbed.glob(f"hosts/*/images/{name}.*"), testbed / "repository" / name]:
        subprocess.run(["rm", "-rf", str(path)], check=True)


@pytest.mark.slow
def test_vcld_loads_the_test_guest_to_ready_and_captures_it(
    vcld, api, testbed, guest_image, start_worker, cleanup_computers
):
    """load → 1, a full reload, with load-log entries written as vclvirt's steps complete
    and the OS module's post_load after them; then READY, on, image queries, capture into a
    new revision under the name VCL gave it (never renamed), maintenance (computer
    unassigned), no power state."""
    cleanup_computers.append("vcl-mod-guest")
    start_worker("node-a")
    reservation = make_reservation(
        7701, "vcl-mod-guest", guest_image, image_id=900, os_type="linux"
    )
    data = vcl_data(reservation)
    computer_id = data["computer_id"]

    loaded = vcld(data, [["load"]])
    assert loaded.result("load") == 1, loaded.log
    assert loaded.loadlog() == ["startload", "transfervm", "vmsetupconfig", "startvm"]
    record = dispatch.status(7701)
    # vcld has decided to reload: vclvirt must not skip steps on its own node_status
    assert record.reservation["state"] == "reinstall"
    assert {s["state"] for s in record.to_dict()["steps"]} == {"succeeded"}
    steps = record.step_records
    written = {e["name"]: e["t"] for e in loaded.of("loadlog")}
    for entry, step in (("transfervm", "pre_define"), ("vmsetupconfig", "define")):
        # written when the step completed: before the guest had even booted
        assert steps[step]["ended_at"] - 0.01 <= written[entry] < steps["post_load"]["ended_at"]
    assert steps["power_on"]["ended_at"] - 0.01 <= written["startvm"]
    (post_load,) = loaded.of("os", call="post_load")
    assert post_load["t"] > steps["post_load"]["ended_at"] - 0.01
    assert post_load["t"] > written["startvm"]
    wait_requests = [
        line
        for line in api.log_path.read_text().splitlines()
        if '"/v1/reservations/7701/wait"' in line
    ]
    # one long-poll per change of the record, not one every 100 ms of a ~15 s load
    assert 1 <= len(wait_requests) <= 40, len(wait_requests)

    queried = vcld(
        data,
        [
            ["node_status"],
            ["power_status"],
            ["does_image_exist", guest_image],
            ["get_image_size_bytes", guest_image],
            ["get_image_size", guest_image],
        ],
    )
    assert queried.result("node_status") == "READY", queried.log
    assert queried.result("power_status") == "on"
    assert queried.result("does_image_exist") == 1
    master = testbed / f"hosts/node-a/images/{guest_image}.qcow2"
    assert queried.result("get_image_size_bytes") == master.stat().st_blocks * 512
    assert queried.result("get_image_size") == master.stat().st_blocks * 512 // 2**20

    new_name = "linux-VclModCapture900-v1"  # as VCL's web front end names a revision
    _remove_image(testbed, new_name)
    try:
        capture = vcl_data(
            {**reservation, "reservation_id": 7702, "state": "image"},
            image_name=new_name,
            imagerevision_revision="1",
            imagerevision_id="90001",
            imagetype_name="vmdk",
        )
        captured = vcld(capture, [["capture"], ["get_image_size", new_name]])
        assert captured.result("capture") == 1, captured.log
        assert captured.of("os", call="pre_capture")[0]["args"] == {"end_state": "on"}
        # image.pm writes its own name back: the module renames nothing
        assert captured.of("db", call="update_image_name") == []
        assert captured.of("db", call="update_image_type")[0]["args"] == ["900", "qcow2"]
        new_master = testbed / f"hosts/node-a/images/{new_name}.qcow2"
        assert (testbed / "repository" / new_name / f"{new_name}.qcow2").exists()
        assert captured.result("get_image_size") == new_master.stat().st_blocks * 512 // 2**20
        assert computer_domains("vcl-mod-guest") == []  # state image: the domain goes

        cleared = vcld(data, [["post_maintenance_action"], ["power_status"]])
        assert cleared.result("post_maintenance_action") == 1, cleared.log
        assert [e["args"] for e in cleared.of("db")] == [
            [computer_id, "noimage"],
            [computer_id, "NULL"],
        ]
        assert cleared.result("power_status") is None
    finally:
        _remove_image(testbed, new_name)


def test_vcld_load_of_a_missing_image_fails_as_vcld_expects(
    vcld, testbed, start_worker, cleanup_computers
):
    """does_image_exist 0, load false with vclvirt's code, step and hint in the warning, only
    'startload' in the load log, no OS post_load; no size, no partner retrieval."""
    image = "linux-VclModMissing-781-v0"
    _remove_image(testbed, image)
    cleanup_computers.append("vcl-mod-missing")
    start_worker("node-a")
    data = vcl_data(make_reservation(7711, "vcl-mod-missing", image, image_id=781))

    run = vcld(data, [["does_image_exist"], ["load"], ["get_image_size"], ["retrieve_image"]])

    assert run.result("does_image_exist") == 0, run.log
    assert run.result("load") is None
    (failure,) = [w for w in run.warnings() if "failed to load" in w]
    assert f"failed to load {image} on vcl-mod-missing.lab.test" in failure
    assert "reservation 7711" in failure and "at step pre_define" in failure
    assert "[IMAGE_NOT_FOUND]" in failure
    assert "Put the image in the repository or the host's datastore, then retry" in failure
    assert run.loadlog() == ["startload"]
    assert run.of("os") == []
    assert run.result("get_image_size") is None
    assert run.result("retrieve_image") == 0
    record = dispatch.status(7711)
    assert record is not None and record.state == "failed"


def test_reservation_is_built_from_vcls_data(vcld, start_worker, cleanup_computers):
    """min RAM the larger of image and OS, vCPUs 0 → 1, a generated eth0 MAC (kept for the
    object's life, and set in the data as libvirt does), no private IP from '', and a state
    vclvirt does not know sent as 'new'."""
    cleanup_computers.append("vcl-mod-data")
    start_worker("node-a")
    reservation = make_reservation(7731, "vcl-mod-data", "linux-VclModData-783-v0", image_id=783)
    data = vcl_data(
        reservation,
        request_state_name="inuse",
        image_minram="512",
        image_os_minram="1024",
        image_minprocnumber="0",
        vmhost_profile_eth0generated="1",
        computer_private_ip_address="",
        image_project=None,
    )
    run = vcld(data, [["node_status"], ["power_status"]])
    assert run.result("node_status") == "RELOAD", run.log  # no domain yet
    assert run.result("power_status") is None
    sent = dispatch.status(7731).reservation
    assert sent["state"] == "new"
    assert sent["image"]["min_ram_mb"] == 1024 and sent["image"]["vcpus"] == 1
    assert sent["image"]["project"] == "vcl"
    assert sent["computer"]["private_ip"] is None
    generated = sent["computer"]["eth0_mac"]
    assert generated.startswith("52:54:") and generated != reservation["computer"]["eth0_mac"]
    assert sent["computer"]["eth1_mac"] == reservation["computer"]["eth1_mac"]
    assert run.of("set", key="computer_eth0_mac_address") == [
        {**run.of("set")[0], "key": "computer_eth0_mac_address", "value": generated}
    ]
    assert sent["image"]["name"] == reservation["image"]["name"]  # imagerevision.imagename
    assert sent["image"]["revision_id"] == reservation["image"]["revision_id"]


def test_deadline_and_an_operation_already_running(vcld, start_worker):
    """No worker for node-b: the load is false when its deadline passes and says it goes on
    in vclvirt; a second load waits for the first (409) until its own deadline; the first
    ends once a worker comes. The defaults are an hour for a load."""
    data = vcl_data(
        make_reservation(7721, "vcl-mod-late", "linux-VclModLate-782-v0", host="node-b")
    )
    started = time.monotonic()
    late = vcld(data, [["load"]], config={"load_timeout": 3})
    assert late.result("load") is None
    assert time.monotonic() - started >= 3
    (warning,) = [w for w in late.warnings() if "failed to load" in w]
    assert "did not finish within the deadline (state " in warning
    assert "'vclvirt status 7721'" in warning

    again = vcld(data, [["load"]], config={"load_timeout": 3})
    assert again.result("load") is None
    assert any("still running an earlier operation" in e["message"] for e in again.of("notify"))
    assert any(
        "an earlier operation of reservation 7721 is still running" in w for w in again.warnings()
    )

    start_worker("node-b")
    wait_for(
        lambda: (r := dispatch.status(7721)) is not None and r.state == "failed",
        120,
        "the first load to end on node-b",
    )

    (defaults,) = vcld(data, [["config"]]).of("config")
    assert defaults["value"] == {
        "api_url": defaults["value"]["api_url"],
        "load_timeout": 3600,
        "capture_timeout": 7200,
        "operation_timeout": 900,
        "image_query_timeout": 300,
        "poll_seconds": 30,
        "verify_tls": 1,
    }


def test_configuration_and_api_problems_are_named(vcld, api, tmp_path):
    """A token file others can read, a missing token or an unknown key stop the module at
    creation; a wrong token or an API that is down make the call fail with the reason."""
    data = vcl_data(make_reservation(7741, "vcl-mod-conf", "linux-VclModConf-784-v0"))

    readable = vcld(data, [], mode=0o644)
    assert readable.of("new")[0]["ok"] == 0
    assert any("chmod 600" in e["message"] for e in readable.of("notify", level="CRITICAL"))

    no_token = vcld(data, [], config={"api_token": None})
    assert no_token.of("new")[0]["ok"] == 0
    assert any("api_token is not set" in e["message"] for e in no_token.of("notify"))

    unknown = vcld(data, [], config={"colour": "red"})
    assert unknown.of("new")[0]["ok"] == 0
    assert any("line 4" in e["message"] for e in unknown.of("notify", level="CRITICAL"))

    wrong = vcld(data, [["does_image_exist"]], config={"api_token": "not-the-token"})
    assert wrong.result("does_image_exist") is None
    assert any("[UNAUTHORIZED]" in w for w in wrong.warnings())

    down = vcld(
        data,
        [["does_image_exist"]],
        config={"api_url": f"http://127.0.0.1:{free_port()}", "image_query_timeout": 2},
    )
    assert down.result("does_image_exist") is None
    assert any("cannot reach vclvirt's API" in w for w in down.warnings())


def test_perl_module_uses_core_modules_only():
    """The module compiles with perl's own library plus the stand-in's VCL packages."""
    used = {
        line.split()[1].rstrip(";")
        for line in (MODULE_DIR / "VCL/Module/Provisioning/vclvirt.pm").read_text().splitlines()
        if line.startswith("use ") and not line.startswith("use base")
    }
    assert used <= {
        "strict",
        "warnings",
        "5.008000",
        "HTTP::Tiny",
        "JSON::PP",
        "List::Util",
        "Time::HiRes",
        "VCL::utils",
    }, used
    assert shutil.which("perl")
