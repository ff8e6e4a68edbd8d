"""Fencing: a worker that lost its lease changes nothing when it comes back.

Each test runs real workers with the deployed lease (30 s), heartbeat and reconcile
settings. A first worker takes one load per step and holds each at the start of its step
(tests/hold_worker.py; the pre_define load instead in the middle of a real master copy).
Then the fault: the whole worker is frozen (SIGSTOP of its process group), or cut off
from Redis by a proxy that forwards nothing. A second worker takes the loads over and
finishes them. Only then does the first one come back, its holds released so that each
of its runs goes straight into its step: the test then checks, on the host and in the
record, that nothing changed — the domain's UUID, ID and QEMU process, the overlay's
inode, the XML, one domain per computer, post_load run once in the guest, and the record
exactly as the finishing worker left it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.conftest import (
    REDIS_PORT,
    Worker,
    computer_domains,
    guest_shell,
    make_reservation,
    uncached_image,
    wait_for,
)
from tests.partition import partition
from vclvirt import dispatch
from vclvirt.config.settings import Settings
from vclvirt.operations.load import LOAD_STEPS

pytestmark = pytest.mark.slow

LEASE = Settings().lease_ttl  # the deployed default, not shortened here
COPIED = "linux-E2eFenceCopy-631-v0"


@pytest.fixture
def post_load_counter(tmp_path: Path) -> dict[str, str]:
    """A post_load script that appends a line in the guest each time post_load runs."""
    scripts = tmp_path / "post-load"
    scripts.mkdir()
    script = scripts / "10-count"
    script.write_text("#!/bin/sh\necho ran >> /root/post_load_runs\n")
    script.chmod(0o755)
    return {"VCLVIRT_POST_LOAD_SCRIPTS_DIR": str(scripts)}


def _at(rid: int, step: str) -> bool:
    record = dispatch.status(rid)
    return bool(record and record.current_step == step and record.state == "running")


def _loads(
    testbed: Path, guest_image: str, cleanup: list[str], base: int, prefix: str
) -> dict[int, tuple[str, str, dict[str, Any]]]:
    """One reload per load step, each on a computer of its own; the pre_define one copies
    a master (1.9 GB of data, not cached on the host), the others boot the real guest."""
    uncached_image(testbed, COPIED, "3G", "1900M", "node-a")
    loads = {}
    for offset, step in enumerate(LOAD_STEPS):
        rid, computer = base + offset, f"{prefix}-{offset}"
        cleanup.append(computer)
        if step == "pre_define":
            reservation = make_reservation(rid, computer, COPIED, image_id=631, state="reload")
        else:
            reservation = make_reservation(
                rid, computer, guest_image, image_id=900, os_type="linux", state="reload"
            )
        loads[rid] = (step, computer, reservation)
    return loads


def _start_held(
    testbed: Path, loads: dict[int, tuple[str, str, dict[str, Any]]], hold: Any
) -> dict[int, str]:
    """Enqueue every load; once each is at its step (the copy: under way), the holder of
    each (the process running it)."""
    copying = next(rid for rid, (step, _, _) in loads.items() if step == "pre_define")
    for rid, (step, _, reservation) in loads.items():
        if rid != copying:
            hold(rid, step)
            dispatch.load(reservation)
    for rid, (step, _, _) in loads.items():
        if rid != copying:
            wait_for(lambda r=rid, s=step: _at(r, s), 180, f"reservation {rid} at {step}")
    dispatch.load(loads[copying][2])
    part = testbed / "hosts/node-a/images" / f"{COPIED}.qcow2.part"
    wait_for(lambda: part.exists() and part.stat().st_size > 0, 120, "the master copy")
    holders = {}
    for rid in loads:
        record = dispatch.status(rid)
        assert record is not None and record.lease_holder, rid
        holders[rid] = record.lease_holder
    return holders


def _host(testbed: Path, computer: str) -> dict[str, Any]:
    """What the host holds for the computer: domains with UUID, ID, QEMU pid and XML; the
    overlays' inodes; the XML files' digests."""
    conn = libvirt.open("qemu:///system")
    try:
        domains = {}
        for name in computer_domains(computer):
            domain = conn.lookupByName(name)
            pid_file = Path(f"/run/libvirt/qemu/{name}.pid")
            domains[name] = {
                "uuid": domain.UUIDString(),
                "id": domain.ID(),
                "active": domain.isActive(),
                "qemu_pid": pid_file.read_text().strip() if pid_file.exists() else None,
                "xml": hashlib.sha256(domain.XMLDesc(0).encode()).hexdigest(),
            }
    finally:
        conn.close()
    base = testbed / "hosts" / "node-a"
    return {
        "domains": domains,
        "overlays": {p.name: p.stat().st_ino for p in (base / "vms").glob(f"{computer}_*")},
        "xml": {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (base / "xml").glob(f"{computer}_*")
        },
    }


def _finished(loads: dict[int, Any], timeout: float) -> dict[int, Any]:
    finals = {rid: dispatch.Handle(rid, "").wait(timeout=timeout) for rid in loads}
    for rid, final in finals.items():
        assert final.state == "succeeded", (loads[rid][0], final.to_dict())
    return finals


def _outcomes(worker: Worker, loads: dict[int, Any]) -> dict[int, list[str]]:
    """How each of the old worker's runs ended, from its log: the events that stopped it."""
    seen: dict[int, list[str]] = {rid: [] for rid in loads}
    for line in worker.log_lines():
        rid = line.get("reservation_id")
        if rid in seen and line.get("event") in ("lease_lost", "cleanup_fenced", "step_failed"):
            seen[rid].append(f"{line['event']}: {line.get('error') or line.get('reason')}")
    return seen


