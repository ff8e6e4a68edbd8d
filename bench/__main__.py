"""`python -m bench [--quick] [--only N ...]`: run the benchmarks, print the tables and
write bench/results.md."""

from __future__ import annotations

import argparse
import platform
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import common

RESULTS = Path(__file__).resolve().parent / "results.md"


def machine() -> str:
    def out(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        except OSError:
            return ""

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    virsh = out("virsh", "-c", "qemu:///system", "version").strip().replace("\n", "; ")
    qemu_img = out("qemu-img", "--version").splitlines()[0]
    head = out("git", "-C", str(RESULTS.parents[1]), "rev-parse", "--short", "HEAD").strip()
    dirty = out("git", "-C", str(RESULTS.parents[1]), "status", "--porcelain", "vclvirt")
    return (
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        f"- machine: nproc {out('nproc').strip()}, {cpu}, {mem_kib / 2**20:.1f} GiB RAM, "
        f"kernel {platform.release()}\n"
        f"- virsh version: {virsh}\n- {qemu_img}\n"
        f"- code: {head}{' + uncommitted changes in vclvirt/' if dirty.strip() else ''}\n"
    )


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    # SIGTERM and SIGHUP unwind like Ctrl-C, so the `finally` below stops what the run started.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGHUP, _interrupted)
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="a ~2-minute smoke run")
    parser.add_argument(
        "--only", type=int, nargs="*", default=[1, 2, 3, 4, 5, 6, 7, 8], help="benchmark numbers"
    )
    parser.add_argument("--sim-loads", type=int, default=None, help="loads in benchmark 4")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write the tables here (default: bench/results.md for a full run, none for "
        "--quick or --only)",
    )
    args = parser.parse_args()
    full = not args.quick and sorted(args.only) == [1, 2, 3, 4, 5, 6, 7, 8] and args.sim_loads is None
    output = args.output or (RESULTS if full else None)
    # sim: local test:/// hosts (benchmarks 4, 6); ssh: test:/// hosts behind sshd (7)
    ctx = common.setup(
        args.quick, sim_hosts=20 if args.quick else 100, ssh_sim_hosts=10 if args.quick else 100
    )
    # imported after setup: vclvirt reads its settings from the environment once
    from bench import (
        burst,
        concurrency,
        distribution,
        footprint,
        latency,
        overhead,
        scale,
        transfer,
    )

    plan = {
        1: latency.run,
        2: concurrency.run,
        3: distribution.run,
        4: lambda c: scale.run(c, args.sim_loads),
        5: overhead.run,
        6: burst.run,
        7: footprint.run,
        8: transfer.run,
    }
    started = time.monotonic()
    sections: list[tuple[str, str]] = []
    try:
        for number in sorted(args.only):
            begun = time.monotonic()
            for title, body in plan[number](ctx):
                sections.append((title, body))
                print(f"\n## {title}\n\n{body}\n", flush=True)
            print(f"(benchmark {number}: {time.monotonic() - begun:.0f} s)", flush=True)
    finally:
        common.stop_workers()  # a benchmark that failed half-way may have left some running
        common.cleanup_all(ctx)
    text = (
        f"# vclvirt benchmarks{' (--quick)' if args.quick else ''}\n\n{machine()}"
        f"- total runtime: {time.monotonic() - started:.0f} s "
        f"(`{' '.join(['python -m bench', *sys.argv[1:]])}`)\n\n"
        + "\n\n".join(f"## {title}\n\n{body}" for title, body in sections)
        + "\n"
    )
    if output is not None:
        output.write_text(text)
        print(f"\nwritten: {output}")


if __name__ == "__main__":
    main()
