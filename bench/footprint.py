"""7. Footprint: the memory one worker process needs per host it serves (#19.4).

For N hosts, ONE `vclvirt worker` serves all N; every host gets a load first, so what a
host costs a worker (its SSH connection in every pool process, its libvirt connection,
its Host objects, the recovery loop's work) exists; then, idle, the PSS of the worker's
processes is summed and their CPU time read. The hosts log in over SSH to the test bed's
sshd (a paramiko connection each, as a real host) and run libvirt's test driver (no
guests). One more row at the largest size with more pool processes prices a pool process:
a worker's concurrency is what the goal "100 hosts within 4 GiB" really bounds."""

from __future__ import annotations

import os
import sys
import time
import tomllib
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from bench import common
from bench.common import Context, table

IMAGE = f"{common.IMAGE_PREFIX}Foot-7007-v0"
CONCURRENCY = 2  # the worker's pool processes: the inventory's default max_concurrent_loads
GOAL_PER_HOST_MB = 30.0  # above the base, per served host
GOAL_100_HOSTS_GIB = 4.0
MIB, MB = 2**20, 10**6
IDLE_S = 5.0  # the idle CPU is measured over this long


def runs(ctx: Context) -> list[tuple[int, int]]:
    """(hosts, concurrency): the host sweep at the default concurrency, then the largest
    size with more pool processes (what one more pool process costs)."""
    if ctx.quick:
        return [(1, CONCURRENCY), (10, CONCURRENCY), (10, 4)]
    return [(1, CONCURRENCY), (10, CONCURRENCY), (50, CONCURRENCY), (100, CONCURRENCY), (100, 8)]


