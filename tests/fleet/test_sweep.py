"""`vclvirt sweep` on a fleet host: one of each orphan kind planted on fleet-1's own
libvirtd and disk, beside what must stay (a master, someone else's domain, a file that
only looks like an overlay, a READY computer's domain, overlay and XML), is listed
(changing nothing) and then removed, exactly."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import libvirt
import pytest

from tests.conftest import TEST_BROKER, make_reservation, vclvirt_cli
from tests.fleet.conftest import fleet_ssh
from vclvirt import operations
from vclvirt.identity import Identity
from vclvirt.models import parse_reservation
from vclvirt.naming import LoadNames, file_base_name
from vclvirt.operation import Operation, Step, StepContext
from vclvirt.state import keys
from vclvirt.state.client import redis_client
from vclvirt.state.records import RecordStore
from vclvirt.sweep import Sweep

IMAGE_ID = 641
# A TCG domain; with a disk it is only defined (never started), without one it runs.
DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name><uuid>{uuid}</uuid>
  <memory unit='MiB'>32</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{disk}</devices>
</domain>"""
DISK = (
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
    "<source file='{path}'/><target dev='vda' bus='virtio'/></disk>"
)


@dataclass
class Planted:
    """What the test put on fleet-1, by what must become of it."""

    tag: str
    orphans: set[tuple[str, str]] = field(default_factory=set)  # (kind, name or path)
    kept_domains: set[str] = field(default_factory=set)
    kept_files: set[str] = field(default_factory=set)
    domains: list[str] = field(default_factory=list)
    computers: list[str] = field(default_factory=list)


def _domain(conn: libvirt.virConnect, name: str, disk: str | None = None) -> None:
    xml = DOMAIN_XML.format(
        name=name, uuid=uuid.uuid4(), disk=DISK.format(path=disk) if disk else ""
    )
    domain = conn.defineXML(xml)
    if disk is None:
        domain.create()


def _domains(host: Any) -> set[str]:
    conn = libvirt.open(host.effective_libvirt_uri)
    try:
        return {d.name() for d in conn.listAllDomains(0)}
    finally:
        conn.close()


def _files(host: Any, tag: str) -> set[str]:
    found = fleet_ssh(
        host, "find", host.datastore_path, host.vm_path, host.xml_dir, "-name", f"*{tag}*"
    )
    return set(found.stdout.split())


# Made on the host in one command: $1 a master; $2 a qcow2 that is no overlay; $3 a stale
# .part; then overlays of the master ($4 and after, up to "--") and plain files (the rest).
_FILES = r"""set -e
master=$1 standalone=$2 part=$3
shift 3
qemu-img create -q -f qcow2 "$master" 64M
qemu-img create -q -f qcow2 "$standalone" 64M
echo partial > "$part" && touch -d "2 hours ago" "$part"
while [ "$1" != -- ]; do qemu-img create -q -f qcow2 -b "$master" -F qcow2 "$1" 64M; shift; done
shift
for plain in "$@"; do echo '<domain/>' > "$plain"; done
"""


def _ready(host: Any, computer: str, tag: str, monkeypatch: pytest.MonkeyPatch) -> LoadNames:
    """A reservation of `computer` whose load ended READY, as the state keeps it: its record
    succeeded and the computer holds its image, written by a real run of the runner (a
    one-step operation standing for the load's, on fleet-1 behind the computer's fence)."""
    from vclvirt import composition
    from vclvirt.config.settings import get_settings
    from vclvirt.runner import Runner

    image = f"linux-SweepReady{tag}-{IMAGE_ID}-v0"
    document = make_reservation(7641, computer, image, image_id=IMAGE_ID, host=host.name)
    reservation = parse_reservation(document)

    def ready(ctx: StepContext) -> dict[str, Any]:
        ctx.set_computer_image(
            {"image": image, "revision_id": IMAGE_ID * 100, "reservation_id": 7641}
        )
        return {}

    op = Operation("fleet_sweep_ready", "a load's end", (Step("ready", ready),), owns_computer=True)
    monkeypatch.setitem(operations.OPERATIONS, op.name, op)
    client = redis_client(TEST_BROKER)
    generation = RecordStore(client).begin(reservation, op.name, ["ready"], owns_computer=True)
    root = composition.Root(get_settings(), Identity.worker([host.name]), client=client)
    runner = Runner(client, root.settings, root.host, identity=root.identity)
    assert runner.run(7641, generation)["state"] == "succeeded"
    return LoadNames.for_reservation(
        reservation, datastore_path=host.datastore_path, vm_path=host.vm_path, xml_dir=host.xml_dir
    )


