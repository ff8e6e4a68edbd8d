"""Fencing on the real parts: record writes under a token (Redis), the host's own fence
(sshd, flock, processes, libvirtd), the lease keeper against a partitioned Redis, and the
per-host slots shared by every worker."""

from __future__ import annotations

import contextvars
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.conftest import REDIS_PORT, make_reservation, wait_for
from tests.partition import partition
from vclvirt.cancellation import Cancelled
from vclvirt.config.settings import Settings
from vclvirt.errors import Fenced, LeaseLost, NodeUnreachable
from vclvirt.hypervisor.connection import connect, release_fenced
from vclvirt.models import parse_reservation
from vclvirt.node import fence
from vclvirt.node.fence import HostFence
from vclvirt.node.ssh import SSHTransport
from vclvirt.recovery import CALL_DEADLINE, RENEW_DEADLINE, LeaseKeeper
from vclvirt.state import keys
from vclvirt.state.client import deadline_client, redis_client
from vclvirt.state.computers import ComputerOwners
from vclvirt.state.fence import FencedRecord, RecordFence
from vclvirt.state.leases import Holder, Leases
from vclvirt.state.records import RecordStore
from vclvirt.state.slots import HostSlot

OLD = Holder("node-a@m", "old", 11)
NEW = Holder("node-a@m", "new", 22)


def _begin(client: Any, rid: int = 9401) -> int:
    reservation = parse_reservation(make_reservation(rid, "fence-vm", "linux-Fence-1-v0"))
    return RecordStore(client).begin(reservation, "load", ["a", "b"])


def _writer(client: Any, rid: int, generation: int, holder: Holder | str) -> FencedRecord:
    return FencedRecord(client, RecordFence(rid, "node-a", "fence-vm", generation, str(holder)))


def _refused(write: Any) -> str:
    with pytest.raises(Cancelled) as stopped:
        write()
    assert isinstance(stopped.value.reason, Fenced)
    return stopped.value.reason.message


def test_a_write_under_the_token_lands_and_a_stale_one_changes_nothing(state_redis) -> None:
    """The holder writes; once the record is dispatched again (lease expired), its writes
    are refused and the record is exactly what the next holder left."""
    generation = _begin(state_redis)
    leases = Leases(state_redis, ttl_seconds=30)
    assert leases.claim(9401, generation, OLD).ok
    old = _writer(state_redis, 9401, generation, OLD)
    old.set(**{"step:a": '{"state": "running"}'})
    assert state_redis.hget(keys.record(9401), "step:a") == b'{"state": "running"}'

    state_redis.delete(keys.lease(9401))  # expired while OLD was paused
    newer = RecordStore(state_redis).redispatch(9401, generation, "lease expired")
    assert newer == generation + 1
    assert leases.claim(9401, newer, NEW).ok
    new = _writer(state_redis, 9401, newer, NEW)
    new.finish("succeeded")
    before = state_redis.hgetall(keys.record(9401))

    assert "newer generation" in _refused(lambda: old.set(**{"step:b": "{}"}))
    _refused(lambda: old.wait("retrying", time.time() + 5, "step b failed"))
    _refused(lambda: old.finish("failed", step="b", error={"code": "X"}))
    _refused(lambda: old.set_computer_image({"image": "stale"}))
    assert "ended" in _refused(lambda: new.set(outcome="{}"))  # nothing after success
    assert state_redis.hgetall(keys.record(9401)) == before
    assert state_redis.zscore(keys.due("node-a"), "9401") is None
    assert state_redis.get(keys.computer_image("node-a", "fence-vm")) is None
    assert old.refused == 4


def test_a_holder_whose_lease_is_gone_or_taken_at_the_same_generation_writes_nothing(
    state_redis,
) -> None:
    """Same generation, lease expired (not yet dispatched again), or claimed by another
    process (a dead holder taken over): refused."""
    generation = _begin(state_redis)
    leases = Leases(state_redis, ttl_seconds=30)
    assert leases.claim(9401, generation, OLD).ok
    old = _writer(state_redis, 9401, generation, OLD)
    state_redis.delete(keys.lease(9401))
    assert "lease" in _refused(lambda: old.set(plan="[]"))
    assert leases.claim(9401, generation, NEW).ok
    assert "lease" in _refused(lambda: old.set(plan="[]"))
    _writer(state_redis, 9401, generation, NEW).set(plan='["a"]')
    assert state_redis.hget(keys.record(9401), "plan") == b'["a"]'


