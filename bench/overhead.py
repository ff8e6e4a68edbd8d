"""5. Orchestration overhead per step in the real chain (SSH + libvirt): the time between
one step's end and the next one's start, from the status records of benchmarks 1 and 2."""

from __future__ import annotations

from collections import defaultdict

from bench import common
from bench.common import Context, median, p95, table


def gaps_by_transition(loads: list[common.LoadResult]) -> dict[str, list[float]]:
    found: dict[str, list[float]] = defaultdict(list)
    for load in loads:
        for name, gap in common.step_gaps(load):
            found[name].append(gap * 1000)
    return found


def durations_by_step(loads: list[common.LoadResult]) -> dict[str, list[float]]:
    found: dict[str, list[float]] = defaultdict(list)
    for load in loads:
        for step in load.steps:
            if load.step(step).get("duration_s") is not None:
                found[step].append(load.step(step)["duration_s"] * 1000)
    return found


def side_by_side(serial: dict[str, list[float]], crowd: dict[str, list[float]]) -> str:
    rows = [
        [
            name,
            median(serial.get(name, [])),
            p95(serial.get(name, [])),
            median(crowd.get(name, [])),
            p95(crowd.get(name, [])),
        ]
        for name in dict.fromkeys([*serial, *crowd])
    ]
    return table(["", "one at a time p50 ms", "p95 ms", "concurrent p50 ms", "p95 ms"], rows)


def inner(gaps: dict[str, list[float]]) -> list[float]:
    return [g for name, values in gaps.items() if "enqueue" not in name for g in values]


def run(ctx: Context) -> list[tuple[str, str]]:
    serial, crowd = ctx.real_loads, ctx.concurrent_loads
    if not serial and not crowd:
        return [("5. Orchestration overhead per step", "(needs benchmark 1 or 2 in the run)")]
    gaps_serial, gaps_crowd = gaps_by_transition(serial), gaps_by_transition(crowd)
    body = side_by_side(gaps_serial, gaps_crowd)
    body += (
        f"\n\nGap = next step's started_at - previous step's ended_at (status record; the "
        f"first row is enqueue → node_status start). One at a time: {len(serial)} loads of "
        f"benchmark 1 (os_type none and the test guest), all step-to-step gaps p50 "
        f"**{median(inner(gaps_serial)):.1f} ms**, p95 **{p95(inner(gaps_serial)):.1f} ms**; "
        f"concurrent: {len(crowd)} loads of benchmark 2, p50 "
        f"**{median(inner(gaps_crowd)):.1f} ms**, p95 **{p95(inner(gaps_crowd)):.1f} ms**."
        f"\n\nStep durations (inside the step: after the computer lock and the started "
        f"write, before the succeeded write):\n\n"
    )
    body += side_by_side(durations_by_step(serial), durations_by_step(crowd))
    return [("5. Orchestration overhead per step (real chain)", body)]
