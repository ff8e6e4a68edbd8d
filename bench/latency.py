"""1. Warm-cache load latency: vclvirt vs the floor vs virt-install vs a VCL-style sequence;
and enqueue-to-READY with the bootable test guest."""

from __future__ import annotations

import itertools
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import redis

from bench import common
from bench.common import Context, LoadResult, median, table

IMAGE = f"{common.IMAGE_PREFIX}None-7001-v0"
GUEST_IMAGE = f"{common.IMAGE_PREFIX}Guest-7002-v0"
HOST_DIR = common.TESTBED / "hosts" / "node-a"
MASTER = HOST_DIR / "images" / f"{IMAGE}.qcow2"
SSH = [
    "ssh",
    "-i",
    str(common.SSH_KEY),
    "-p",
    common.SSH_PORT_A,
    "-o",
    "BatchMode=yes",
    "-o",
    f"UserKnownHostsFile={common.KNOWN_HOSTS}",
    common.host_login("node-a"),
]


def _names(res: dict[str, Any]) -> Any:
    from vclvirt.config.inventory import get_inventory
    from vclvirt.models import parse_reservation
    from vclvirt.naming import LoadNames

    host = get_inventory().host("node-a")
    return LoadNames.for_reservation(
        parse_reservation(res),
        datastore_path=host.datastore_path,
        vm_path=host.vm_dir,
        xml_dir=host.xml_dir,
    )


def vclvirt_xml(res: dict[str, Any]) -> str:
    """The XML vclvirt generates for this reservation on node-a (same builder, same facts)."""
    from vclvirt.config.inventory import get_inventory
    from vclvirt.hypervisor.domain_xml import (
        HostFacts,
        plan_domain,
        render_domain_xml,
        with_user_network,
    )
    from vclvirt.models import parse_reservation
    from vclvirt.naming import domain_uuid

    host = get_inventory().host("node-a")
    r, names = parse_reservation(res), _names(res)
    spec = plan_domain(
        r,
        name=names.domain,
        uuid=domain_uuid("node-a", names.domain),
        overlay_path=names.overlay_path,
        private_switch=None,
        public_switch=None,
        facts=HostFacts(domain_type="qemu"),
        loaded_at=datetime.now(UTC),
        management_node="bench",
    )
    return render_domain_xml(with_user_network(spec, r, host))


def run_vclvirt() -> tuple[float, int, LoadResult]:
    res = common.reservation("bench-vv", 303, IMAGE)
    before = common.accepted_ssh()
    (result,) = common.load_all([res])
    return result.to_running, common.accepted_ssh() - before, result


RETRIES: list[str] = []  # transient errors the in-process run retried, as a worker would


def retrying(step: Any, *args: Any) -> Any:
    """Call a load step on the Host; on a transient error retry once after 1 s (the worker's
    backoff), and remember the error for the report."""
    from vclvirt.errors import TransientError

    try:
        return step(*args)
    except TransientError as error:
        RETRIES.append(f"{step.__name__}: {error}")
        time.sleep(1)
        return step(*args)


def run_inprocess(server: Any) -> tuple[float, int, float, int]:
    """The same load steps a worker runs, called on the Host in this process: same SSH and
    libssh connections (pooled), no Celery, no status record, no computer lock."""
    from vclvirt.models import parse_reservation

    r = parse_reservation(common.reservation("bench-ip", 304, IMAGE))
    node = server.access.node  # the process's pooled SSH transport: it counts its commands
    commands, seconds = node.commands_run, node.command_seconds
    started = time.perf_counter()
    retrying(server.status.check, r)
    retrying(server.cleanup.delete_existing_domains, r)
    retrying(server.load.pre_define, r)
    retrying(server.load.define, r, retrying(server.load.generate_xml, r)["xml"])
    retrying(server.power.on, r)
    elapsed = time.perf_counter() - started
    return elapsed, 0, node.command_seconds - seconds, node.commands_run - commands