def test_recovery_writes_only_while_nobody_holds_the_lease(state_redis) -> None:
    """The empty holder (recovery failing an abandoned record) is refused once a worker
    has claimed the generation."""
    generation = _begin(state_redis)
    nobody = _writer(state_redis, 9401, generation, "")
    assert Leases(state_redis, ttl_seconds=30).claim(9401, generation, NEW).ok
    _refused(lambda: nobody.finish("failed", step="a", error={"code": "NO_WORKER"}))
    assert state_redis.hget(keys.record(9401), "state") == b"running"


# -- the host's fence -----------------------------------------------------------------


@pytest.fixture
def node_a(inventory: Any) -> Any:
    host = inventory.host("node-a")
    node = SSHTransport(host, fenced=True)
    yield host, node
    release_fenced(host.name)
    node.close()


def _fence(host: Any, name: str, token: int) -> HostFence:
    return HostFence(host.name, f"{host.fence_dir}/{name}", token, 9401)


def test_the_host_refuses_an_older_token_and_kills_what_it_started(node_a, tmp_path) -> None:
    """Token 200 arriving kills the command token 100 started (its process group) and the
    libvirt tunnel of token 100; every later command of 100 is refused, runs nothing."""
    host, node = node_a
    name = f"probe-{time.monotonic_ns()}"
    old, new = _fence(host, name, 100), _fence(host, name, 200)
    marker = tmp_path / "ran"
    nap = f"{300 + time.monotonic_ns() % 1000}"  # a command line of this test alone
    with fence.holding(old):
        conn = connect(host, node)
        assert isinstance(conn.listAllDomains(), list)
        held = contextvars.copy_context()  # the thread runs under the old token too
        results: list[Any] = []

        def sleep() -> None:
            try:
                results.append(held.run(node.run, ["sleep", nap]))
            except NodeUnreachable as error:  # what a killed command is to its caller
                results.append(error)

        sleeper = threading.Thread(target=sleep)
        sleeper.start()
        wait_for(lambda: _pgrep(f"sleep {nap}"), 10, "the old token's command")
    with fence.holding(new):
        assert node.run(["cat", f"{new.directory}/token"]).text.strip() == "200"
    sleeper.join(timeout=10)
    assert not sleeper.is_alive() and not _pgrep(f"sleep {nap}")
    assert isinstance(results[0], NodeUnreachable), results
    assert "fence" not in results[0].message  # the command as asked, not its wrapper
    with pytest.raises(libvirt.libvirtError):
        wait_for(lambda: conn.listAllDomains() is None, 10, "the old tunnel to end")
    with fence.holding(old), pytest.raises(Cancelled) as stopped:
        node.run(["touch", str(marker)])
    assert isinstance(stopped.value.reason, Fenced)
    assert "older than 200" in stopped.value.reason.message
    assert not marker.exists()
    with fence.holding(new):  # the same token passes again, without killing anything
        node.run(["touch", str(marker)])
    assert marker.exists()


def test_a_newer_holders_libvirt_connection_opens_at_once_when_it_ends_an_older_one(
    node_a,
) -> None:
    """The fence wrapper tells on stderr that it ended the older holder's tunnel; the new
    tunnel must carry libvirt's traffic anyway. (It once read stdout because the channel
    was readable, blocked, and each takeover's first libvirt call waited out the 30 s
    open timeout, then failed LIBVIRT_UNAVAILABLE.) Default settings."""
    host, node = node_a
    start = int(time.time() * 1e6)
    with fence.holding(_fence(host, "takeover-open", start)):
        assert connect(host, node).listAllDomains(0) is not None
    for newer in (start + 1, start + 2):  # the older connection is still open each time
        with fence.holding(_fence(host, "takeover-open", newer)):
            assert connect(host, node).listAllDomains(0) is not None


def _pgrep(pattern: str) -> bool:
    return (
        subprocess.run(["pgrep", "-f", pattern], capture_output=True, check=False).returncode == 0
    )


def test_commands_outside_a_fence_or_of_a_guest_transport_are_not_wrapped(node_a) -> None:
    """No fence held (read-only operations, image queries): the command runs as it is."""
    _, node = node_a
    assert node.run(["sh", "-c", 'echo "$0"', "plain"]).text.strip() == "plain"


# -- the lease keeper ------------------------------------------------------------------


