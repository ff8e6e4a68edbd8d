"""6. Bursts in order: every host gets a burst of loads at once (libvirt's test:///default
driver, local transport, one worker per host, one load at a time), enqueued in one bulk
call. Served first come, first served, load k of a host is done at k times one load's time;
the table compares enqueue → done with that ideal."""

from __future__ import annotations

import time
from typing import Any

from bench import common
from bench.common import Context, median, p95, table
from bench.scale import IMAGE, wait_all


def dispatch_rates(ctx: Context) -> str:
    """Enqueues per second from one process, one at a time and in bulk, with no worker
    consuming (the bench's own Redis database is flushed at its next start)."""
    from vclvirt import dispatch

    hosts = ctx.sim_hosts[10:20]
    count = 200 if ctx.quick else 1000

    def batch(tag: str, first_id: int) -> list[dict[str, Any]]:
        return [
            common.reservation(
                f"bench-{tag}{i % len(hosts):02d}-{i // len(hosts)}",
                first_id + i,
                IMAGE,
                host=hosts[i % len(hosts)],
                image_id=7005,
            )
            for i in range(count)
        ]

    dispatch.load(batch("dw", 20000)[0])  # connections opened, scripts loaded
    singles, bulk = batch("d1", 30000), batch("d2", 40000)
    started = time.perf_counter()
    for reservation in singles:
        dispatch.load(reservation)
    single_rate = count / (time.perf_counter() - started)
    started = time.perf_counter()
    dispatch.load_many(bulk[:100])  # the API's and the CLI's bulk limit is 100 per call
    for first in range(100, count, 100):
        dispatch.load_many(bulk[first : first + 100])
    bulk_rate = count / (time.perf_counter() - started)
    return (
        f"Dispatch from one process, no worker consuming: {count} loads one at a time "
        f"**{single_rate:.0f}/s**; {count} in bulk calls of 100 **{bulk_rate:.0f}/s** "
        "(each load validated, its record begun atomically, its message published)."
    )


def run(ctx: Context) -> list[tuple[str, str]]:
    from vclvirt import dispatch

    rates = dispatch_rates(ctx)
    hosts = ctx.sim_hosts[: 4 if ctx.quick else 10]
    per_host = 5 if ctx.quick else 20
    master = ctx.workdir / "burst-master.qcow2"
    common.run(["qemu-img", "create", "-q", "-f", "qcow2", str(master), "1M"])
    for host in hosts:
        common.run(
            ["cp", str(master), str(ctx.workdir / "sim" / host / "images" / f"{IMAGE}.qcow2")]
        )
    # test:///default keeps its domains per process: one pool child per worker, kept.
    workers = [
        common.start_worker(
            ctx, [host], 1, f"burst-{host}", env={"VCLVIRT_MAX_TASKS_PER_CHILD": "0"}
        )
        for host in hosts
    ]
    # Enqueue order: round robin over the hosts, so every host's k-th load is its k-th.
    batch = [
        common.reservation(
            f"bench-b{h:02d}-{k}", k * len(hosts) + h + 1, IMAGE, host=host, image_id=7005
        )
        for k in range(per_host)
        for h, host in enumerate(hosts)
    ]
    # Warm-up, not timed: one load per host, so the burst meets what a running site has
    # (pool processes past their first load, the dispatcher's connections open).
    warm_up = [
        common.reservation(f"bench-w{h:02d}", 9000 + h, IMAGE, host=host, image_id=7005)
        for h, host in enumerate(hosts)
    ]
    try:
        dispatch.load_many(warm_up)
        wait_all([r["reservation_id"] for r in warm_up], timeout=300)
        started = time.time()
        answers = dispatch.load_many(batch)
        enqueued = time.time()
        wait_all([r["reservation_id"] for r in batch], timeout=1200)
    finally:
        for worker in workers:
            worker.stop()
    assert all(isinstance(a, dispatch.Handle) for a in answers), answers
    results = [common.LoadResult.of(started, dispatch.status(r["reservation_id"])) for r in batch]
    failed = [r for r in results if not r.ok]
    # One load's time: what a worker spends on it, first step's start to the end.
    alone = median(
        [float(r.record["finished_at"]) - float(r.step(r.steps[0])["started_at"]) for r in results]
    )
    # Between loads on one host: the previous load's end to the next one's first step.
    between = [
        float(later.step(later.steps[0])["started_at"]) - float(earlier.record["finished_at"])
        for h in range(len(hosts))
        for earlier, later in zip(results[h :: len(hosts)], results[h + len(hosts) :: len(hosts)])
    ]
    actual, ideal, ratios = [], [], []
    for index, result in enumerate(results):
        position = index // len(hosts) + 1  # k: this load's place on its host
        actual.append(result.to_finished)
        ideal.append(position * alone)
        ratios.append(result.to_finished / (position * alone))
    body = table(
        [
            "hosts x loads",
            "bulk enqueue /s",
            "one load s",
            "enqueue→done p50 s",
            "ideal p50 s",
            "p50 ÷ ideal",
            "enqueue→done p95 s",
            "ideal p95 s",
            "p95 ÷ ideal",
            "failed",
        ],
        [
            [
                f"{len(hosts)} x {per_host}",
                len(batch) / (enqueued - started),
                alone,
                median(actual),
                median(ideal),
                median(actual) / median(ideal),
                p95(actual),
                p95(ideal),
                p95(actual) / p95(ideal),
                len(failed),
            ]
        ],
    )
    body += (
        f"\n\nIdeal FIFO: the k-th load of a host done k x {alone * 1000:.0f} ms (the median "
        "time a worker spends on one load in this run) after the burst was enqueued. "
        f"Per load, enqueue→done ÷ ideal: median {median(ratios):.2f}, p95 {p95(ratios):.2f}. "
        "A started load runs all its steps before the worker takes the next load. "
        "The bulk enqueue rate above is measured while the workers already run the burst's "
        "first loads on the same two cores. "
        f"Between two loads of a host (end of one → first step of the next): p50 "
        f"{median(between) * 1000:.0f} ms, p95 {p95(between) * 1000:.0f} ms."
    )
    return [("6. Bursts in order (test:///default, one worker per host)", f"{body}\n\n{rates}")]