def ssh_connections(worker: common.Worker, port: int) -> int:
    """Established TCP connections from the worker's processes to the sshd on `port`."""
    inodes = set()
    for pid in worker.pids():
        try:
            links = [str(p.readlink()) for p in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port, state, inode = int(fields[2].split(":")[1], 16), fields[3], fields[9]
        count += remote_port == port and state == "01" and inode in inodes
    return count


@dataclass
class Sample:
    hosts: int
    concurrency: int
    processes: int
    ssh: int
    rss: int
    pss: int
    warm_up_s: float  # start to ready (a one-host worker: to every pool process connected)
    loads_s: float
    idle_cpu: float  # % of one core, after the loads


def measure(ctx: Context, hosts: list[str], concurrency: int, port: int) -> Sample:
    """One worker for `hosts`, started (a one-host worker: warmed up, every pool process
    connected; a worker of several hosts connects when a step needs a host), one load on
    each host, then the idle worker's memory."""
    started = time.monotonic()
    worker = common.start_worker(
        ctx,
        hosts,
        concurrency,
        f"fp{len(hosts)}x{concurrency}",
        env={"VCLVIRT_MAX_TASKS_PER_CHILD": "0"},
    )
    try:
        deadline = started + 300
        while len(hosts) == 1 and ssh_connections(worker, port) < concurrency:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker for {len(hosts)} hosts: warm-up not done in 300 s")
            time.sleep(0.2)
        warm = time.monotonic()
        batch = [
            common.reservation(f"bench-f{i:03d}", 9000 + i, IMAGE, host=h, image_id=7007)
            for i, h in enumerate(hosts)
        ]
        common.load_all(batch, timeout=600)
        loads_s = time.monotonic() - warm
        time.sleep(3)  # idle: the last acks and status writes are done
        rss, pss = worker.memory()
        cpu = cpu_seconds(worker)
        time.sleep(IDLE_S)
        idle_cpu = (cpu_seconds(worker) - cpu) / IDLE_S * 100
        return Sample(
            len(hosts),
            concurrency,
            len(worker.pids()),
            ssh_connections(worker, port),
            rss,
            pss,
            warm - started,
            loads_s,
            idle_cpu,
        )
    finally:
        worker.stop()


def cpu_seconds(worker: common.Worker) -> float:
    """User + system CPU time of the worker's processes so far."""
    ticks = 0
    for pid in worker.pids():
        with suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# One process opens `count` more qemu+libssh connections (with libvirt's event loop and
# keepalive, as vclvirt does) and prints the private memory they added, in bytes (not PSS:
# that moves with what other processes map).
_LIBSSH_PROBE = """
import sys, threading, time, libvirt
from pathlib import Path
def private():
    text = Path("/proc/self/smaps_rollup").read_text()
    return sum(int(l.split()[1]) * 1024 for l in text.splitlines() if l.startswith("Private_"))
libvirt.registerErrorHandler(lambda _c, _e: None, None)
libvirt.virEventRegisterDefaultImpl()
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()
uri, count = sys.argv[1], int(sys.argv[2])
def conn():
    c = libvirt.open(uri)
    c.setKeepAlive(5, 3)
    c.listAllDomains(0)
    return c
kept = [conn()]
before = private()
kept += [conn() for _ in range(count)]
time.sleep(1)
print(private() - before)
"""


def libssh_connection_cost(count: int) -> float:
    """Bytes one more qemu+libssh connection to node-a's libvirtd adds to a process."""
    from vclvirt.config.inventory import get_inventory

    uri = get_inventory().host("node-a").effective_libvirt_uri
    out = common.run([sys.executable, "-c", _LIBSSH_PROBE, uri, str(count)]).stdout
    return int(out.strip()) / count


def slope(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y over x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def run(ctx: Context) -> list[tuple[str, str]]:
    port = int(tomllib.loads(ctx.inventory.read_text())["hosts"]["node-a"]["port"])
    master = ctx.workdir / "fp-master.qcow2"
    common.run(["qemu-img", "create", "-q", "-f", "qcow2", str(master), "1M"])
    plan = runs(ctx)
    hosts = ctx.ssh_sim_hosts[: max(n for n, _ in plan)]
    for host in hosts:
        common.run(
            ["cp", str(master), str(ctx.workdir / "sim" / host / "images" / f"{IMAGE}.qcow2")]
        )
    samples = [measure(ctx, hosts[:n], c, port) for n, c in plan]
    libssh = libssh_connection_cost(10 if ctx.quick else 50)
    body = report(samples, libssh)
    if ctx.quick:
        body += " Scaled down: 1 and 10 hosts (the full run: 1, 10, 50, 100)."
    return [("7. Footprint per served host (one worker)", body)]


def report(samples: list[Sample], libssh: float) -> str:
    """The samples, the fit against #19.4's goals, and the caption."""
    sweep = [s for s in samples if s.concurrency == CONCURRENCY]
    intercept, per_host = slope([(s.hosts, s.pss / MB) for s in sweep])
    wider = samples[-1]
    same = next(s for s in sweep if s.hosts == wider.hosts)
    per_process = (wider.pss - same.pss) / MB / (wider.concurrency - same.concurrency)
    # with a qemu+libssh libvirt connection per host in each pool process
    per_host_real = per_host + CONCURRENCY * libssh / MB
    at_100 = intercept + 100 * per_host_real
    processes_in_goal = int((GOAL_100_HOSTS_GIB * 2**30 / MB - at_100) / per_process) + CONCURRENCY
    body = table(
        [
            "hosts served",
            "concurrency",
            "processes",
            "SSH connections",
            "RSS MiB",
            "PSS MiB",
            "PSS MB per host above N=1",
            "start + warm-up s",
            "loads s",
            "idle CPU %",
        ],
        [
            [
                s.hosts,
                s.concurrency,
                s.processes,
                s.ssh,
                s.rss / MIB,
                s.pss / MIB,
                (s.pss - sweep[0].pss) / MB / (s.hosts - 1) if s in sweep[1:] else "",
                s.warm_up_s,
                s.loads_s,
                s.idle_cpu,
            ]
            for s in samples
        ],
    )
    fit = table(
        [f"at concurrency {CONCURRENCY}", "value", "goal", "met"],
        [
            ["base (intercept of PSS vs hosts) MB", intercept, "", ""],
            ["per served host (slope) MB", per_host, "", ""],
            [
                "per served host with a qemu+libssh libvirt connection in each pool process MB"
                f" (+ {CONCURRENCY} x {libssh / 1e3:.0f} kB)",
                per_host_real,
                f"≤ {GOAL_PER_HOST_MB:.0f}",
                mark(per_host_real <= GOAL_PER_HOST_MB),
            ],
            [
                "projected for 100 hosts MiB",
                at_100 * MB / MIB,
                f"≤ {GOAL_100_HOSTS_GIB * 1024:.0f}",
                mark(at_100 * MB <= GOAL_100_HOSTS_GIB * 2**30),
            ],
            [f"one more pool process (at {wider.hosts} hosts) MB", per_process, "", ""],
            ["pool processes for 100 hosts within 4 GiB", processes_in_goal, "", ""],
        ],
    )
    caption = (
        "ONE `vclvirt worker --concurrency C` (prefork: main process + C pool processes, "
        "never recycled) serving N hosts; once it is ready (a one-host worker once every pool "
        "process has connected; a worker of several hosts connects when a step needs a host), "
        "every host gets one load (os_type none, all enqueued at once), and "
        "the memory is read 3 s after the last one, idle: PSS summed over the worker's "
        "processes (/proc/<pid>/smaps_rollup); then their CPU time over the next "
        f"{IDLE_S:.0f} s (% of one core). Each host is reached over SSH (paramiko, to "
        "node-a's sshd on loopback: a connection per host in each pool process that ran one "
        "of its steps, as the SSH connections column counts; at most C per host) and runs "
        "libvirt's test:///default driver, so its "
        "libvirt connection here is in-process: the cost of a real one (qemu+libssh to "
        f"node-a's libvirtd, measured apart in one process: {libssh / 1e3:.1f} kB of private "
        "memory each) is added per pool process in the fit. No guests, no image streamed. "
        "MB = 10^6 bytes, MiB = 2^20. The last row: the same worker with more pool "
        "processes; a worker's concurrency is shared by all its hosts (each host's own "
        "limit is a Redis semaphore across workers)."
    )
    return f"{body}\n\n{fit}\n\n{caption}"


def mark(ok: bool) -> str:
    return "✔" if ok else "✘"
