"""Shared helpers: environment, inventory, workers, reservations, loads, statistics, tables.

Nothing of vclvirt is imported at the top: vclvirt reads its settings (inventory, broker)
from the environment once, and `setup` sets that environment first.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTBED = Path(os.environ.get("VCLVIRT_TESTBED", "/var/lib/vclvirt-testbed"))
REDIS_PORT = os.environ.get("VCLVIRT_TESTBED_REDIS_PORT", "6390")
BROKER = f"redis://127.0.0.1:{REDIS_PORT}/2"  # the benchmarks' own Redis database
SSH_PORT_A = os.environ.get("VCLVIRT_TESTBED_SSH_PORT_A", "2201")
SSH_PORT_B = os.environ.get("VCLVIRT_TESTBED_SSH_PORT_B", "2202")
SSH_KEY = TESTBED / "ssh" / "id_ed25519"
KNOWN_HOSTS = TESTBED / "ssh" / "known_hosts"
GUEST_CACHE = Path("/var/cache/vclvirt/guest")
PREFIX = "bench-"  # every computer the benchmarks create
IMAGE_PREFIX = "linux-Bench"  # every image the benchmarks create


def host_login(host: str = "node-a") -> str:
    """`user@127.0.0.1` as vclvirt logs in to the test bed's host (its inventory entry), so
    scp and the VCL-style ssh sequence pay the same login as vclvirt."""
    hosts = tomllib.loads((TESTBED / "inventory.toml").read_text())["hosts"]
    return f"{hosts[host].get('user', 'root')}@127.0.0.1"


@dataclass
class Context:
    """What every benchmark shares: the work directory, the inventory, the run size."""

    workdir: Path
    inventory: Path
    quick: bool
    sim_hosts: list[str] = field(default_factory=list)
    ssh_sim_hosts: list[str] = field(default_factory=list)  # test:/// behind node-a's sshd
    real_loads: list[Any] = field(default_factory=list)  # one at a time over SSH (bench 1)
    concurrent_loads: list[Any] = field(default_factory=list)  # over SSH, bench 2's rounds


def setup(quick: bool, sim_hosts: int, ssh_sim_hosts: int = 0) -> Context:
    """A temp work dir and one inventory (the test bed's hosts plus simulated ones); the
    environment is set before anything imports vclvirt (its settings are read once).

    `sim…` hosts are reached locally; `ssh…` hosts log in to node-a's sshd like node-a
    (so each costs a worker a real paramiko connection) but run libvirt's test driver."""
    workdir = Path(tempfile.mkdtemp(prefix="vclvirt-bench-"))
    inventory = workdir / "inventory.toml"
    text = (TESTBED / "inventory.toml").read_text()
    node_a = tomllib.loads(text)["hosts"]["node-a"]
    login = "".join(
        f"{key} = {json.dumps(node_a[key])}\n"
        for key in ("address", "port", "user", "key_file", "known_hosts")
    )
    names = [f"sim{i:03d}" for i in range(1, sim_hosts + 1)]
    ssh_names = [f"ssh{i:03d}" for i in range(1, ssh_sim_hosts + 1)]
    for name in names + ssh_names:
        base = workdir / "sim" / name
        for sub in ("images", "vms", "xml", "fence"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        reach = login if name in ssh_names else 'address = "127.0.0.1"\ntransport = "local"\n'
        text += (
            f'\n[hosts.{name}]\n{reach}libvirt_uri = "test:///default"\ndomain_type = "test"\n'
            f'datastore_path = "{base}/images"\nvm_path = "{base}/vms"\nxml_dir = "{base}/xml"\n'
            f'fence_dir = "{base}/fence"\n'
        )
    inventory.write_text(text)
    os.environ.update(
        VCLVIRT_BROKER_URL=BROKER,
        VCLVIRT_INVENTORY=str(inventory),
        VCLVIRT_TESTBED=str(TESTBED),
        VCLVIRT_GUEST_KEY_FILE=str(GUEST_CACHE / "guest_key"),
        VCLVIRT_RETRY_BACKOFF="1",
        VCLVIRT_RETRY_BACKOFF_MAX="4",
    )
    import redis

    redis.Redis.from_url(BROKER).flushdb()
    return Context(workdir, inventory, quick, names, ssh_names)


def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kwargs)


# -- statistics and tables ---------------------------------------------------------


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else float("nan")


def p95(values: Iterable[float]) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    return data[min(len(data) - 1, round(0.95 * (len(data) - 1)))]


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- workers -----------------------------------------------------------------------


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path

    def pids(self) -> list[int]:
        """The worker's main process and all its descendants."""
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            found.append(pid)
            todo += [int(c) for c in children]
        return found

    def memory(self) -> tuple[int, int]:
        """(RSS, PSS) in bytes, summed over the main process and its pool children; PSS
        shares the pages children inherit from the main process instead of counting them
        in every child."""
        rss = pss = 0
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        return rss, pss

    def stop(self) -> None:
        """SIGTERM to the worker's process group (main process and pool), SIGKILL after 60 s."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self in _started:
            _started.remove(self)


_started: list[Worker] = []  # every worker this process started and has not stopped


def stop_workers() -> None:
    """Stop every worker the benchmarks started (any exit path of the run calls this)."""
    for worker in list(_started):
        worker.stop()


def start_worker(
    ctx: Context,
    hosts: Sequence[str],
    concurrency: int,
    tag: str,
    env: dict[str, str] | None = None,
) -> Worker:
    """A real `vclvirt worker` subprocess in its own session; returns once it is ready."""
    log_path = ctx.workdir / f"worker-{tag}.log"
    argv = [sys.executable, "-m", "vclvirt", "worker", "--concurrency", str(concurrency)]
    for host in hosts:
        argv += ["--host", host]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
    worker = Worker(process, log_path)
    _started.append(worker)
    deadline = time.monotonic() + 120
    while "ready." not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            raise RuntimeError(f"worker {tag} did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    return worker


# -- reservations and loads --------------------------------------------------------

_next_id = [int(time.time()) % 100000 * 1000]


def reservation(
    computer: str,
    computer_id: int,
    image: str,
    *,
    host: str = "node-a",
    image_id: int = 7001,
    os_type: str = "none",
) -> dict[str, Any]:
    """A valid reservation with a fresh reservation id (computer names start with bench-)."""
    _next_id[0] += 1
    rid = _next_id[0]
    tail = f"{computer_id % 256:02x}:{(computer_id // 256) % 256:02x}"
    return {
        "reservation_id": rid,
        "request_id": rid + 1,
        "state": "new",
        "host": host,
        "computer": {
            "id": computer_id,
            "hostname": f"{computer}.lab.test",
            "eth0_mac": f"52:54:00:be:{tail}",
            "eth1_mac": f"52:54:00:bf:{tail}",
            "private_ip": None,
        },
        "image": {
            "id": image_id,
            "name": image,
            "revision": 0,
            "revision_id": image_id * 100,
            "pretty_name": f"Bench {image}",
            "os_type": os_type,
            "os_name": "linux",
            "min_ram_mb": 64,
            "vcpus": 1,
            "project": "vcl",
        },
    }


@dataclass
class LoadResult:
    """A finished load: when it was enqueued, and its status record as the API shows it
    (`GET /v1/reservations/{id}`, `vclvirt status --json`): the steps are read from there."""

    enqueued_at: float  # epoch, just before dispatch.load
    record: dict[str, Any]

    @classmethod
    def of(cls, enqueued_at: float, status: Any) -> LoadResult:
        return cls(enqueued_at, status.to_dict())

    @property
    def steps(self) -> list[str]:
        return [s["name"] for s in self.record["steps"]]

    def step(self, name: str) -> dict[str, Any]:
        return next((dict(s) for s in self.record["steps"] if s["name"] == name), {})

    @property
    def ok(self) -> bool:
        return bool(self.record["state"] == "succeeded")

    @property
    def to_running(self) -> float:
        """Enqueue to the end of power_on (domain running)."""
        return float(self.step("power_on")["ended_at"]) - self.enqueued_at

    @property
    def to_finished(self) -> float:
        return float(self.record["finished_at"]) - self.enqueued_at


def step_names(results: Iterable[LoadResult]) -> list[str]:
    """The steps of these loads in chain order, as their status records list them."""
    return list(dict.fromkeys(name for result in results for name in result.steps))


def load_all(reservations: Sequence[dict[str, Any]], timeout: float = 900) -> list[LoadResult]:
    """Enqueue every reservation at once, then wait for all of them (polling Redis)."""
    from vclvirt import dispatch

    started = []
    for res in reservations:
        started.append(time.time())
        dispatch.load(res)
    deadline = time.monotonic() + timeout
    pending = {i: r["reservation_id"] for i, r in enumerate(reservations)}
    records: dict[int, Any] = {}
    while pending:
        for i, rid in list(pending.items()):
            record = dispatch.status(rid)
            if record is not None and record.finished:
                records[i] = record
                del pending[i]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} loads did not finish in {timeout}s")
        time.sleep(0.02 if len(pending) < 50 else 0.5)
    results = [LoadResult.of(started[i], records[i]) for i in range(len(reservations))]
    for result in results:
        if not result.ok:
            raise RuntimeError(
                f"load {result.record['reservation_id']} {result.record['state']}: "
                f"{json.dumps(result.record['error'])[:500]}"
            )
    return results


def step_gaps(result: LoadResult) -> list[tuple[str, float]]:
    """(transition, seconds) between one step's end and the next step's start."""
    gaps = []
    done = [s for s in result.steps if result.step(s).get("started_at")]
    for before, after in itertools.pairwise(done):
        gap = result.step(after)["started_at"] - result.step(before)["ended_at"]
        gaps.append((f"{before}→{after}", gap))
    first = result.step(done[0])["started_at"] - result.enqueued_at if done else None
    if first is not None:
        gaps.insert(0, (f"enqueue→{done[0]}", first))
    return gaps


# -- clean-up ----------------------------------------------------------------------


def destroy_domains(prefix: str = PREFIX, uri: str = "qemu:///system") -> None:
    """Destroy and undefine every domain whose name starts with the prefix."""
    import libvirt

    conn = libvirt.open(uri)
    try:
        for domain in conn.listAllDomains(0):
            if domain.name().startswith(prefix):
                try:
                    if domain.isActive():
                        domain.destroy()
                    domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
                except libvirt.libvirtError:
                    pass
    finally:
        conn.close()


def remove_files(*patterns: str) -> None:
    for pattern in patterns:
        for path in TESTBED.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def cleanup_computers(prefix: str = PREFIX) -> None:
    destroy_domains(prefix)
    remove_files(f"hosts/*/vms/{prefix}*", f"hosts/*/xml/{prefix}*")


def cleanup_all(ctx: Context) -> None:
    cleanup_computers()
    remove_files(
        f"repository/{IMAGE_PREFIX}*",
        f"hosts/*/images/{IMAGE_PREFIX}*",
        f"hosts/*/images/.{IMAGE_PREFIX}*",
    )
    shutil.rmtree(ctx.workdir, ignore_errors=True)


def publish_image(name: str, source: Path, reference_xml: str | None = None) -> Path:
    """Put an image into the test bed's repository as <repo>/<name>/<name>.qcow2."""
    directory = TESTBED / "repository" / name
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.qcow2"
    run(["cp", "--sparse=always", str(source), str(path)])
    if reference_xml:
        (directory / f"{name}.xml").write_text(reference_xml)
    return path


def drop_new_pools(before: set[str]) -> None:
    """Storage pools virt-install defined for the test bed's directories during the run go
    again; vclvirt's own transient pools (`vclvirt-…`) are left to vclvirt."""
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        for pool in conn.listAllStoragePools(0):
            name = pool.name()
            if name in before or name.startswith("vclvirt-") or not pool.isPersistent():
                continue
            if str(TESTBED) in pool.XMLDesc(0):
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
    finally:
        conn.close()


def pool_names() -> set[str]:
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        return {pool.name() for pool in conn.listAllStoragePools(0)}
    finally:
        conn.close()


def accepted_ssh(host: str = "node-a") -> int:
    """SSH handshakes the test bed's sshd has accepted so far (its log)."""
    log = TESTBED / "sshd" / host / "sshd.log"
    return log.read_text(errors="replace").count("Accepted publickey")
