"""The runner on real parts, in this process: a real Redis, a host reached without SSH
(local transport, real files, real qemu-img) and libvirt's test:///default driver.

Covers the guarantees that live in the runner: one load per computer (lock and
supersede), transient errors retried with backoff until their deadline, permanent ones
failed at once, a lost lease stopping the operation, a lost step resumed.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_reservation
from vclvirt import cancellation
from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import Settings
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.hypervisor.connection import connect
from vclvirt.identity import Identity
from vclvirt.locks import ResourceLock
from vclvirt.models import parse_reservation
from vclvirt.node.local import LocalTransport
from vclvirt.provisioning.host import Host, build_host
from vclvirt.runner import Runner
from vclvirt.state import keys
from vclvirt.state.fence import FencedRecord, RecordFence
from vclvirt.state.leases import Holder, Leases
from vclvirt.state.records import RecordStore
from vclvirt.state.steps import StepEntry

IMAGE = "linux-RunnerImage-77-v0"

ME = Identity.client()  # this test process, as a client claims leases


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def sim_host(tmp_path: Path) -> HostConfig:
    """A host whose files are in tmp_path and whose hypervisor is libvirt's test driver."""
    for sub in ("images", "vms", "xml"):
        (tmp_path / sub).mkdir()
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            str(tmp_path / "images" / f"{IMAGE}.qcow2"),
            "16M",
        ],
        check=True,
    )
    return HostConfig(
        name=f"sim-{tmp_path.name[-12:].replace('_', '-')}",
        address="127.0.0.1",
        transport="local",
        libvirt_uri="test:///default",
        domain_type="test",
        datastore_path=str(tmp_path / "images"),
        vm_path=str(tmp_path / "vms"),
        xml_dir=str(tmp_path / "xml"),
    )


def _server(host: HostConfig, client: Any, settings: Settings) -> Host:
    node = LocalTransport(host.name)
    keys = GuestHostKeys(client)
    return build_host(host, node, settings, keys, connect=lambda: connect(host))


class Harness:
    """Begins reservations on the sim host and runs them with a Runner."""

    def __init__(self, client: Any, host: HostConfig, settings: Settings) -> None:
        self.client, self.host, self.settings = client, host, settings
        self.records = RecordStore(client)
        self.server: Host = _server(host, client, settings)
        self.runner = Runner(client, settings, lambda _: self.server, identity=ME)

    def reservation(self, rid: int, computer: str, image: str = IMAGE, **kw: Any) -> Any:
        data = make_reservation(rid, computer, image, host=self.host.name, image_id=77, **kw)
        return parse_reservation(data)

    def begin(self, rid: int, computer: str, **kw: Any) -> int:
        return self.records.begin(
            self.reservation(rid, computer, **kw), "load", _LOAD_STEPS, owns_computer=True
        )

    def run(self, rid: int) -> dict[str, Any]:
        record = self.records.get(rid)
        assert record is not None
        return self.runner.run(rid, record.generation)

    def redispatch(self, rid: int) -> None:
        """What recovery does when a wait is due: the next generation."""
        record = self.records.get(rid)
        assert record is not None
        assert self.records.redispatch(rid, record.generation, "test") is not None


_LOAD_STEPS = [
    "node_status",
    "delete_existing_domains",
    "pre_define",
    "generate_xml",
    "define",
    "power_on",
    "post_load",
]


@pytest.fixture
def harness(state_redis: Any, sim_host: HostConfig) -> Harness:
    return Harness(state_redis, sim_host, Settings(broker_url="redis://unused"))


def _states(harness: Harness, rid: int) -> dict[str, str | None]:
    record = harness.records.get(rid)
    assert record is not None
    return {s: record.step_records.get(s, {}).get("state") for s in record.steps}


def test_a_load_runs_every_step_and_leaves_the_domain_and_its_overlay(harness) -> None:
    """All seven steps succeed in one run; the domain is running on its overlay."""
    harness.begin(9201, "run-vm1")
    outcome = harness.run(9201)
    assert outcome["state"] == "succeeded", outcome
    assert set(_states(harness, 9201).values()) == {"succeeded"}
    record = harness.records.get(9201)
    assert record is not None and record.finished and record.lease_holder is None
    assert harness.client.get(keys.lease(9201)) is None
    assert (Path(harness.host.vm_dir) / "run-vm1_77-v0.qcow2").exists()
    assert harness.server.power.status(harness.reservation(9201, "run-vm1"))["power"] == "on"