def command_costs(server: Any, n: int) -> list[list[Any]]:
    """One trivial command, n times: over the pooled SSH connection, as a new ssh process,
    as a local process; one libvirt call over qemu+libssh and over the local socket; the
    storage-pool calls a warm load makes instead of commands."""
    import libvirt

    def timed(call: Any) -> float:
        values = []
        for _ in range(n):
            started = time.perf_counter()
            call()
            values.append(time.perf_counter() - started)
        return median(values) * 1000

    files = server.access.files
    overlay = str(HOST_DIR / "vms" / "bench-cost_7001-v0.qcow2")

    def overlay_cycle() -> None:
        files.create_overlay(str(MASTER), "qcow2", overlay)
        files.remove(overlay)

    host = server.access.host
    client = redis.Redis.from_url(common.BROKER)
    generations = itertools.count(1)

    def fenced(call: Any) -> Any:
        """`call` as a new holder's first act: the computer's lock is granted (a new token,
        from Redis, larger than any the host has seen) and the host records it."""
        from vclvirt.hypervisor.connection import release_fenced
        from vclvirt.locks import ResourceLock, RunOwner
        from vclvirt.node import fence

        owner = RunOwner(1, next(generations), "bench")
        lock = ResourceLock(client, f"computer:{host.name}:bench-cost", owner, ttl=30, fenced=True)
        assert lock.acquire(wait=5) and lock.token is not None
        held = fence.HostFence(host.name, f"{host.fence_dir}/bench-cost", lock.token, 1)
        try:
            with fence.holding(held):
                return call()
        finally:
            release_fenced(host.name)
            lock.release()

    local = libvirt.open("qemu:///system")
    try:
        rows = [
            [
                "`true` on the pooled paramiko connection (new channel)",
                timed(lambda: server.access.node.run(["true"])),
            ],
            [
                "`true` in a new `ssh` process (VCL-style)",
                timed(lambda: subprocess.run([*SSH, "true"], check=True)),
            ],
            ["`true` as a local process", timed(lambda: subprocess.run(["true"], check=True))],
            [
                "libvirt listAllDomains over qemu+libssh (pooled)",
                timed(lambda: server.access.conn.listAllDomains(0)),
            ],
            ["libvirt listAllDomains on qemu:///system", timed(lambda: local.listAllDomains(0))],
            [
                "master check through the storage pool (qemu+libssh)",
                timed(lambda: files.master_format(str(MASTER))),
            ],
            [
                "overlay through the storage pool (qemu+libssh), created and removed",
                timed(overlay_cycle),
            ],
            [
                "`true` behind the host's fence, a new token (a run's first host act)",
                timed(lambda: fenced(lambda: server.access.node.run(["true"]))),
            ],
            [
                "a run's libvirt tunnel through the fence: opened, listAllDomains, closed",
                timed(lambda: fenced(lambda: server.access.conn.listAllDomains(0))),
            ],
        ]
    finally:
        local.close()
    return rows


def run_floor(conn: Any) -> tuple[float, int]:
    res = common.reservation("bench-floor", 301, IMAGE)
    names, xml = _names(res), vclvirt_xml(res)
    started = time.perf_counter()
    common.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(MASTER),
            "-F",
            "qcow2",
            names.overlay_path,
        ]
    )
    domain = conn.defineXML(xml)
    domain.setAutostart(1)
    domain.create()
    return time.perf_counter() - started, 0


def run_virt_install(workdir: Any) -> tuple[float, int]:
    overlay = HOST_DIR / "vms" / "bench-vi_7001-v0.qcow2"
    started = time.perf_counter()
    common.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(MASTER), "-F", "qcow2", str(overlay)]
    )
    common.run(
        [
            "virt-install",
            "--connect",
            "qemu:///system",
            "--name",
            "bench-vi_7001-v0",
            "--import",
            "--disk",
            f"path={overlay},format=qcow2,bus=ide",
            "--virt-type",
            "qemu",
            "--osinfo",
            "detect=on,require=off",
            "--noautoconsole",
            "--graphics",
            "vnc",
            "--network",
            "none",
            "--memory",
            "512",
            "--vcpus",
            "1",
        ]
    )
    return time.perf_counter() - started, 0


def vcl_commands(res: dict[str, Any]) -> list[tuple[str, str | None]]:
    """VCL's load (initialize, load, delete_existing_domains, XML, pre_define, define),
    cache warm, no old domain: one SSH process per command; (command, stdin)."""
    names, xml = _names(res), vclvirt_xml(res)
    xml_dir, computer = str(HOST_DIR / "xml"), names.computer
    return [
        ("which virsh", None),
        ("which qemu-img", None),
        ("which virt-win-reg", None),
        ("virsh net-list --all", None),
        ("virsh iface-list --all", None),
        ("virsh list --all", None),
        (f"rm -rfv {xml_dir}/{computer}_*.xml", None),
        (f"df -T -P {HOST_DIR / 'vms'}", None),
        ("virsh net-list --all", None),
        (f"stat {HOST_DIR / 'images'}/{IMAGE}.xml", None),
        (f"stat {MASTER}", None),
        (f"qemu-img create -f qcow2 -b {MASTER} -F qcow2 {names.overlay_path}", None),
        (f"ls -d {xml_dir} || mkdir -p {xml_dir}", None),
        (f"cat > {names.xml_path}", xml),
        (f"virsh define {names.xml_path}", None),
        (f"virsh autostart {names.domain}", None),
        (f"virsh start {names.domain}", None),
    ]


def run_vcl_style() -> tuple[float, int]:
    commands = vcl_commands(common.reservation("bench-vcl", 302, IMAGE))
    before = common.accepted_ssh()
    started = time.perf_counter()
    for command, stdin in commands:
        subprocess.run([*SSH, command], input=stdin, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    return elapsed, common.accepted_ssh() - before


def warm_load(ctx: Context, concurrency: int = 2) -> Any:
    """Image in the repository, node-a worker up, master copied, both pool children warm."""
    source = ctx.workdir / "none.qcow2"
    if not source.exists():
        common.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "64M"])
        common.publish_image(IMAGE, source)
    worker = common.start_worker(ctx, ["node-a"], concurrency, f"node-a-c{concurrency}")
    # Every pool child opens its connections and reads what it keeps (a master's reference
    # XML, the storage pools) on the first step it runs: enough loads that each child has
    # run each step (a wider worker is warmed by its benchmark's own first round).
    for i in range(6 if concurrency <= 2 else 1):
        common.load_all([common.reservation(f"bench-warm{i}", 320 + i, IMAGE)])
    common.cleanup_computers()
    return worker


