"""The fault suite: whole workers killed at every step, the broker restarted, hosts and
libvirtd going away, concurrent enqueues — each with the settings a deployment gets,
each checked on the host (domains, overlays, .part files) as well as in the record.

Workers here run with the deployed lease, heartbeat, reconcile and deadline settings.
A step is held open (a step hook of tests/hold_worker.py) only so that a fault lands inside it.
Hosts away for 3 minutes, losing power or filling their disk are on the fleet, with real
link cuts (tests/fleet/test_fleet_faults.py).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.conftest import (
    computer_domains,
    make_reservation,
    repository_image,
    uncached_image,
    vclvirt_cli,
    wait_for,
)
from tests.outages import restart_redis, start_testbed, stop_host
from vclvirt import dispatch
from vclvirt.operations.load import LOAD_STEPS


def _at(rid: int, step: str) -> bool:
    record = dispatch.status(rid)
    return bool(record and record.current_step == step and record.state == "running")


def _host_state(testbed: Path, host: str, computer: str) -> dict[str, Any]:
    """What the host holds for the computer, read with libvirt and the file system."""
    conn = libvirt.open("qemu:///system")
    try:
        domains = {
            name: conn.lookupByName(name).isActive() == 1 for name in computer_domains(computer)
        }
    finally:
        conn.close()
    base = testbed / "hosts" / host
    return {
        "domains": domains,
        "overlays": sorted(p.name for p in (base / "vms").glob(f"{computer}_*")),
        "xml": sorted(p.name for p in (base / "xml").glob(f"{computer}_*")),
        "parts": sorted(p.name for p in base.rglob("*.part")),
    }


def _backing(overlay: Path) -> str:
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(overlay)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return str(json.loads(info)["backing-filename"])


def test_a_whole_worker_killed_at_any_step_is_finished_by_the_next_worker(
    testbed, start_worker, cleanup_computers, holds
) -> None:
    """Seven loads, each in a different step (pre_define in the middle of a real copy of
    an uncached image), when the worker's whole process group is SIGKILLed: a worker
    started afterwards finishes every load within 60 s of the kill (plus the step's own
    time); on the host one running domain per computer, its overlay, its XML, no .part."""
    env, hold = holds
    image = "linux-E2eKillAt-611-v0"
    repository_image(testbed, image)
    copied = "linux-E2eKillCopyBig-612-v0"
    uncached_image(testbed, copied, "3G", "1900M", "node-a")
    loads = {}
    for offset, step in enumerate(LOAD_STEPS):
        rid, computer = 8901 + offset, f"kill-{offset}"
        cleanup_computers.append(computer)
        name, image_id = (copied, 612) if step == "pre_define" else (image, 611)
        loads[rid] = (step, computer, make_reservation(rid, computer, name, image_id=image_id))
        if step != "pre_define":
            hold(rid, step)
    first = start_worker("node-a", concurrency=len(loads), **env)
    held = {rid: load for rid, load in loads.items() if load[0] != "pre_define"}
    for _, _, reservation in held.values():
        dispatch.load(reservation)
    for rid, (step, _, _) in held.items():
        wait_for(lambda rid=rid, step=step: _at(rid, step), 120, f"reservation {rid} at {step}")
    # Last, the load that copies a master (1.9 GB of data): killed once the copy is under way.
    (copying,) = set(loads) - set(held)
    dispatch.load(loads[copying][2])
    part = testbed / "hosts/node-a/images" / f"{copied}.qcow2.part"
    deadline = time.monotonic() + 120
    while not (part.exists() and part.stat().st_size > 0):
        assert time.monotonic() < deadline, "the master copy did not start"
        time.sleep(0.01)

    first.kill()
    killed_at = time.time()
    start_worker("node-a")
    finals = {rid: dispatch.Handle(rid, "").wait(timeout=240) for rid in loads}

    for rid, (step, computer, _) in loads.items():
        final = finals[rid]
        assert final.state == "succeeded", (step, final.to_dict())
        entry = final.step_records[step]
        assert entry["attempt"] == 2 and entry["interrupted"] == 1, (step, entry)
        assert entry["started_at"] - killed_at < 60, (step, entry["started_at"] - killed_at)
        seconds = (final.finished_at or 0) - killed_at
        print(f"killed at {step:<24} finished {seconds:5.1f} s after the kill")
        state = _host_state(testbed, "node-a", computer)
        base = f"{computer}_{final.reservation['image']['id']}-v0"
        assert state == {
            "domains": {next(iter(state["domains"])): True},
            "overlays": [f"{base}.qcow2"],
            "xml": [f"{base}.xml"],
            "parts": [],
        }, (step, state)
        master = testbed / "hosts/node-a/images" / f"{final.reservation['image']['name']}.qcow2"
        assert _backing(testbed / "hosts/node-a/vms" / f"{base}.qcow2") == str(master)
    leftover = subprocess.run(["pgrep", "-f", f"qemu-img convert.*{copied}"], check=False)
    assert leftover.returncode == 1, "the dead worker's copy is still running on the host"


def test_a_step_longer_than_the_lease_is_never_handed_to_a_second_worker(
    testbed, start_worker, cleanup_computers, holds
) -> None:
    """A step held for 35 s (longer than the 30 s lease) on a live worker while a second
    worker of the host runs: it is not dispatched again; it runs once and finishes."""
    env, hold = holds
    image = "linux-E2eLongStep-613-v0"
    repository_image(testbed, image)
    cleanup_computers.append("e2e-long")
    hold(8910, "define")
    workers = [start_worker("node-a", **env), start_worker("node-a", **env)]
    handle = dispatch.load(make_reservation(8910, "e2e-long", image, image_id=613))
    wait_for(lambda: _at(8910, "define"), 60, "the load to reach define")
    started = time.monotonic()
    wait_for(lambda: time.monotonic() - started > 35, 60, "35 s of a held step")
    assert dispatch.status(8910).current_step == "define"  # type: ignore[union-attr]
    hold(8910, "define", False)

    final = handle.wait(120)

    assert final.state == "succeeded", final.to_dict()
    assert {s["attempt"] for s in final.to_dict()["steps"]} == {1}
    assert final.generation == 1  # never dispatched again
    ran = [w for w in workers if any(line.get("reservation_id") == 8910 for line in w.log_lines())]
    assert len(ran) == 1, "both workers touched the load"


def test_no_live_worker_is_shown_as_waiting_then_fails_no_worker_and_retry_takes_it(
    testbed, start_worker, cleanup_computers, monkeypatch
) -> None:
    """No worker for node-b: status, the API's record and `failed` say "waiting: no live
    worker for host node-b since …" with the deployed deadline; past the deadline (here
    shortened for a node-a worker) that worker's reconciler fails the load NO_WORKER, and
    a retry runs it once a worker is there."""
    image = "linux-E2eNoWorker-614-v0"
    repository_image(testbed, image)
    cleanup_computers.append("e2e-noworker")
    handle = dispatch.load(
        make_reservation(8920, "e2e-noworker", image, image_id=614, host="node-b")
    )
    record = handle.status()
    assert record is not None and record.state == "waiting"
    assert record.waiting and record.waiting["reason"] == "no live worker for host node-b"
    assert record.waiting["fails_at"] == pytest.approx(record.waiting["since"] + 900)
    assert 8920 in [r.reservation_id for r in dispatch.failed()]
    shown = vclvirt_cli("status", "8920")
    assert "waiting: no live worker for host node-b since" in shown.stdout, shown.stdout

    # Reading it never fails it, even past the deadline; the reconciler of a worker of
    # another host does (its deadline shortened here).
    assert dispatch.status(8920).state == "waiting"  # type: ignore[union-attr]
    start_worker("node-a", VCLVIRT_NO_WORKER_DEADLINE="1")
    wait_for(lambda: (s := dispatch.status(8920)) and s.state == "failed", 30, "NO_WORKER")
    failed = dispatch.status(8920)
    assert failed is not None and failed.error and failed.error["code"] == "NO_WORKER"

    start_worker("node-b")
    final = dispatch.retry(8920).wait(120)
    assert final.state == "succeeded", final.to_dict()
    assert len(computer_domains("e2e-noworker")) == 1


def test_a_broker_restart_with_30_loads_queued_and_no_worker_loses_none(
    testbed, start_worker, cleanup_computers
) -> None:
    """30 loads queued while no worker runs; Redis restarts (append-only file); a worker
    started afterwards finishes all 30."""
    image = "linux-E2eQueued-615-v0"
    repository_image(testbed, image)
    rids = list(range(8930, 8960))
    for rid in rids:
        cleanup_computers.append(f"q30-{rid}")
        dispatch.load(make_reservation(rid, f"q30-{rid}", image, image_id=615, host="node-b"))
    away = restart_redis()
    start_worker("node-b", concurrency=4)

    finals = [dispatch.Handle(rid, "").wait(300) for rid in rids]

    print(f"broker away {away:.2f} s; {sum(f.state == 'succeeded' for f in finals)}/30 succeeded")
    assert [f.state for f in finals] == ["succeeded"] * 30
    for rid in rids:
        assert len(computer_domains(f"q30-{rid}")) == 1


def test_a_broker_restart_while_loads_run_loses_none_and_runs_no_step_twice_at_once(
    testbed, start_worker, cleanup_computers, holds
) -> None:
    """10 loads under way (two held inside define) when Redis restarts: all finish, and
    no step of any load was running in two places at the same time."""
    env, hold = holds
    image = "linux-E2eRunning-616-v0"
    repository_image(testbed, image)
    rids = list(range(8960, 8970))
    for rid in rids:
        cleanup_computers.append(f"run10-{rid}")
    hold(8960, "define")
    hold(8961, "define")
    worker = start_worker("node-a", concurrency=4, **env)
    for rid in rids:
        dispatch.load(make_reservation(rid, f"run10-{rid}", image, image_id=616))
    wait_for(lambda: _at(8960, "define") and _at(8961, "define"), 60, "two loads in define")

    away = restart_redis()
    hold(8960, "define", False)
    hold(8961, "define", False)
    finals = [dispatch.Handle(rid, "").wait(240) for rid in rids]

    print(f"broker away {away:.2f} s while loads ran")
    assert [f.state for f in finals] == ["succeeded"] * 10, [f.to_dict() for f in finals]
    _assert_no_step_ran_twice_at_once(worker.log_lines(), rids)
    for rid in rids:
        assert len(computer_domains(f"run10-{rid}")) == 1


def _assert_no_step_ran_twice_at_once(lines: list[dict[str, Any]], rids: list[int]) -> None:
    """From the workers' log: per reservation, a step starts only after the previous start
    of a step of that reservation has ended (succeeded, failed, retrying) or was lost."""
    open_steps: dict[int, str] = {}
    for line in lines:
        rid, event = line.get("reservation_id"), line.get("event")
        if rid not in rids:
            continue
        if event == "step_started":
            assert rid not in open_steps, f"{rid}: {line['step']} began while {open_steps[rid]} ran"
            open_steps[rid] = line["step"]
        elif event in ("step_succeeded", "step_failed", "step_retrying", "lease_lost"):
            open_steps.pop(rid, None)


def test_a_host_unreachable_for_20_s_mid_load_is_waited_out(
    testbed, start_worker, cleanup_computers, holds
) -> None:
    """node-b's sshd (and every connection it served) gone for 20 s while a load is in
    pre_define: the load waits with backoff and finishes by itself; the pooled
    connections are opened again."""
    env, hold = holds
    image = "linux-E2eOutage-617-v0"
    repository_image(testbed, image)
    cleanup_computers.append("e2e-outage")
    hold(8970, "pre_define")
    start_worker("node-b", **env)
    handle = dispatch.load(make_reservation(8970, "e2e-outage", image, image_id=617, host="node-b"))
    wait_for(lambda: _at(8970, "pre_define"), 60, "the load to reach pre_define")
    stop_host(testbed, "node-b")
    back = threading.Timer(20, start_testbed)
    back.start()
    try:
        hold(8970, "pre_define", False)
        final = handle.wait(timeout=240)
    finally:
        back.join()
    assert final.state == "succeeded", final.to_dict()
    assert final.step_records["pre_define"]["transient_failures"] >= 1
    assert len(computer_domains("e2e-outage")) == 1


def test_twelve_identical_posts_at_once_make_one_load(testbed, start_worker, cleanup_computers):
    """A scheduler retrying its call: 12 concurrent identical POST /v1/loads → exactly one
    202 (the others 409) and one load."""
    from fastapi.testclient import TestClient

    from vclvirt.api import create_api
    from vclvirt.config.settings import Settings

    image = "linux-E2eTwelve-619-v0"
    repository_image(testbed, image)
    cleanup_computers.append("e2e-twelve")
    start_worker("node-a")
    token = "t" * 40
    client = TestClient(create_api(Settings(api_token=token)))
    body = make_reservation(8980, "e2e-twelve", image, image_id=619)
    barrier = threading.Barrier(12)
    codes: list[int] = []

    def post() -> None:
        barrier.wait()
        response = client.post("/v1/loads", json=body, headers={"Authorization": f"Bearer {token}"})
        codes.append(response.status_code)

    threads = [threading.Thread(target=post) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(codes) == [202] + [409] * 11
    final = dispatch.Handle(8980, "").wait(120)
    assert final.state == "succeeded" and final.generation == 1
    assert len(computer_domains("e2e-twelve")) == 1


@pytest.mark.slow
def test_libvirtd_restarted_mid_load_is_waited_out(
    testbed, start_worker, cleanup_computers, holds
) -> None:
    """libvirtd restarted while a load is in define: the pooled libvirt connection is
    found dead, reopened, and the load finishes by itself."""
    from tests.outages import restart_libvirtd

    env, hold = holds
    image = "linux-E2eLibvirtd-620-v0"
    repository_image(testbed, image)
    cleanup_computers.append("e2e-libvirtd")
    hold(8990, "define")
    start_worker("node-a", **env)
    handle = dispatch.load(make_reservation(8990, "e2e-libvirtd", image, image_id=620))
    wait_for(lambda: _at(8990, "define"), 60, "the load to reach define")
    restart_libvirtd()
    hold(8990, "define", False)

    final = handle.wait(timeout=300)

    assert final.state == "succeeded", final.to_dict()
    assert len(computer_domains("e2e-libvirtd")) == 1


def test_a_file_found_at_the_overlay_path_is_never_handed_to_the_new_user(
    testbed, start_worker, cleanup_computers
) -> None:
    """Whatever is at the computer's overlay path before a load (a previous user's disk,
    a dead attempt's half-made file) is replaced by a fresh overlay of the master."""
    image = "linux-E2eFreshDisk-621-v0"
    repository_image(testbed, image)
    cleanup_computers.append("e2e-fresh")
    overlay = testbed / "hosts/node-a/vms/e2e-fresh_621-v0.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(overlay), "16M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 1M", str(overlay)],
        check=True,
        capture_output=True,
    )
    start_worker("node-a")

    final = dispatch.load(make_reservation(8991, "e2e-fresh", image, image_id=621)).wait(120)

    assert final.state == "succeeded", final.to_dict()
    master = testbed / "hosts/node-a/images" / f"{image}.qcow2"
    assert _backing(overlay) == str(master)
    read = subprocess.run(
        ["qemu-io", "-r", "-U", "-f", "qcow2", "-c", "read -P 0x42 0 1M", str(overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Pattern verification failed" in read.stdout, read.stdout  # the old data is gone
