"""Prometheus metrics of the workers.

Workers run several pool processes, so the metrics use prometheus_client's
multiprocess mode: `vclvirt worker` sets PROMETHEUS_MULTIPROC_DIR before anything
imports prometheus_client, and its main process serves the merged values.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from vclvirt.recovery import queue_keys

STEP_DURATION = Histogram(
    "vclvirt_step_duration_seconds",
    "Time a step took, by step and host",
    ["step", "host"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
STEP_FAILURES = Counter(
    "vclvirt_step_failures_total",
    "Steps that failed for good, by step, host and error code",
    ["step", "host", "code"],
)
MASTER_COPIES = Counter(
    "vclvirt_master_copies_total", "Master images copied into a host's datastore", ["host"]
)
MASTER_BYTES = Counter(
    "vclvirt_master_copy_bytes_total", "Bytes of master images written to hosts", ["host"]
)


class QueueDepthCollector(Collector):
    """Messages waiting in each host's queue, read from Redis at scrape time."""

    def __init__(self, client: redis.Redis, hosts: list[str]) -> None:
        self.client = client
        self.hosts = hosts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "vclvirt_queue_depth", "Tasks waiting in a host's queue", labels=["host"]
        )
        for host in self.hosts:
            depth = sum(int(self.client.llen(key)) for key in queue_keys(host))
            gauge.add_metric([host], float(depth))
        yield gauge


def serve_metrics(port: int, client: redis.Redis, hosts: list[str]) -> None:
    """Serve the merged metrics of all pool processes, plus queue depths, on `port`."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueDepthCollector(client, hosts))
    start_http_server(port, addr="0.0.0.0", registry=registry)  # noqa: S104 - scraped remotely
