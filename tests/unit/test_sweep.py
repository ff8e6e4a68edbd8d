"""vclvirt/sweep.py: what no record owns, on a host of the unit tier (libvirt's test driver,
real qemu-img on files under tmp_path) beside a computer loaded to READY by the real load
operation, with ownership in the in-memory store."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.unit._provisioning import UnitHost
from tests.unit._runs import SETTINGS, ToyWorld, load_world, toy_reservation
from vclvirt.locks import ResourceLock, RunOwner
from vclvirt.node.host_lock import host_lock
from vclvirt.operations import operation
from vclvirt.provisioning.leftovers import part_lock
from vclvirt.state import keys
from vclvirt.sweep import Orphan, Sweep

HOST = "unit-host"
IMAGE = "linux-Unit-11-v0"


@pytest.fixture
def bed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ToyWorld, UnitHost]:
    """unit-vm1 loaded to READY (its domain runs on its overlay, its XML is written)."""
    world, unit = load_world(tmp_path, monkeypatch)
    rid = toy_reservation().reservation_id
    assert world.runner.run(rid, world.begin(operation("load")))["state"] == "succeeded"
    return world, unit


def overlay(unit: UnitHost, name: str, backing: str = IMAGE) -> Path:
    path = unit.vms / name
    master = unit.datastore / f"{backing}.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(master), "-F", "qcow2", str(path)],
        check=True,
    )
    return path


def stale(path: Path, age: float = 7200) -> Path:
    if not path.exists():
        path.write_bytes(b"partial")
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def define(unit: UnitHost, name: str, disks: list[Path]) -> None:
    unit.conn.defineXML(unit.domain_xml(name, [str(d) for d in disks])).create()


def listed(world: ToyWorld, grace: float = 3600) -> set[tuple[str, str]]:
    return {(o.kind, o.name) for o in Sweep(world.redis, world.host, grace=grace).find()}


def everything(unit: UnitHost) -> tuple[set[str], set[Path]]:
    names = {d.name() for d in unit.conn.listAllDomains(0)}
    return names, {p for d in (unit.datastore, unit.vms, unit.xml) for p in d.iterdir()}


def plant(unit: UnitHost) -> dict[str, object]:
    """One of each orphan kind, and what only looks like one (kept)."""
    orphan_disk = overlay(unit, "unit-vm2_11-v0.qcow2")
    define(unit, "unit-vm2_Old_11-v0", [orphan_disk])
    lone = overlay(unit, "unit-vm3_11-v0.qcow2")
    xml = unit.xml / "unit-vm4_11-v0.xml"
    xml.write_text("<domain/>")
    part = stale(unit.datastore / "linux-Gone-12-v0.qcow2.part")
    xml_part = stale(unit.xml / "unit-vm5_11-v0.xml.part")
    # kept: someone else's domain (on a file named like an overlay), a master named like an
    # overlay, a standalone qcow2 named like an overlay, a fresh .part, a master
    foreign_disk = overlay(unit, "unit-vm6_11-v0.qcow2")
    define(unit, "my-build-vm", [foreign_disk])
    unit.master("unit-vm7_11-v0")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(unit.vms / "unit-vm8_11-v0.qcow2"), "1M"],
        check=True,
    )
    (unit.datastore / "linux-Copying-13-v0.qcow2.part").write_bytes(b"fresh")
    return {
        "orphans": {
            ("domain", "unit-vm2_Old_11-v0"),
            ("overlay", str(orphan_disk)),
            ("overlay", str(lone)),
            ("xml", str(xml)),
            ("part", str(part)),
            ("part", str(xml_part)),
        }
    }


def test_only_what_no_record_owns_is_listed(bed):
    """The READY computer's domain, overlay and XML are owned; one orphan of each kind is
    listed with its computer and why; a foreign domain, a master, a file that only looks
    like an overlay and a .part younger than the grace are not."""
    world, unit = bed
    planted = plant(unit)
    before = everything(unit)

    found = Sweep(world.redis, world.host).find()

    assert {(o.kind, o.name) for o in found} == planted["orphans"]
    domain = next(o for o in found if o.kind == "domain")
    assert domain.computer == "unit-vm2"
    assert domain.why == "no record owns unit-vm2; it was never loaded here"
    assert everything(unit) == before  # listing changes nothing


def test_remove_removes_exactly_the_orphans(bed):
    """--remove: the orphans are gone, everything else (the READY computer's domain running
    on its overlay, the foreign domain, masters, the fresh .part) is as it was."""
    world, unit = bed
    planted = plant(unit)
    names, files = everything(unit)

    done = Sweep(world.redis, world.host).remove(Sweep(world.redis, world.host).find())

    assert {(o.kind, o.name, o.outcome) for o in done} == {
        (kind, name, "removed") for kind, name in planted["orphans"]
    }
    left_names, left_files = everything(unit)
    assert left_names == names - {"unit-vm2_Old_11-v0"}
    gone = {Path(name) for kind, name in planted["orphans"] if kind != "domain"}
    # the datastore .part's removal took its copy's lock file, as a copy would
    assert left_files - files == {
        Path(part_lock(str(unit.datastore / "linux-Gone-12-v0.qcow2.part")))
    }
    assert left_files & gone == set() and files - gone <= left_files
    ready = unit.conn.lookupByName(world.record().step_records["define"]["result"]["domain"])
    assert ready.isActive()
    assert listed(world) == set()


def test_a_computer_whose_lock_is_held_is_left_alone(bed):
    """A load holds unit-vm2's lock: none of its things is listed, and a removal listed
    before the lock was taken leaves them."""
    world, unit = bed
    plant(unit)
    found = Sweep(world.redis, world.host).find()
    lock = ResourceLock(
        world.redis, f"computer:{HOST}:unit-vm2", RunOwner(77, 1, "n|b|1"), ttl=30, fenced=True
    )
    assert lock.acquire(wait=0)

    assert not {n for k, n in listed(world) if "unit-vm2" in n}
    done = Sweep(world.redis, world.host).remove(found)

    assert {o.outcome for o in done if o.computer == "unit-vm2"} == {"left: unit-vm2 became busy"}
    assert "unit-vm2_Old_11-v0" in everything(unit)[0]


def test_ownership_is_read_again_under_the_lock(bed):
    """Listed, then a load of unit-vm2 is enqueued before the removal: the removal judges
    again under the lock and leaves all of unit-vm2 (its record is in flight)."""
    world, unit = bed
    plant(unit)
    found = Sweep(world.redis, world.host).find()
    world.begin(operation("load"), toy_reservation(computer="unit-vm2", computer_id=32))

    done = Sweep(world.redis, world.host).remove(found)

    left = {o.outcome for o in done if o.computer == "unit-vm2"}
    assert left == {
        "left: judged again under the lock: unit-vm2 is busy (reservation 1032 is queued (load))"
    }
    assert "unit-vm2_Old_11-v0" in everything(unit)[0]


def test_a_part_whose_copy_holds_its_lock_is_left(bed):
    """A copy (alive, holding `.<image>.lock`) may stall on a slow link: its old .part is
    not listed while the lock is held, and a removal listed before it took the lock
    leaves it; once the copy is gone, it is listed."""
    world, unit = bed
    part = stale(unit.datastore / "linux-Slow-14-v0.qcow2.part")
    orphan = Orphan(HOST, "part", str(part), None, "left by a copy")

    with host_lock(world.host.access.node, part_lock(str(part)), wait=5):
        assert listed(world) == set()
        (done,) = Sweep(world.redis, world.host).remove([orphan])

    assert done.outcome == "left: a copy holds its lock"
    assert part.exists()
    assert listed(world) == {("part", str(part))}


def test_an_unloaded_computer_owns_nothing(bed):
    """After unload ("noimage") a domain named for the computer owns nothing: a domain a
    dead worker left defined after the unload is an orphan."""
    world, unit = bed
    rid = toy_reservation().reservation_id
    assert world.runner.run(rid, world.begin(operation("unload")))["state"] == "succeeded"
    define(unit, "unit-vm1_Unitimage_11-v0", [])

    assert listed(world) == {("domain", "unit-vm1_Unitimage_11-v0")}


def test_an_image_held_for_an_expired_record_keeps_the_whole_computer(bed):
    """The computer holds an image for a reservation whose record has expired (it outlived
    the record TTL): its domain's name is unknown, so nothing of the computer is listed."""
    world, unit = bed
    world.redis.delete(keys.record(toy_reservation().reservation_id))
    world.redis.delete(keys.computer_owner(HOST, "unit-vm1"))
    define(unit, "unit-vm1_Other_12-v0", [])

    assert listed(world) == set()
    image = json.loads(world.redis.get(keys.computer_image(HOST, "unit-vm1")))
    assert image["image"] == IMAGE