def test_a_message_for_an_old_generation_or_a_live_holders_run_is_dropped(harness) -> None:
    """A stale or duplicate message changes nothing."""
    generation = harness.begin(9202, "run-vm2")
    assert harness.runner.run(9202, generation + 1) == {"dropped": "stale"}
    Leases(harness.client, ttl_seconds=30).claim(9202, generation, Holder("w@other", "b", 1))
    assert harness.runner.run(9202, generation) == {"dropped": "held"}
    assert set(_states(harness, 9202).values()) == {None}


def test_a_computer_held_by_another_reservation_is_waited_for_outside_the_slot(
    harness,
) -> None:
    """One load per computer: while another reservation holds the computer's lock, the
    run ends at once as waiting (due again later), and no step has run."""
    harness.begin(9203, "run-vm3")
    other = ResourceLock(
        harness.client, f"computer:{harness.host.name}:run-vm3", "reservation:1", ttl=30
    )
    assert other.acquire(wait=0)

    outcome = harness.run(9203)

    assert outcome["state"] == "waiting"
    record = harness.records.get(9203)
    assert record is not None and record.state == "waiting"
    assert record.waiting and "reservation:1" in record.waiting["reason"]
    assert harness.client.zscore(keys.due(harness.host.name), "9203") is not None
    assert set(_states(harness, 9203).values()) == {None}
    other.release()
    harness.redispatch(9203)
    assert harness.run(9203)["state"] == "succeeded"


def test_a_load_whose_computer_was_taken_before_it_ran_is_superseded(harness) -> None:
    """The older of two reservations for one computer stops (superseded) without touching it."""
    harness.begin(9204, "run-vm4")
    harness.begin(9205, "run-vm4")
    outcome = harness.run(9204)
    assert outcome["state"] == "superseded"
    record = harness.records.get(9204)
    assert record is not None and record.state == "superseded"
    assert record.error and record.error["code"] == "SUPERSEDED"
    assert not list(Path(harness.host.vm_dir).glob("run-vm4_*"))


def test_a_load_superseded_after_pre_define_removes_its_overlay(harness) -> None:
    """The newer reservation takes the computer while the older one generates its XML:
    the older stops before define and leaves no overlay behind."""
    harness.begin(9206, "run-vm5")
    original = harness.server.load.generate_xml

    def generate_then_lose_the_computer(reservation: Any) -> dict[str, Any]:
        harness.records.begin(
            harness.reservation(9207, "run-vm5"), "load", _LOAD_STEPS, owns_computer=True
        )
        return original(reservation)

    harness.server.load.generate_xml = generate_then_lose_the_computer  # type: ignore[method-assign]
    outcome = harness.run(9206)

    assert outcome["state"] == "superseded", outcome
    states = _states(harness, 9206)
    assert states["generate_xml"] == "succeeded" and states["define"] == "superseded"
    assert not list(Path(harness.host.vm_dir).glob("run-vm5_*"))
    record = harness.records.get(9206)
    assert record is not None and record.error
    assert record.error["cleanup"]["removed_files"] == [
        f"{harness.host.vm_dir}/run-vm5_77-v0.qcow2"
    ]


def test_a_transient_error_is_retried_with_backoff(state_redis, sim_host) -> None:
    """libvirt unreachable (a real refused connection): the step waits with backoff (due
    again later, the worker slot freed) instead of failing; each retry counts."""
    down = sim_host.model_copy(
        update={"libvirt_uri": f"qemu+tcp://127.0.0.1:{_free_port()}/system"}
    )
    harness = Harness(state_redis, down, Settings(broker_url="redis://unused"))
    harness.begin(9208, "run-vm6")

    first = harness.run(9208)

    assert first["state"] == "retrying"
    assert 1.0 <= first["retry_in_s"] <= harness.settings.retry_backoff
    entry = (harness.records.get(9208) or pytest.fail()).step_records["node_status"]
    assert (entry["state"], entry["transient_failures"]) == ("retrying", 1)
    assert entry["error"]["code"] == "LIBVIRT_UNAVAILABLE"
    harness.redispatch(9208)
    assert harness.run(9208)["state"] == "retrying"
    entry = (harness.records.get(9208) or pytest.fail()).step_records["node_status"]
    assert (entry["attempt"], entry["transient_failures"]) == (2, 2)


