"""4. Scale simulation: many hosts on libvirt's test:///default driver, local transport, a few
worker processes serving many hosts each; thousands of loads (os_type none)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import redis

from bench import common
from bench.common import Context, median, p95, table

IMAGE = f"{common.IMAGE_PREFIX}Sim-7005-v0"


class RssSampler(threading.Thread):
    """Peak of the summed RSS of all workers (main processes and pool children), every 0.5 s."""

    def __init__(self, workers: list[common.Worker]) -> None:
        super().__init__(daemon=True)
        self.workers, self.peak, self.running = workers, (0, 0), True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, total_memory(self.workers))
            time.sleep(0.5)


def total_memory(workers: list[common.Worker]) -> tuple[int, int]:
    sizes = [w.memory() for w in workers]
    return sum(s[0] for s in sizes), sum(s[1] for s in sizes)


def mib(pair: tuple[int, int]) -> str:
    return f"{pair[0] / 2**20:.0f} / {pair[1] / 2**20:.0f}"


def wait_all(ids: list[int], timeout: float) -> float:
    """Wait until every reservation's record is finished (one pipelined HGET per round)."""
    client = redis.Redis.from_url(common.BROKER)
    pending, deadline = list(ids), time.monotonic() + timeout
    while pending:
        pipe = client.pipeline()
        for rid in pending:
            pipe.hget(f"vclvirt:reservation:{rid}", "state")
        states = pipe.execute()
        pending = [
            rid
            for rid, s in zip(pending, states, strict=True)
            if s not in (b"succeeded", b"failed", b"superseded")
        ]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} simulated loads did not finish in {timeout}s")
        time.sleep(0.5)
    return time.time()


def run(ctx: Context, loads: int | None = None) -> list[tuple[str, str]]:
    from vclvirt import dispatch

    hosts = ctx.sim_hosts
    per_host = 5 if ctx.quick else 20
    total = loads or len(hosts) * per_host
    n_workers, per_worker = (2, 10) if ctx.quick else (5, 20)
    master = ctx.workdir / "sim-master.qcow2"
    common.run(["qemu-img", "create", "-q", "-f", "qcow2", str(master), "1M"])
    for host in hosts:
        copy = ctx.workdir / "sim" / host / "images" / f"{IMAGE}.qcow2"
        common.run(["cp", str(master), str(copy)])
    # test:///default keeps its domains per process: one pool child per worker, never
    # recycled, so every step of a load meets what its earlier steps made.
    workers = [
        common.start_worker(
            ctx,
            hosts[i * per_worker : (i + 1) * per_worker],
            1,
            f"sim{i}",
            env={"VCLVIRT_MAX_TASKS_PER_CHILD": "0"},
        )
        for i in range(n_workers)
    ]
    idle = total_memory(workers)
    sampler = RssSampler(workers)
    sampler.start()
    batch = [
        common.reservation(
            f"bench-s{i % len(hosts):03d}-{i // len(hosts)}",
            i + 1,
            IMAGE,
            host=hosts[i % len(hosts)],
            image_id=7005,
        )
        for i in range(total)
    ]
    try:
        started = time.time()
        enqueued_at = []
        for res in batch:
            enqueued_at.append(time.time())
            dispatch.load(res)
        dispatched = time.time() - started
        finished = wait_all([r["reservation_id"] for r in batch], timeout=1200)
        sampler.running = False
        end = total_memory(workers)
    finally:
        sampler.running = False
        for w in workers:
            w.stop()
    results = [
        common.LoadResult.of(t, dispatch.status(r["reservation_id"]))
        for t, r in zip(enqueued_at, batch, strict=True)
    ]
    failed = [r for r in results if not r.ok]
    makespan = finished - started
    summary = table(
        [
            "hosts",
            "loads",
            "workers x hosts x concurrency",
            "dispatch rate /s",
            "completion s",
            "loads/s",
            "steps/s",
            "failed",
            "RSS / PSS idle MiB",
            "RSS / PSS peak MiB",
            "RSS / PSS end MiB",
        ],
        [
            [
                len(hosts),
                total,
                f"{n_workers} x {per_worker} x 1",
                total / dispatched,
                makespan,
                total / makespan,
                total * len(common.step_names(results)) / makespan,
                len(failed),
                mib(idle),
                mib(sampler.peak),
                mib(end),
            ]
        ],
    )
    summary += (
        "\n\nDispatch rate: this process enqueueing the loads one at a time while the "
        f"{n_workers} workers already run them on the same two cores (benchmark 6 measures "
        "dispatch with no worker consuming)."
        f"\n\nMemory: summed over all {n_workers} workers (main process + pool child each), "
        "from /proc/<pid>/smaps_rollup; a pool child is never recycled here "
        "(VCLVIRT_MAX_TASKS_PER_CHILD=0)."
    )
    if loads or ctx.quick:
        summary += f"\n\nScaled down: {total} loads instead of 100 hosts x 20 = 2000."
    steps = step_table([r for r in results if r.ok])
    return [("4. Scale simulation (test:///default, local transport)", summary + "\n\n" + steps)]


def step_table(results: list[common.LoadResult]) -> str:
    steps = common.step_names(results)
    durations: dict[str, list[float]] = defaultdict(list)
    gaps: dict[str, list[float]] = defaultdict(list)
    for r in results:
        for step in steps:
            if r.step(step).get("duration_s") is not None:
                durations[step].append(r.step(step)["duration_s"] * 1000)
        for name, gap in common.step_gaps(r):
            gaps[name.split("→")[1]].append(gap * 1000)
    rows: list[list[Any]] = [
        [s, median(durations[s]), p95(durations[s]), median(gaps[s]), p95(gaps[s])] for s in steps
    ]
    inner = [g for s in steps[1:] for g in gaps[s]]
    return (
        table(
            ["step", "in step p50 ms", "in step p95 ms", "gap before p50 ms", "gap before p95 ms"],
            rows,
        )
        + f"\n\nGap before node_status = enqueue → first step (queue wait, grows with the backlog);"
        f" gaps between steps: p50 {median(inner):.1f} ms, p95 {p95(inner):.1f} ms. With the test"
        f" driver almost free, the in-step time is vclvirt code, the Redis lock and status"
        f" writes excluded, plus the local commands a step runs (pre_define: find, mkdir,"
        f" qemu-img info/create of the overlay)."
    )