def _check_nothing_changed(
    testbed: Path,
    loads: dict[int, tuple[str, str, dict[str, Any]]],
    before: dict[int, tuple[dict[str, Any], dict[str, Any]]],
    old: Worker,
    old_holders: dict[int, str],
) -> None:
    for rid, (step, computer, reservation) in loads.items():
        host_before, record_before = before[rid]
        assert _host(testbed, computer) == host_before, step
        (domain,) = host_before["domains"].values()  # one domain per computer
        assert domain["active"] == 1, step
        record = dispatch.status(rid)
        assert record is not None and record.to_dict() == record_before, step
        finisher = record.step_records["post_load"]["holder"]
        assert finisher != old_holders[rid]
        for later in LOAD_STEPS[LOAD_STEPS.index(step) :]:
            entry = record.step_records[later]
            assert entry["holder"] == finisher, (step, later, entry["holder"])
        if reservation["image"]["os_type"] == "linux":
            runs = guest_shell(testbed, reservation, "cat", "/root/post_load_runs")
            assert runs.split() == ["ran"], (step, runs)
    outcomes = _outcomes(old, loads)
    for rid, (step, _, _) in loads.items():
        print(f"old worker at {step:<24}: {outcomes[rid]}")
        assert outcomes[rid], (step, "the old worker's run did not stop visibly")


def _snapshot(
    testbed: Path, loads: dict[int, tuple[str, str, dict[str, Any]]]
) -> dict[int, tuple[dict[str, Any], dict[str, Any]]]:
    snapshot = {}
    for rid, (_, computer, _) in loads.items():
        record = dispatch.status(rid)
        assert record is not None
        snapshot[rid] = (_host(testbed, computer), record.to_dict())
    return snapshot


def _takeovers(loads: dict[int, Any], finals: dict[int, Any], since: float) -> None:
    for rid, (step, _, _) in loads.items():
        entry = finals[rid].step_records[step]
        print(
            f"fault at {step:<24} taken over {entry['started_at'] - since:5.1f} s after it, "
            f"finished {(finals[rid].finished_at or 0) - since:5.1f} s after it"
        )


def test_a_frozen_worker_changes_nothing_when_it_resumes(
    testbed, guest_image, start_worker, cleanup_computers, holds, post_load_counter
) -> None:
    """The whole worker SIGSTOPped at each step (pre_define in the middle of a real copy),
    SIGCONTed after another worker finished every load: host and records unchanged."""
    env, hold = holds
    loads = _loads(testbed, guest_image, cleanup_computers, 8701, "fence")
    old = start_worker("node-a", concurrency=len(loads), **env, **post_load_counter)
    old_holders = _start_held(testbed, loads, hold)

    os.killpg(old.process.pid, signal.SIGSTOP)
    frozen_at = time.time()
    try:
        new = start_worker("node-a", concurrency=len(loads), **post_load_counter)
        finals = _finished(loads, timeout=LEASE + 400)
        _takeovers(loads, finals, frozen_at)
        before = _snapshot(testbed, loads)
        for rid, (step, _, _) in loads.items():
            hold(rid, step, False)  # on resume, each run goes straight into its step
    finally:
        os.killpg(old.process.pid, signal.SIGCONT)
    wait_for(lambda: all(_outcomes(old, loads).values()), 60, "every old run to stop")
    time.sleep(3)  # anything the old worker would still do, it does by now
    _check_nothing_changed(testbed, loads, before, old, old_holders)
    assert new.process.poll() is None


