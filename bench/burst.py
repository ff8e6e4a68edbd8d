"""6. Bursts in order: every host gets a burst of loads at once (libvirt's test:///default
driver, local transport, one worker per host, one load at a time), enqueued in one bulk
call. Served first come, first served, load k of a host is done at k times one load's time;
the table compares enqueue → done with that ideal."""

from __future__ import annotations

import time

from bench import common
from bench.common import Context, median, p95, table
from bench.scale import IMAGE, wait_all


def run(ctx: Context) -> list[tuple[str, str]]:
    from vclvirt import dispatch

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
    try:
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
        "A started load runs all its steps before the worker takes the next load."
    )
    return [("6. Bursts in order (test:///default, one worker per host)", body)]