@pytest.fixture
def cli_on(bed, monkeypatch: pytest.MonkeyPatch) -> tuple[ToyWorld, UnitHost]:
    """`vclvirt sweep` in this process, its inventory the unit host, its store the world's."""
    from vclvirt import cli, composition
    from vclvirt.config.inventory import Inventory

    world, unit = bed

    class Root:
        redis, settings = world.redis, SETTINGS

        def host(self, name: str) -> object:
            return world.host

    monkeypatch.setattr(composition, "current", Root)
    monkeypatch.setattr(cli, "get_inventory", lambda: Inventory(hosts={HOST: world.config}))
    return world, unit


def sweep_cli(*args: str) -> tuple[int, list[str]]:
    from typer.testing import CliRunner

    from vclvirt import cli

    done = CliRunner().invoke(cli.app, ["sweep", *args])
    return done.exit_code, [line for line in done.stdout.splitlines() if line.startswith(HOST)]


def test_the_cli_exits_7_while_orphans_are_listed_and_0_once_removed(cli_on):
    """One tab-separated line per orphan and exit 7; --remove adds each outcome and exits
    0; then nothing is listed and the exit is 0."""
    _world, unit = cli_on
    planted = plant(unit)["orphans"]

    status, lines = sweep_cli()
    assert status == 7
    assert {tuple(line.split("\t")[1:3]) for line in lines} == planted

    status, lines = sweep_cli("--remove", "--host", HOST)
    assert status == 0
    assert {line.split("\t")[3] for line in lines} == {"removed"}
    assert sweep_cli() == (0, [])