@pytest.fixture
def planted(fleet_env: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Planted]:
    host = fleet_env.host("fleet-1")
    tag = uuid.uuid4().hex[:6]
    plant = Planted(tag)
    c = plant.computers = [f"sw{tag}-{i}" for i in range(6)]

    def base(i: int) -> str:
        return file_base_name(c[i], IMAGE_ID, 0)

    master = f"{host.datastore_path}/linux-SweepMaster{tag}-{IMAGE_ID}-v0.qcow2"
    # orphans: a defined domain on its overlay, a running one, an overlay alone, an XML
    # file, a copy's .part untouched for two hours
    disk, lone = f"{host.vm_path}/{base(1)}.qcow2", f"{host.vm_path}/{base(3)}.qcow2"
    xml = f"{host.xml_dir}/{base(4)}.xml"
    part = f"{host.datastore_path}/linux-SweepGone{tag}-{IMAGE_ID}-v0.qcow2.part"
    plant.orphans = {("overlay", disk), ("overlay", lone), ("xml", xml), ("part", part)}
    # kept: the master, a standalone qcow2 named like an overlay, someone else's domain,
    # and a READY computer's domain on its overlay, and its XML file
    looks_like, foreign = f"{host.vm_path}/{base(5)}.qcow2", f"my-build-vm-{tag}"
    try:
        names = _ready(host, c[0], tag, monkeypatch)
        fleet_ssh(
            host,
            *("sh", "-c", _FILES, "sh", master, looks_like, part),
            *(disk, lone, names.overlay_path, "--", xml, names.xml_path),
        )
        plant.kept_files = {master, looks_like, names.overlay_path, names.xml_path}
        with contextlib.closing(libvirt.open(host.effective_libvirt_uri)) as conn:
            for name, path in (
                (f"{c[1]}_Old_{IMAGE_ID}-v0", disk),
                (f"{c[2]}_Run_{IMAGE_ID}-v0", None),
                (foreign, None),
                (names.domain, names.overlay_path),
            ):
                plant.domains.append(name)
                _domain(conn, name, path)
        plant.orphans |= {("domain", name) for name in plant.domains[:2]}
        plant.kept_domains = {foreign, names.domain}
        yield plant
    finally:
        _undefine(host, plant.domains)
        fleet_ssh(
            host,
            *("find", host.datastore_path, host.vm_path, host.xml_dir),
            *("-name", f"*{tag}*", "-delete"),
            check=False,
        )
        fleet_ssh(host, "rm", "-rf", *(f"{host.fence_dir}/{computer}" for computer in c))
        client = redis_client(TEST_BROKER)
        client.delete(keys.record(7641), keys.computer_owner(host.name, c[0]))
        client.delete(keys.computer_image(host.name, c[0]))


def _undefine(host: Any, names: list[str]) -> None:
    conn = libvirt.open(host.effective_libvirt_uri)
    try:
        for domain in conn.listAllDomains(0):
            if domain.name() in names:
                with contextlib.suppress(libvirt.libvirtError):
                    if domain.isActive():
                        domain.destroy()
                    domain.undefine()
    finally:
        conn.close()


def _in_process(host: str) -> Sweep:
    from vclvirt import composition
    from vclvirt.config.settings import get_settings

    client = redis_client(TEST_BROKER)
    root = composition.Root(get_settings(), Identity.client(), client=client)
    return Sweep(client, root.host(host))


def _sweep(tag: str, *flags: str) -> tuple[int, list[dict[str, Any]]]:
    done = vclvirt_cli("sweep", "--host", "fleet-1", "--json", *flags)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.stderr == "" or "error" not in done.stderr, done.stderr
    return done.returncode, [line for line in lines if tag in line["name"]]


def test_sweep_lists_then_removes_exactly_the_orphans(planted: Planted, fleet_env: Any):
    """Listing shows each orphan once (exit 7) and changes nothing; --remove removes
    exactly those (exit 0), behind each computer's fence on the host; the master, the
    foreign domain, the look-alike file and the READY computer's things all stay."""
    host, tag = fleet_env.host("fleet-1"), planted.tag
    domains_before, files_before = _domains(host), _files(host, tag)

    status, listed = _sweep(tag)

    assert status == 7
    assert {(o["kind"], o["name"]) for o in listed} == planted.orphans
    assert len(listed) == len(planted.orphans)
    assert all(o["outcome"] is None and o["why"] for o in listed)
    assert (_domains(host), _files(host, tag)) == (domains_before, files_before)

    status, removed = _sweep(tag, "--remove")

    assert status == 0
    assert {(o["kind"], o["name"], o["outcome"]) for o in removed} == {
        (kind, name, "removed") for kind, name in planted.orphans
    }
    orphan_names = {name for _, name in planted.orphans}
    assert _domains(host) == domains_before - orphan_names
    assert planted.kept_domains <= _domains(host)
    files = {f for f in _files(host, tag) if not f.startswith(host.fence_dir)}
    lock = f"{host.datastore_path}/.linux-SweepGone{tag}-{IMAGE_ID}-v0.lock"  # the copy's lock
    assert files == (files_before - orphan_names) | {lock}
    assert planted.kept_files <= files
    # the computers' removals ran behind their fence: the host recorded the sweep's token
    tokens = [f"{host.fence_dir}/{computer}/token" for computer in planted.computers[1:5]]
    assert all(int(token) > 0 for token in fleet_ssh(host, "cat", *tokens).stdout.split())
    assert [o for o in _in_process("fleet-1").find() if tag in o.name] == []
