"""Every operation of the registry, run through the runner on a host of the unit tier
(libvirt's test driver, real qemu-img on the test's files, the in-memory store): a
reservation's life from load to capture and unload. A new operation fails this test
until it is run here too."""

from __future__ import annotations

from typing import Any

from tests.unit._runs import ToyWorld, load_world, toy_reservation
from vclvirt.models import Reservation, parse_reservation
from vclvirt.operations import OPERATIONS, operation


def run(
    world: ToyWorld, name: str, reservation: Reservation, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Enqueue (as dispatch does) and run the operation; what its only or last step gave."""
    op = operation(name)
    generation = world.records.begin(
        reservation, op.name, list(op.step_names), params or {}, owns_computer=op.owns_computer
    )
    summary = world.runner.run(reservation.reservation_id, generation)
    record = world.record(reservation.reservation_id)
    assert summary["state"] == "succeeded", (name, record.to_dict())
    return dict(record.step_records[op.step_names[-1]].get("result") or {})


def test_every_operation_runs_to_its_end_through_the_runner(tmp_path, monkeypatch):
    world, unit = load_world(tmp_path, monkeypatch)
    r = toy_reservation()

    run(world, "load", r)
    domain = unit.conn.lookupByName(world.record().step_records["define"]["result"]["domain"])
    # The test driver records no backing chain, so the domain's image is unknown here:
    # READY is proven on libvirtd (tests/integration, tests/e2e).
    assert run(world, "node_status", r)["status"] == "RELOAD"
    assert run(world, "power_status", r)["power"] == "on"
    run(world, "power_reset", r)
    # The test driver has no ACPI: the guest shuts down by itself here (the ACPI
    # shutdown of power_off and capture is proven with a real guest in tests/e2e).
    domain.destroy()
    assert run(world, "power_off", r)["method"] == "already off"
    run(world, "power_on", r)
    assert run(world, "power_status", r)["power"] == "on"
    picture = run(world, "screenshot", r)["file"]
    assert picture["mime"].startswith("image/") and picture["size_bytes"] > 0  # test driver
    run(world, "snapshot_create", r, {"name": "before"})
    assert [s["name"] for s in run(world, "snapshot_list", r)["snapshots"]] == ["before"]
    run(world, "snapshot_revert", r, {"name": "before"})
    run(world, "snapshot_delete", r, {"name": "before"})
    domain.destroy()

    image = r.model_dump(mode="json")
    image["state"] = "image"
    image["image"].update(revision=1, revision_id=1101)
    run(world, "capture", parse_reservation(image))
    outcome = world.record(r.reservation_id).outcome
    assert outcome is not None and outcome["new_image"] == "linux-Unitimage-11-v1"
    assert (unit.datastore / "linux-Unitimage-11-v1.qcow2").exists()

    run(world, "load", r)
    run(world, "unload", r)
    assert unit.conn.listAllDomains(0) == []
    run(world, "post_maintenance_action", r)

    record = world.record(r.reservation_id)  # its history holds the operations before
    ran = {h["operation"] for h in record.history if h["state"] == "succeeded"}
    ran.add(record.operation)
    assert ran == set(OPERATIONS), f"not run here: {sorted(set(OPERATIONS) - ran)}"