def test_the_keeper_stops_the_run_before_the_lease_can_expire_when_redis_is_cut_off(
    state_redis,
) -> None:
    """Cut off from Redis by a proxy that forwards nothing, the keeper (default TTL 30 s)
    cancels the run 0.6 TTL after its last renewal, before the lease (renewed at most then)
    expires; every call it makes gives up within a tenth of the TTL."""
    ttl = Settings().lease_ttl
    generation = _begin(state_redis)
    leases = Leases(state_redis, ttl_seconds=ttl)
    assert leases.claim(9401, generation, OLD).ok
    cut_events: list[str] = []
    with partition(int(REDIS_PORT)) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/3"  # the state database, through the proxy
        far = deadline_client(redis_client(url), ttl * CALL_DEADLINE)
        keeper = LeaseKeeper(
            Leases(far, ttl_seconds=ttl),
            ComputerOwners(far),
            9401,
            OLD,
            ttl=ttl,
            watch_owner=None,
            on_lost=lambda: cut_events.append("cut"),
        )
        with keeper:
            time.sleep(ttl / 3 + 1.5)  # one renewal went through
            proxy.cut()
            cut_at = time.monotonic()
            wait_for(lambda: keeper.token.cancelled, ttl, "the keeper to give up")
            stopped_after = time.monotonic() - cut_at
            proxy.heal()
    print(f"keeper gave up {stopped_after:.1f} s after the cut (lease TTL {ttl:.0f} s)")
    assert isinstance(keeper.token.reason, LeaseLost)
    assert cut_events == ["cut"]
    assert stopped_after <= ttl * RENEW_DEADLINE + ttl * CALL_DEADLINE + 1.5
    assert stopped_after < ttl


# -- per-host slots --------------------------------------------------------------------


def test_slots_are_counted_across_workers_and_a_lost_one_frees_itself(state_redis) -> None:
    """Two workers' runs share node-b's 2 slots; a run that stops renewing loses its slot
    when its TTL ends; a renewed slot stays."""
    take = [HostSlot(state_redis, "node-b", f"run-{i}", limit=2, ttl=1.0) for i in range(3)]
    assert take[0].acquire() and take[1].acquire()
    assert not take[2].acquire()
    assert take[0].acquire()  # its own slot again: still two
    deadline = time.monotonic() + 1.6
    while time.monotonic() < deadline:
        assert take[1].renew()
        time.sleep(0.3)
    assert not take[0].renew()  # not renewed: expired
    assert take[2].acquire()
    take[1].release()
    assert take[2].holders() == ["run-2"]


def test_a_slot_at_the_default_ttl_lasts_as_long_as_the_lease(state_redis) -> None:
    """What a deployment gets: a slot taken with the default lease TTL (30 s) expires 30 s
    after its last renewal, like the lease it is renewed with (the test above shortens it
    to watch the expiry happen)."""
    ttl = Settings().lease_ttl
    slot = HostSlot(state_redis, "node-b", "run-default", limit=2, ttl=ttl)
    assert slot.acquire()
    seconds, micros = state_redis.time()
    now_ms = seconds * 1000 + micros // 1000
    expires = state_redis.zscore(keys.host_slots("node-b"), "run-default")
    assert expires is not None and abs(expires - now_ms - ttl * 1000) < 1000
    assert slot.renew()


def test_the_test_beds_hosts_have_a_fence_dir_of_their_own(inventory: Any, testbed: Path) -> None:
    """Each "host" keeps its fences in its own directory (they share one machine)."""
    dirs = {inventory.host(n).fence_dir for n in ("node-a", "node-b")}
    assert len(dirs) == 2 and all(str(testbed) in d for d in dirs)


def test_a_fence_on_a_full_disk_runs_nothing_and_says_the_disk_is_full(node_a, tmp_path) -> None:
    """The host cannot record the token (its fence_dir's filesystem has no byte left):
    the command does not run, and the error is HOST_DISK_FULL naming the fence directory,
    not a bare exit status of the wrapper."""
    from tests.disk_full import fill, small_filesystem
    from vclvirt.errors import HostDiskFull

    host, node = node_a
    marker = tmp_path / "ran"
    with small_filesystem(tmp_path / "fence-disk", size="64k") as disk:
        fill(disk)
        held = HostFence(host.name, f"{disk}/probe", 300, 9402)
        with fence.holding(held), pytest.raises(HostDiskFull) as full:
            node.run(["touch", str(marker)])
        assert full.value.path == held.directory and full.value.free_bytes == 0
        assert "no space left" in full.value.message and str(disk) in full.value.hint
        assert not marker.exists()