def test_transient_errors_fail_the_step_at_their_deadline(state_redis, sim_host) -> None:
    """Past the deadline of its first transient error the step fails with the error's own
    (retryable) code and a hint to retry. The deadline here is 3 s; the deployed default
    (900 s) outlasts a host reboot: see test_the_default_transient_deadline_outlasts_a_reboot."""
    down = sim_host.model_copy(
        update={"libvirt_uri": f"qemu+tcp://127.0.0.1:{_free_port()}/system"}
    )
    harness = Harness(
        state_redis, down, Settings(broker_url="redis://unused", transient_deadline=3)
    )
    harness.begin(9209, "run-vm7")
    assert harness.run(9209)["state"] == "retrying"
    harness.redispatch(9209)
    time.sleep(3.1)  # the scenario: the host is still down past the deadline

    outcome = harness.run(9209)

    assert outcome["state"] == "failed"
    record = harness.records.get(9209)
    assert record is not None and record.error
    assert record.error["code"] == "LIBVIRT_UNAVAILABLE" and record.error["transient"]
    assert "vclvirt retry 9209" in record.error["hint"]


def test_the_default_transient_deadline_outlasts_a_reboot() -> None:
    """Deployed settings retry transient errors for longer than a host reboot (3 min)."""
    settings = Settings(broker_url="redis://unused")
    assert settings.transient_deadline >= 600
    assert settings.retry_backoff_max <= 60  # a host that is back is noticed within a minute


def test_a_permanent_error_fails_at_once(harness) -> None:
    """An image that exists nowhere fails pre_define at its first attempt, not retried."""
    harness.begin(9210, "run-vm8")
    record = harness.records.get(9210)
    assert record is not None
    harness.client.hset(
        keys.record(9210),
        "reservation",
        harness.reservation(9210, "run-vm8", image="linux-Missing-77-v0").model_dump_json(),
    )

    outcome = harness.run(9210)

    assert outcome["state"] == "failed"
    record = harness.records.get(9210)
    assert record is not None and record.error and record.error["code"] == "IMAGE_NOT_FOUND"
    assert record.step_records["pre_define"]["attempt"] == 1
    assert harness.client.zscore(keys.due(harness.host.name), "9210") is None


def test_an_operation_that_loses_its_lease_stops_without_writing(state_redis, sim_host) -> None:
    """When its lease is taken by another holder (it expired: the broker was away), the
    running step is cancelled at its next check and nothing more is written or done.
    The lease TTL here is 3 s so the keeper notices within a second or two; deployed it
    is 30 s, renewed every 10 s (test_leases)."""
    harness = Harness(state_redis, sim_host, Settings(broker_url="redis://unused", lease_ttl=3))
    harness.begin(9211, "run-vm9")
    other = Holder("w@other", "b", 1)

    def power_on_while_the_lease_is_lost(reservation: Any) -> dict[str, Any]:
        harness.client.set(keys.lease(9211), str(other))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cancellation.check()
            time.sleep(0.05)
        raise AssertionError("the lost lease was not noticed")

    harness.server.power.on = power_on_while_the_lease_is_lost  # type: ignore[method-assign]
    outcome = harness.run(9211)

    assert outcome["state"] == "lease_lost"
    states = _states(harness, 9211)
    assert states["power_on"] == "running" and states["post_load"] is None
    assert harness.client.get(keys.lease(9211)) == str(other).encode()  # left to its holder


def _interrupted(harness: Harness, rid: int, computer: str, step: str, times: int) -> int:
    """A record whose `step` was running in a process that is gone now (on this machine)."""
    generation = harness.begin(rid, computer)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = Holder(ME.holder().node, "old-boot", gone.pid)
    Leases(harness.client, ttl_seconds=30).claim(rid, generation, dead)
    writes = FencedRecord(
        harness.client, RecordFence(rid, "node-a", computer, generation, str(dead))
    )
    steps = _LOAD_STEPS[: _LOAD_STEPS.index(step)]
    for done in steps:
        StepEntry(writes, done, {}).succeeded({})
    harness.client.hset(keys.record(rid), "plan", '["' + '", "'.join(_LOAD_STEPS[1:]) + '"]')
    entry = StepEntry(writes, step, {"attempt": times - 1, "interrupted": times - 1})
    entry.started(task_id="old", worker=dead.node)
    return generation


def test_a_step_whose_worker_died_is_resumed_at_once_by_the_next_message(harness) -> None:
    """The lease of a dead process on this machine is taken over at once; the run resumes
    at the interrupted step and does not run the completed ones again."""
    generation = _interrupted(harness, 9212, "run-vm10", "pre_define", 1)

    outcome = harness.runner.run(9212, generation)

    assert outcome["state"] == "succeeded", outcome
    record = harness.records.get(9212)
    assert record is not None
    assert record.step_records["pre_define"]["attempt"] == 2
    assert record.step_records["pre_define"]["interrupted"] == 1
    assert "attempt" not in record.step_records["delete_existing_domains"]


