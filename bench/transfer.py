"""8. Transfer: every way an image moves, through vclvirt's own functions, against the raw
link and scp.

(a) repository → host: the host copies the master from the repository it mounts (on the
    fleet: the library server's, over sshfs on the host's own link);
(b) worker-side repository → host: the worker converts the image and streams it over the
    host's SSH connection (paramiko) into a verified `.part`;
(c) capture → repository: the host's master into the repository where it is (on the host:
    the library over sshfs; on the worker: fetched over SSH, then converted here).

On a fleet host (a 1 Gbit/s link shaped by tc) and on loopback (node-b's sshd). The link
rate is what raw TCP achieves over the same link (Python sockets, no SSH); scp moves the
same file the same way (same machines, same direction, OpenSSH's default cipher).
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Context, median, table

FLEET = common.TESTBED / "fleet"
FLEET_HOST = "fleet-1"
NOMINAL = 1e9 / 8  # bytes per second of the fleet's nominal 1 Gbit/s
IMAGE = f"{common.IMAGE_PREFIX}Transfer-7010-v0"
CAPTURED = f"{common.IMAGE_PREFIX}Captured-7011-v0"
SCRATCH = "transfer-scp.tmp"  # in the host's datastore, removed after each run

# Constant programs run on the fleet's machines (their arguments are passed by argv).
RECEIVE = (
    "import socket,sys,time\n"
    "s=socket.create_server(('0.0.0.0',0));print(s.getsockname()[1],flush=True)\n"
    "c,_=s.accept();b=bytearray(1<<20);n=0;t=None\n"
    "while True:\n"
    " k=c.recv_into(b)\n"
    " t=t or time.perf_counter()\n"
    " if not k:break\n"
    " n+=k\n"
    "print(n,time.perf_counter()-t,flush=True)\n"
)
SEND = (
    "import socket,sys\n"
    "c=socket.create_connection((sys.argv[1],int(sys.argv[2])));d=bytes(1<<20)\n"
    "for _ in range(int(sys.argv[3])):c.sendall(d)\n"
    "c.close()\n"
)
TIMED = 's=$(date +%s.%N); "$@" || exit 1; e=$(date +%s.%N); echo "$s $e"'


def ssh_options(key: Path, known_hosts: Path) -> list[str]:
    return [
        "-i",
        str(key),
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
    ]


class Machine:
    """A fleet machine (or the loopback host) reached over SSH by its address."""

    def __init__(self, address: str, port: int, known_hosts: Path) -> None:
        self.address, self.port, self.known_hosts = address, port, known_hosts
        self.options = ssh_options(common.SSH_KEY, known_hosts)

    def argv(self, *argv: str) -> list[str]:
        return [
            "ssh",
            *self.options,
            "-p",
            str(self.port),
            f"root@{self.address}",
            shlex.join(argv),
        ]

    def run(self, *argv: str) -> str:
        return common.run(self.argv(*argv), timeout=1800).stdout

    def timed(self, *argv: str) -> float:
        """Seconds argv took on the machine itself (no SSH login counted)."""
        began, ended = self.run("sh", "-c", TIMED, "sh", *argv).split()[-2:]
        return float(ended) - float(began)


def fleet_up() -> bool:
    """Bring the fleet up if it is not; True if this run started it."""
    script = str(common.ROOT / "scripts" / "testbed")
    if subprocess.run([script, "fleet", "status"], capture_output=True, check=False).returncode:
        common.run([script, "fleet", "up", "2"], timeout=900)
        return True
    return False


def raw_tcp(receiver: Machine, send: Callable[[str, int], None]) -> float:
    """Bytes per second raw TCP reaches into receiver (the receiver times first byte → EOF)."""
    proc = subprocess.Popen(
        receiver.argv("python3", "-c", RECEIVE), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    send(receiver.address, port)
    received, seconds = proc.stdout.readline().split()
    proc.wait(timeout=60)
    return int(received) / float(seconds)


def send_from_here(mib: int) -> Callable[[str, int], None]:
    def send(address: str, port: int) -> None:
        with socket.create_connection((address, port)) as sock:
            data = bytes(1 << 20)
            for _ in range(mib):
                sock.sendall(data)

    return send


def send_from(machine: Machine, mib: int) -> Callable[[str, int], None]:
    def send(address: str, port: int) -> None:
        machine.run("python3", "-c", SEND, address, str(port), str(mib))

    return send


def make_image(make: Callable[..., Any], path: str, mib: int) -> None:
    """A 1 GiB qcow2 with `mib` MiB of 0x5a data (no compression anywhere on the way)."""
    make("mkdir", "-p", os.path.dirname(path))
    make("qemu-img", "create", "-q", "-f", "qcow2", path, "1G")
    make("qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {mib}M", path)


def local(*argv: str) -> str:
    return common.run(argv, timeout=1800).stdout


def local_timed(*argv: str) -> float:
    began = time.perf_counter()
    common.run(argv, timeout=1800)
    return time.perf_counter() - began


class Site:
    """One host and where its repositories are: the fleet's fleet-1 (library server over
    sshfs) or the loopback test bed's node-b (a local directory)."""

    def __init__(self, ctx: Context, name: str, host: Any, machine: Machine) -> None:
        from vclvirt.hypervisor.drivers.kvm import KvmDriver
        from vclvirt.node.ssh import SSHTransport

        self.name, self.host, self.machine = name, host, machine
        self.node = SSHTransport(host)
        self.driver = KvmDriver(host, self.node)
        self.worker_repo = ctx.workdir / f"repo-{name}"
        self.worker_host = host.model_copy(
            update={"repository_location": "worker", "repository_path": str(self.worker_repo)}
        )
        self.master = f"{host.datastore_path}/{IMAGE}.qcow2"

    def host_run(self, *argv: str) -> None:
        self.node.run(list(argv), timeout=1800)

    def uncache(self) -> None:
        d = self.host.datastore_path
        self.host_run("rm", "-f", "--", self.master, f"{d}/{IMAGE}.xml", f"{d}/{SCRATCH}")

    def ensure(self, host: Any) -> tuple[float, bool]:
        from vclvirt.images.master import ensure_master

        self.uncache()
        began = time.perf_counter()
        master = ensure_master(self.node, self.driver, host, IMAGE)
        return time.perf_counter() - began, master.copied

    def capture(self, host: Any) -> float:
        from vclvirt.images.capture import publish_to_repository
        from vclvirt.images.master import repository_node

        where = repository_node(self.node, host)
        directory = f"{host.repository_path}/{CAPTURED}"
        where.run(["rm", "-rf", "--", directory], timeout=600)
        began = time.perf_counter()
        publish_to_repository(self.node, self.driver, host, self.master, CAPTURED, "<domain/>")
        seconds = time.perf_counter() - began
        where.run(["rm", "-rf", "--", directory], timeout=600)
        return seconds