def run(ctx: Context) -> list[tuple[str, str]]:
    import libvirt

    from vclvirt import composition

    reps = 1 if ctx.quick else 7
    worker = warm_load(ctx)
    conn = libvirt.open("qemu:///system")
    server = composition.current().host("node-a")
    pools_before = common.pool_names()
    names = ("vclvirt", "in-process", "floor", "virt-install", "vcl")
    times: dict[str, list[float]] = {k: [] for k in names}
    shakes: dict[str, list[int]] = {k: [] for k in names}
    ssh_time: list[float] = []
    ssh_commands: list[int] = []
    try:
        run_inprocess(server)  # opens this process's SSH and libssh connections
        common.cleanup_computers()
        for _ in range(reps):  # interleaved: A B C D E A B C D E ...
            for name, call in (
                ("vclvirt", run_vclvirt),
                ("in-process", lambda: run_inprocess(server)),
                ("floor", lambda: run_floor(conn)),
                ("virt-install", lambda: run_virt_install(ctx.workdir)),
                ("vcl", run_vcl_style),
            ):
                out = call()
                times[name].append(out[0])
                shakes[name].append(out[1])
                if name == "vclvirt":
                    ctx.real_loads.append(out[2])
                if name == "in-process":
                    ssh_time.append(out[2])
                    ssh_commands.append(out[3])
                common.cleanup_computers()
        costs = command_costs(server, 5 if ctx.quick else 20)
        guest_rows = guest_ready(ctx, 0 if ctx.quick else 3)
    finally:
        common.drop_new_pools(pools_before)
        conn.close()
        worker.stop()
        common.cleanup_computers()
    med = {k: median(v) for k, v in times.items()}
    labels = {
        "vclvirt": "vclvirt (Redis + worker over SSH/libssh)",
        "in-process": "vclvirt load steps in-process (same SSH/libssh, no queue)",
        "floor": "floor (qemu-img + defineXML + create, one process)",
        "virt-install": "virt-install --import (overlay created first)",
        "vcl": "VCL-style (one ssh process per command)",
    }
    rows = [
        [
            labels[k],
            len(times[k]),
            med[k],
            min(times[k]),
            max(times[k]),
            median(shakes[k]),
            med["vclvirt"] / med[k],
        ]
        for k in times
    ]
    main = table(
        [
            "alternative",
            "runs",
            "median s",
            "min s",
            "max s",
            "SSH handshakes/load",
            "vclvirt / this",
        ],
        rows,
    )
    main += (
        f"\n\nEnqueue (or command start) to domain running, guest boot excluded; os_type none, "
        f"64 MiB qcow2 master already on node-a; 512 MiB TCG domains; {reps} interleaved runs "
        f"each. VCL-style ran {len(vcl_commands(common.reservation('bench-x', 1, IMAGE)))} "
        f"ssh processes per load. Handshakes: new `Accepted publickey` lines in node-a's "
        f"sshd log during the load (vclvirt's worker reuses its pooled paramiko and libssh "
        f"connections)."
    )
    main += (
        f"\n\nThe in-process load steps ran {median(ssh_commands):.0f} commands over SSH per "
        f"load, {median(ssh_time):.3f} s of its {med['in-process']:.3f} s (median); the rest is "
        f"libvirt over qemu+libssh and Python. Transient errors retried in-process: "
        f"{'; '.join(RETRIES) or 'none'}.\n\n" + table(["one operation", "median ms"], costs)
    )
    guest = table(
        [
            "run",
            "enqueue→running s",
            "enqueue→READY s",
            "post_load s",
            "pre_define s",
            "master copied",
        ],
        guest_rows,
    )
    return [
        ("1. Warm-cache load latency (os_type none)", main),
        ("1b. Enqueue to READY, bootable test guest (os_type linux, TCG)", guest),
    ]


def guest_ready(ctx: Context, runs: int) -> list[list[Any]]:
    """The first load copies the master (cold, shown as run 0); the others are warm."""
    common.publish_image(
        GUEST_IMAGE,
        common.GUEST_CACHE / "vclvirt-test-guest.qcow2",
        (common.GUEST_CACHE / "vclvirt-test-guest.xml").read_text(),
    )
    rows = []
    for i in range(runs + 1):
        res = common.reservation("bench-guest", 310, GUEST_IMAGE, image_id=7002, os_type="linux")
        (result,) = common.load_all([res])
        rows.append(
            [
                f"{i}{' (cold)' if i == 0 else ''}",
                result.to_running,
                result.to_finished,
                result.step("post_load").get("duration_s"),
                result.step("pre_define").get("duration_s"),
                result.step("pre_define").get("result", {}).get("master_copied"),
            ]
        )
        if i:
            ctx.real_loads.append(result)
        common.cleanup_computers("bench-guest")
    return rows
