"""2. Concurrency on one host: 1, 5, 10, 20 simultaneous loads against one node-a worker
with --concurrency 20 (different computers, master cached, os_type none)."""

from __future__ import annotations

from typing import Any

from bench import common
from bench.common import Context, median, p95, table
from bench.latency import IMAGE, warm_load

SIZES = [1, 5, 10, 20]


def one_round(ctx: Context, size: int) -> tuple[float, list[float]]:
    """Makespan (first enqueue to last domain running) and each load's latency."""
    batch = [common.reservation(f"bench-c{i:02d}", 400 + i, IMAGE) for i in range(size)]
    results = common.load_all(batch)
    ctx.concurrent_loads.extend(results)
    start = min(r.enqueued_at for r in results)
    makespan = max(r.step("power_on")["ended_at"] for r in results) - start
    common.cleanup_computers("bench-c")
    return makespan, [r.to_running for r in results]


def run(ctx: Context) -> list[tuple[str, str]]:
    reps = 1 if ctx.quick else 2
    sizes = SIZES[:2] if ctx.quick else SIZES
    worker = warm_load(ctx, concurrency=max(sizes))
    spans: dict[int, list[float]] = {n: [] for n in sizes}
    latencies: dict[int, list[float]] = {n: [] for n in sizes}
    try:
        one_round(ctx, max(sizes))  # warm-up: every pool child opens its connections
        for _ in range(reps):
            for size in sizes:  # interleaved 1 5 10 20 1 5 10 20 ...
                span, lat = one_round(ctx, size)
                spans[size].append(span)
                latencies[size].extend(lat)
    finally:
        worker.stop()
        common.cleanup_computers()
    one = median(spans[1])
    rows: list[list[Any]] = [
        [
            n,
            len(spans[n]),
            median(spans[n]),
            median(spans[n]) / one,
            median(latencies[n]),
            p95(latencies[n]),
            n * one / median(spans[n]),
        ]
        for n in sizes
    ]
    body = table(
        [
            "loads at once",
            "rounds",
            "makespan median s",
            "makespan / 1 load",
            "latency median s",
            "latency p95 s",
            "speed-up vs serial",
        ],
        rows,
    )
    body += (
        f"\n\nOne `vclvirt worker --host node-a --concurrency {max(sizes)}` (prefork), warmed "
        f"with one round of {max(sizes)} first; {reps} interleaved rounds per size; latency is "
        f"enqueue to domain running; domains are 512 MiB (the XML builder's floor: "
        f"max(512, min_ram_mb)), TCG, left running until the round ends; "
        f"{max(sizes)}-load makespan / 1-load: **{median(spans[max(sizes)]) / one:.1f}x**."
    )
    return [("2. Concurrency on one host", body)]