def test_a_step_interrupted_too_often_fails(harness) -> None:
    """A step whose worker died max_interruptions times fails (STEP_INTERRUPTED) rather
    than killing every worker it is handed to."""
    times = harness.settings.max_interruptions
    generation = _interrupted(harness, 9213, "run-vm11", "define", times)
    outcome = harness.runner.run(9213, generation)
    assert outcome["state"] == "failed"
    record = harness.records.get(9213)
    assert record is not None and record.error and record.error["code"] == "STEP_INTERRUPTED"


def test_reload_and_reinstall_always_run_the_whole_load(harness) -> None:
    """A reservation in state reload reloads even though its computer is READY."""
    harness.begin(9214, "run-vm12")
    assert harness.run(9214)["state"] == "succeeded"
    calls: list[str] = []
    original: Callable[[Any], dict[str, Any]] = harness.server.status.check

    def counted(reservation: Any) -> dict[str, Any]:
        calls.append(reservation.state)
        return original(reservation)

    harness.server.status.check = counted  # type: ignore[method-assign]
    harness.records.begin(
        harness.reservation(9215, "run-vm12", state="reload"),
        "load",
        _LOAD_STEPS,
        owns_computer=True,
    )
    assert harness.run(9215)["state"] == "succeeded"
    assert calls == []  # nothing to ask: reload always reloads
    assert set(_states(harness, 9215).values()) == {"succeeded"}


def test_a_load_superseded_while_waiting_for_its_guest_stops_waiting(
    state_redis, sim_host, tmp_path
) -> None:
    """post_load waits up to 10 minutes for a guest to answer SSH; when a newer load takes
    the computer meanwhile, the wait ends within seconds and the older load is superseded."""
    key = tmp_path / "guest_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    closed = _free_port()
    host = sim_host.model_copy(
        update={"guest_network": "user", "guest_ssh_ports": (closed, closed)}
    )
    # post_load's wait is 30 s here instead of 600 s only so that a broken cancellation
    # fails this test in 30 s rather than in ten minutes.
    settings = Settings(broker_url="redis://unused", guest_key_file=key, post_load_timeout_linux=30)
    harness = Harness(state_redis, host, settings)
    harness.records.begin(
        harness.reservation(9216, "run-vm13", os_type="linux"),
        "load",
        _LOAD_STEPS,
        owns_computer=True,
    )
    original = harness.server.load.post_load

    def post_load_then_lose_the_computer(reservation: Any) -> dict[str, Any]:
        threading.Timer(
            1.0,
            lambda: harness.records.begin(
                harness.reservation(9217, "run-vm13"), "load", _LOAD_STEPS, owns_computer=True
            ),
        ).start()
        return original(reservation)

    harness.server.load.post_load = post_load_then_lose_the_computer  # type: ignore[method-assign]
    started = time.monotonic()
    outcome = harness.run(9216)

    assert outcome["state"] == "superseded", outcome
    assert time.monotonic() - started < 25  # it did not wait for post_load's timeout
    assert _states(harness, 9216)["post_load"] == "superseded"


@pytest.mark.parametrize("state", ["new", "reload", "reinstall"])
def test_a_load_that_cannot_reach_its_guest_fails_before_touching_the_computer(
    harness, state
) -> None:
    """No guest key configured: a load of a guest image (any state, reload included, which
    never asks node_status) fails at node_status with GUEST_ACCESS_NOT_CONFIGURED; no later
    step starts and the computer's running domain is left as it was."""
    harness.begin(9216, "run-vm13")  # os_type none: loads without a guest
    assert harness.run(9216)["state"] == "succeeded"
    conn = harness.server.access.conn
    (before,) = [d for d in conn.listAllDomains(0) if d.name().startswith("run-vm13_")]
    assert before.isActive()
    keyless = _server(harness.host, harness.client, Settings(guest_key_file=None))
    harness.runner.hosts = lambda _: keyless
    harness.begin(9217, "run-vm13", state=state, os_type="linux")
    outcome = harness.run(9217)
    record = harness.records.get(9217)
    assert outcome["state"] == "failed" and record is not None and record.error
    assert record.error["code"] == "GUEST_ACCESS_NOT_CONFIGURED"
    assert record.step_records["node_status"]["state"] == "failed"
    assert [
        s for s, r in record.step_records.items() if r.get("state") and s != "node_status"
    ] == []
    (after,) = [d for d in conn.listAllDomains(0) if d.name().startswith("run-vm13_")]
    assert after.UUIDString() == before.UUIDString() and after.ID() == before.ID()