def test_the_cli_refuses_an_unknown_host_before_anything_is_read(cli_on):
    """An unknown host is invalid input (exit 2), whatever else is asked."""
    from typer.testing import CliRunner

    from vclvirt import cli

    plant(cli_on[1])
    before = everything(cli_on[1])

    done = CliRunner().invoke(cli.app, ["sweep", "--host", HOST, "--host", "nope", "--remove"])

    assert done.exit_code == 2
    assert "host 'nope' is not in the inventory" in done.output
    assert everything(cli_on[1]) == before


def test_an_overlay_a_domain_that_became_busy_uses_is_left(bed):
    """unit-vm9's orphan domain runs on unit-vm3's orphan overlay; between listing and
    removal a load takes unit-vm9: its domain stays, so the overlay under it stays too."""
    world, unit = bed
    shared = overlay(unit, "unit-vm3_11-v0.qcow2")
    define(unit, "unit-vm9_X_11-v0", [shared])
    found = Sweep(world.redis, world.host).find()
    assert {(o.kind, o.name) for o in found} == {
        ("domain", "unit-vm9_X_11-v0"),
        ("overlay", str(shared)),
    }
    lock = ResourceLock(
        world.redis, f"computer:{HOST}:unit-vm9", RunOwner(78, 1, "n|b|1"), ttl=30, fenced=True
    )
    assert lock.acquire(wait=0)

    done = Sweep(world.redis, world.host).remove(found)

    assert {o.name: o.outcome for o in done} == {
        "unit-vm9_X_11-v0": "left: unit-vm9 became busy",
        str(shared): "left: judged again under the lock: no longer an orphan",
    }
    assert shared.exists()


def test_a_sweep_whose_computer_was_taken_meanwhile_runs_nothing_on_the_host(world: ToyWorld):
    """The host has seen a newer fencing token for unit-vm2 than the sweep's (a load took
    the computer while the sweep was paused past its lock): the host refuses the sweep's
    commands, nothing is removed, and the orphan is reported left, saying why."""
    xml = f"{world.config.xml_dir}/unit-vm2_11-v0.xml"
    world.node.on("sh", "-c", "date +%s*", stdout=b"1000\n")
    world.node.on(
        "sh",
        "-c",
        "date +%s*",
        "sh",
        world.config.xml_dir,
        stdout=b"1000\n990 unit-vm2_11-v0.xml\0",
    )
    (found,) = Sweep(world.redis, world.host).find()
    assert (found.kind, found.name) == ("xml", xml)
    world.node.tokens[f"{world.config.fence_dir}/unit-vm2"] = 2**62

    (done,) = Sweep(world.redis, world.host).remove([found])

    assert done.outcome == "left: unit-vm2 was taken meanwhile (fenced)"
    assert world.node.argvs("rm") == [] and world.node.argvs("find") == []
    assert world.redis.get(keys.lock(f"computer:{HOST}:unit-vm2")) is None  # let go


def test_an_orphan_domain_on_the_ready_overlay_goes_without_it(bed):
    """A stray domain of the READY computer, under another pretty name, has the READY
    overlay as its disk: the domain is an orphan and goes; the overlay is owned and stays."""
    world, unit = bed
    ready = unit.vms / "unit-vm1_11-v0.qcow2"
    define(unit, "unit-vm1_Renamed_11-v0", [ready])

    found = Sweep(world.redis, world.host).find()
    assert {(o.kind, o.name) for o in found} == {("domain", "unit-vm1_Renamed_11-v0")}
    (done,) = Sweep(world.redis, world.host).remove(found)

    assert done.outcome == "removed"
    assert ready.exists()
    assert "unit-vm1_Renamed_11-v0" not in everything(unit)[0]