def fleet_site(ctx: Context) -> tuple[Site, Machine]:
    """fleet-1 and the library server (the fleet's .2), from the fleet's inventory."""
    from vclvirt.config.inventory import load_inventory

    host = load_inventory(FLEET / "inventory.toml").hosts[FLEET_HOST]
    known = FLEET / "known_hosts"
    library = Machine(host.address.rsplit(".", 1)[0] + ".2", 22, known)
    return Site(ctx, "fleet", host, Machine(host.address, 22, known)), library


def loop_site(ctx: Context) -> Site:
    from vclvirt.config.inventory import load_inventory

    host = load_inventory(common.TESTBED / "inventory.toml").hosts["node-b"]
    return Site(ctx, "loopback", host, Machine("127.0.0.1", host.port, common.KNOWN_HOSTS))


def scp_argv(machine: Machine) -> list[str]:
    return ["scp", "-q", *machine.options, "-P", str(machine.port)]


def run(ctx: Context) -> list[tuple[str, str]]:
    reps, mib = (1, 64) if ctx.quick else (3, 900)
    link_mib = 128 if ctx.quick else 1024
    load_before = os.getloadavg()[0]
    started_fleet = fleet_up()
    fleet, library = fleet_site(ctx)
    loop = loop_site(ctx)
    times: dict[tuple[str, str, str], list[float]] = {}
    sizes: dict[str, int] = {}
    link: dict[str, list[float]] = {}

    def note(site: str, path: str, how: str, seconds: float) -> None:
        times.setdefault((site, path, how), []).append(seconds)

    try:
        # The images: in the library (fleet), the loopback repository, each worker-side one.
        library_image = f"/srv/library/{IMAGE}/{IMAGE}.qcow2"
        make_image(library.run, library_image, mib)
        loop_repo = Path(loop.host.repository_path or "") / IMAGE / f"{IMAGE}.qcow2"
        make_image(local, str(loop_repo), mib)
        for site in (fleet, loop):
            worker_image = site.worker_repo / IMAGE / f"{IMAGE}.qcow2"
            make_image(local, str(worker_image), mib)
            sizes[site.name] = worker_image.stat().st_size
        for _ in range(reps):
            link.setdefault("management → fleet-1", []).append(
                raw_tcp(fleet.machine, send_from_here(link_mib))
            )
            link.setdefault("library → fleet-1", []).append(
                raw_tcp(fleet.machine, send_from(library, link_mib))
            )
            for site in (fleet, loop):
                s = site.name
                seconds, copied = site.ensure(site.host)
                assert copied, f"{s}: the master was not copied"
                note(s, "a", "vclvirt", seconds)
                dest = f"{site.host.datastore_path}/{SCRATCH}"
                if site is fleet:
                    note(
                        s,
                        "a",
                        "scp",
                        fleet.machine.timed(
                            *scp_argv(library), f"root@{library.address}:{library_image}", dest
                        ),
                    )
                else:
                    note(
                        s,
                        "a",
                        "scp",
                        local_timed(
                            *scp_argv(site.machine), str(loop_repo), f"root@127.0.0.1:{dest}"
                        ),
                    )
                seconds, copied = site.ensure(site.worker_host)
                assert copied, f"{s}: the master was not streamed"
                note(s, "b", "vclvirt", seconds)
                worker_image = site.worker_repo / IMAGE / f"{IMAGE}.qcow2"
                note(
                    s,
                    "b",
                    "scp",
                    local_timed(
                        *scp_argv(site.machine),
                        str(worker_image),
                        f"root@{site.machine.address}:{dest}",
                    ),
                )
                site.host_run("rm", "-f", "--", dest)
                note(s, "c", "vclvirt", site.capture(site.host))
                if site is fleet:
                    target = f"root@{library.address}:/srv/library/{SCRATCH}"
                    note(
                        s, "c", "scp", fleet.machine.timed(*scp_argv(library), site.master, target)
                    )
                    library.run("rm", "-f", "--", f"/srv/library/{SCRATCH}")
                else:
                    note(
                        s,
                        "c",
                        "scp",
                        local_timed(
                            *scp_argv(site.machine),
                            f"root@127.0.0.1:{site.master}",
                            str(ctx.workdir / SCRATCH),
                        ),
                    )
                note(s, "c'", "vclvirt", site.capture(site.worker_host))
                note(
                    s,
                    "c'",
                    "scp",
                    local_timed(
                        *scp_argv(site.machine),
                        f"root@{site.machine.address}:{site.master}",
                        str(ctx.workdir / SCRATCH),
                    ),
                )
                (ctx.workdir / SCRATCH).unlink()
    finally:
        for site in (fleet, loop):
            site.uncache()
            site.node.close()
        library.run("rm", "-rf", "--", f"/srv/library/{IMAGE}", f"/srv/library/{CAPTURED}")
        local("rm", "-rf", "--", str(loop_repo.parent))
        if started_fleet:
            common.run([str(common.ROOT / "scripts" / "testbed"), "fleet", "down"], timeout=600)
    load_after = os.getloadavg()[0]
    rate = {k: median(v) for k, v in link.items()}
    names = {
        "a": "(a) repository → host",
        "b": "(b) worker-side repository → host over SSH",
        "c": "(c) capture → repository on the host",
        "c'": "(c') capture → repository on the worker (fetch over SSH)",
    }
    link_of = {"a": "library → fleet-1", "c": "library → fleet-1"}
    rows = []
    for s in ("fleet", "loopback"):
        for path, title in names.items():
            v, p = median(times[(s, path, "vclvirt")]), median(times[(s, path, "scp")])
            speed = sizes[s] / v
            if s == "fleet":
                per_link = speed / rate[link_of.get(path, "management → fleet-1")]
                nominal = speed / NOMINAL
            else:
                per_link = nominal = float("nan")
            scp_speed = sizes[s] / p / 2**30
            rows.append([f"{s}: {title}", v, speed / 2**30, per_link, nominal, scp_speed, p / v])
    body = table(
        ["path", "median s", "GiB/s", "÷ link rate", "÷ 1 Gbit/s", "scp GiB/s", "÷ scp"],
        rows,
    )
    body += (
        f"\n\nThe image: 1 GiB virtual, {mib} MiB of data, a qcow2 file of "
        f"{sizes['fleet'] / 2**20:.0f} MiB (the bytes counted). {reps} interleaved runs each, "
        "medians. vclvirt: the whole call (ensure_master with the master absent, or "
        "publish_to_repository), checks and verification included. Link rate: raw TCP "
        "(Python sockets, no SSH, the receiver's clock from first byte to EOF) over the same "
        "link: "
        + ", ".join(
            f"{k} {v / 2**20:.1f} MiB/s ({v * 8 / 1e9:.3f} Gbit/s)" for k, v in rate.items()
        )
        + ". scp: the same file between the same machines in the same direction, timed on "
        "the machine that runs it (no login counted on the fleet, login counted on loopback "
        "as vclvirt's pooled connection is already open); ÷ scp is scp's seconds ÷ "
        "vclvirt's. Loopback has no link rate. (c) runs host → library, the other direction "
        "of the same symmetric link. Every fleet machine shares this machine's cores (their "
        "sshd, sshfs, qemu-img and the worker's paramiko), so the CPU they spend on "
        "ciphers, checksums and copies is taken from the link's other end too; load "
        f"average (1 min) {load_before:.1f} before, {load_after:.1f} after this benchmark."
    )
    return [("8. Transfer (every way an image moves)", body)]