def test_a_worker_cut_off_from_redis_stops_before_its_lease_ends_and_changes_nothing(
    testbed, guest_image, start_worker, cleanup_computers, holds, post_load_counter
) -> None:
    """One worker reaches Redis through a proxy that, cut, forwards nothing for longer than
    the lease: it stops its runs before their leases expire, another worker finishes
    them, and at the heal the cut-off worker's queued writes change nothing."""
    env, hold = holds
    loads = _loads(testbed, guest_image, cleanup_computers, 8721, "cutoff")
    with partition(int(REDIS_PORT)) as proxy:
        old = start_worker(
            "node-a",
            concurrency=len(loads),
            VCLVIRT_BROKER_URL=proxy.url,
            **env,
            **post_load_counter,
        )
        old_holders = _start_held(testbed, loads, hold)
        proxy.cut()
        cut_at = time.time()
        for rid, (step, _, _) in loads.items():
            hold(rid, step, False)  # cut off, each run goes on into its step
        wait_for(lambda: all(_outcomes(old, loads).values()), LEASE, "every cut-off run to stop")
        stopped_after = time.time() - cut_at
        print(f"cut-off worker stopped all its runs {stopped_after:.1f} s after the cut")
        assert stopped_after < LEASE  # before any of its leases could expire
        new = start_worker("node-a", concurrency=len(loads), **post_load_counter)
        finals = _finished(loads, timeout=LEASE + 400)
        _takeovers(loads, finals, cut_at)
        before = _snapshot(testbed, loads)
        assert time.time() - cut_at > LEASE
        proxy.heal()
        time.sleep(LEASE / 2)  # whatever waited in the partition lands now
        _check_nothing_changed(testbed, loads, before, old, old_holders)
        assert new.process.poll() is None


def test_two_workers_for_one_host_never_run_more_than_its_limit(
    testbed, start_worker, cleanup_computers, holds, inventory
) -> None:
    """Two workers started for node-b (max_concurrent_loads = 2), four processes each:
    six loads held at define never run more than two at once; the others say why they
    wait, and all six finish once released."""
    env, hold = holds
    limit = inventory.host("node-b").max_concurrent_loads
    assert limit == 2
    from tests.conftest import repository_image

    image = "linux-E2eFenceSlots-632-v0"
    repository_image(testbed, image)
    loads = {}
    for offset in range(6):
        rid, computer = 8741 + offset, f"slots-{offset}"
        cleanup_computers.append(computer)
        loads[rid] = make_reservation(rid, computer, image, image_id=632, host="node-b")
        hold(rid, "define")
    start_worker("node-b", concurrency=4, **env)
    start_worker("node-b", concurrency=4, **env)
    for reservation in loads.values():
        dispatch.load(reservation)

    def at_define() -> list[int]:
        return [rid for rid in loads if _at(rid, "define")]

    wait_for(lambda: len(at_define()) == limit, 120, f"{limit} loads at define")
    waiting = [dispatch.status(rid) for rid in loads if rid not in at_define()]
    observed = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # nothing else starts while the two hold
        observed = max(observed, len(at_define()))
        time.sleep(0.2)
    assert observed == limit
    assert any(
        record and record.waiting and "runs 2 operations" in record.waiting["reason"]
        for record in waiting
    ), [r.to_dict() if r else None for r in waiting]
    for rid in loads:
        hold(rid, "define", False)
    finals = {rid: dispatch.Handle(rid, "").wait(timeout=300) for rid in loads}
    assert all(f.state == "succeeded" for f in finals.values())
    spans = sorted(
        (f.step_records["define"]["started_at"], f.step_records["post_load"]["ended_at"])
        for f in finals.values()
    )
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    print(f"at most {most} loads of node-b between define and the end at once")
    assert most <= limit
