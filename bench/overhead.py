"""5. Orchestration overhead per step in the real chain (SSH + libvirt): the time between
one step's end and the next one's start, from the status records of benchmarks 1 and 2."""

from __future__ import annotations

from collections import defaultdict

from bench import common
from bench.common import Context, median, p95, table


def gap_rows(loads: list[common.LoadResult]) -> tuple[list[list[object]], list[float]]:
    by_transition: dict[str, list[float]] = defaultdict(list)
    for load in loads:
        for name, gap in common.step_gaps(load):
            by_transition[name].append(gap * 1000)
    inner = [g for name, gaps in by_transition.items() if "enqueue" not in name for g in gaps]
    rows: list[list[object]] = [
        [name, len(gaps), median(gaps), p95(gaps)] for name, gaps in by_transition.items()
    ]
    return rows, inner


def duration_rows(loads: list[common.LoadResult]) -> list[list[object]]:
    rows: list[list[object]] = []
    for step in common.STEPS:
        values = [
            load.step(step)["duration_s"] * 1000
            for load in loads
            if load.step(step).get("duration_s") is not None
        ]
        rows.append([step, len(values), median(values), p95(values)])
    return rows


def run(ctx: Context) -> list[tuple[str, str]]:
    serial = [load for load in ctx.real_loads if load.record.host == "node-a"]
    if not serial:
        return [("5. Orchestration overhead per step", "(needs benchmark 1 or 2 in the run)")]
    rows, inner = gap_rows(serial)
    body = table(["transition", "n", "p50 ms", "p95 ms"], rows)
    body += f"\n\nAll step-to-step gaps: p50 **{median(inner):.1f} ms**, "
    body += f"p95 **{p95(inner):.1f} ms**"
    body += f" over {len(serial)} loads (benchmarks 1 and 2, concurrent rounds included).\n\n"
    body += "Step durations (time inside the step, status writes excluded):\n\n"
    body += table(["step", "n", "p50 ms", "p95 ms"], duration_rows(serial))
    return [("5. Orchestration overhead per step (real chain)", body)]
