"""Failed reservations are listed and re-run from the step that failed; a host that is
down for a while is retried by the load itself (transient error, backoff, deadline)."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import make_reservation, repository_image, vclvirt_cli, wait_for
from tests.outages import start_testbed, stop_host
from vclvirt import dispatch


def test_failed_load_is_listed_and_retried_from_its_failed_step(
    testbed, start_worker, cleanup_computers
):
    """A load fails at pre_define (image missing); once the image is there, `vclvirt retry`
    runs pre_define and the later steps only, and the reservation succeeds."""
    image = "linux-E2eLateImage-640-v0"
    for stale in testbed.glob(f"**/{image}*"):
        subprocess.run(["rm", "-rf", str(stale)], check=True)
    cleanup_computers.append("e2e-retry")
    start_worker("node-a")
    first = dispatch.load(make_reservation(7401, "e2e-retry", image, image_id=640)).wait(120)
    assert (first.state, first.failed_step) == ("failed", "pre_define")
    assert first.error and first.error["code"] == "IMAGE_NOT_FOUND"
    listed = vclvirt_cli("failed", "--json")
    assert 7401 in [r["reservation_id"] for r in json.loads(listed.stdout)]
    before = vclvirt_cli("status", "7401")
    assert before.returncode == 1 and "IMAGE_NOT_FOUND" in before.stdout

    repository_image(testbed, image)
    retried = vclvirt_cli("retry", "7401", "--wait", "--timeout", "180")

    assert retried.returncode == 0, retried.stdout + retried.stderr
    final = dispatch.status(7401)
    assert final is not None and final.state == "succeeded"
    records = final.step_records
    assert records["node_status"]["attempt"] == 1  # earlier steps were not run again
    assert records["delete_existing_domains"]["attempt"] == 1
    assert records["pre_define"]["state"] == "succeeded"
    assert final.history[-1]["state"] == "failed"
    assert final.history[-1]["error_code"] == "IMAGE_NOT_FOUND"
    still_failed = json.loads(vclvirt_cli("failed", "--json").stdout)
    assert 7401 not in [r["reservation_id"] for r in still_failed]
    after = vclvirt_cli("status", "7401")
    assert after.returncode == 0, after.stdout
    assert "reservation 7401: succeeded" in after.stdout
    assert "earlier: load failed at pre_define [IMAGE_NOT_FOUND]" in after.stdout


def test_run_reservation_task_sent_by_name_retries_like_flower_would(
    testbed, start_worker, cleanup_computers
):
    """`vclvirt.run_reservation` sent by name (as from Flower's send-task) re-runs the
    failed reservation on its host's worker."""
    from vclvirt import composition

    app = composition.current().app

    image = "linux-E2eSentTask-641-v0"
    for stale in testbed.glob(f"**/{image}*"):
        subprocess.run(["rm", "-rf", str(stale)], check=True)
    cleanup_computers.append("e2e-sent")
    start_worker("node-a")
    handle = dispatch.load(make_reservation(7402, "e2e-sent", image, image_id=641))
    assert handle.wait(120).state == "failed"
    repository_image(testbed, image)

    app.send_task("vclvirt.run_reservation", kwargs={"reservation_id": 7402})

    wait_for(
        lambda: (s := dispatch.status(7402)) and s.state == "succeeded",
        180,
        "the re-run reservation to succeed",
    )


def test_host_down_for_a_while_is_retried_with_backoff(testbed, start_worker, cleanup_computers):
    """With node-b's sshd stopped (and its connections cut) the first step fails
    transiently and is retried with the default backoff; once sshd is back the load
    completes, and every log line of its steps names the reservation."""
    image = "linux-E2eHostDown-642-v0"
    repository_image(testbed, image)
    cleanup_computers.append("e2e-down")
    worker = start_worker("node-b")
    stop_host(testbed, "node-b")
    try:
        handle = dispatch.load(
            make_reservation(7403, "e2e-down", image, image_id=642, host="node-b")
        )
        wait_for(
            lambda: (s := handle.status()) and s.state == "retrying",
            60,
            "the first step to be retried",
        )
    finally:
        start_testbed()
    final = handle.wait(timeout=180)
    assert final.state == "succeeded", final.to_dict()
    first_step = final.step_records["node_status"]
    assert first_step["attempt"] >= 2
    assert first_step["transient_failures"] >= 1

    every = worker.log_lines()
    lines = [line for line in every if line.get("reservation_id") == 7403]
    # Celery's own records come out as the same JSON lines, with the task context bound
    assert any(line.get("logger", "").startswith("celery") for line in lines)
    retries = [line for line in lines if line.get("event") == "step_retrying"]
    assert retries and all(
        r["code"] in ("NODE_UNREACHABLE", "LIBVIRT_UNAVAILABLE") for r in retries
    )
    steps = [line for line in lines if str(line.get("event", "")).startswith("step_")]
    assert steps
    for line in steps:
        assert {"task_id", "step", "host", "computer", "request_id"} <= line.keys(), line
        assert line["host"] == "node-b"
