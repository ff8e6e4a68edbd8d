"""Prometheus metrics served by a real worker: step durations, failures, copies, queues."""

from __future__ import annotations

import re
import socket

import httpx

from tests.conftest import make_reservation, uncached_image
from vclvirt import dispatch
from vclvirt.operations.load import LOAD_STEPS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _value(metrics: str, name: str, **labels: str) -> float:
    """The sample `name{labels…}`; fails the test when absent."""
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in:\n{metrics}")


def test_worker_metrics_after_a_load_and_a_failure(testbed, start_worker, cleanup_computers):
    """After one load (with a master copy) and one failed load, the worker's /metrics has the
    step durations, the copy and its bytes, the failure by code, and node-a's queue depth."""
    image = "linux-E2eMetrics-660-v0"
    uncached_image(testbed, image, "16M", "4M", "node-a")
    cleanup_computers.extend(["e2e-metrics", "e2e-metrics2"])
    port = _free_port()
    start_worker("node-a", VCLVIRT_METRICS_PORT=str(port))

    ok = dispatch.load(make_reservation(7601, "e2e-metrics", image, image_id=660)).wait(120)
    bad = dispatch.load(
        make_reservation(7602, "e2e-metrics2", "linux-E2eNoSuch-661-v0", image_id=661)
    ).wait(120)
    assert (ok.state, bad.state) == ("succeeded", "failed")

    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for step in LOAD_STEPS:
        assert _value(metrics, "vclvirt_step_duration_seconds_count", step=step, host="node-a") >= 1
    assert _value(metrics, "vclvirt_master_copies_total", host="node-a") == 1
    assert _value(metrics, "vclvirt_master_copy_bytes_total", host="node-a") >= 4 * 2**20
    assert (
        _value(
            metrics,
            "vclvirt_step_failures_total",
            step="pre_define",
            host="node-a",
            code="IMAGE_NOT_FOUND",
        )
        == 1
    )
    assert _value(metrics, "vclvirt_queue_depth", host="node-a") == 0
    assert re.search(r'^vclvirt_step_duration_seconds_bucket\{.*le="\+Inf"', metrics, re.M)
