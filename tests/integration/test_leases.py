"""Leases and worker heartbeats on a real Redis; dead holders told from live ones."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from tests import holder
from tests.conftest import make_reservation
from vclvirt.identity import Identity
from vclvirt.models import parse_reservation
from vclvirt.recovery import holder_is_dead
from vclvirt.state import keys
from vclvirt.state.leases import Holder, Leases, WorkerRegistry
from vclvirt.state.records import RecordStore

OTHER = Holder("node-a@elsewhere", "boot1", 4242)

ME = Identity.client()  # this test process, as a client claims leases


def _begin(client: Any, rid: int = 9101) -> int:
    reservation = parse_reservation(make_reservation(rid, "lease-vm1", "linux-L-1-v0"))
    return RecordStore(client).begin(reservation, "load", ["a"])


def test_claim_takes_the_lease_and_marks_the_record_running(state_redis) -> None:
    """The first claim of the current generation wins; the record says who runs it."""
    generation = _begin(state_redis)
    leases = Leases(state_redis, ttl_seconds=30)
    me = ME.holder()
    claim = leases.claim(9101, generation, me)
    assert (claim.ok, claim.reason) == (True, "ok")
    assert leases.holder(9101) == str(me)
    assert state_redis.hget(keys.record(9101), "state") == b"running"
    assert 29_000 < state_redis.pttl(keys.lease(9101)) <= 30_000


def test_a_second_holder_is_refused_while_the_lease_lives(state_redis) -> None:
    """Another holder gets 'held' and the holder's name; the first holder may claim again."""
    generation = _begin(state_redis)
    leases = Leases(state_redis, ttl_seconds=30)
    assert leases.claim(9101, generation, OTHER).ok
    claim = leases.claim(9101, generation, ME.holder())
    assert (claim.ok, claim.reason, claim.holder) == (False, "held", str(OTHER))
    assert leases.claim(9101, generation, OTHER).ok


def test_take_over_replaces_only_the_named_holder(state_redis) -> None:
    """A holder known to be dead can be replaced at once; a different holder cannot."""
    generation = _begin(state_redis)
    leases = Leases(state_redis, ttl_seconds=30)
    leases.claim(9101, generation, OTHER)
    me = ME.holder()
    assert not leases.claim(9101, generation, me, take_over="someone|else|1").ok
    assert leases.claim(9101, generation, me, take_over=str(OTHER)).ok
    assert leases.holder(9101) == str(me)


def test_stale_generations_and_ended_records_are_not_claimed(state_redis) -> None:
    """A message of an older generation, or for an ended record, claims nothing."""
    generation = _begin(state_redis)
    leases = Leases(state_redis, ttl_seconds=30)
    assert leases.claim(9101, generation + 1, OTHER).reason == "stale"
    holder.finish(state_redis, 9101, "succeeded")
    assert leases.claim(9101, generation, OTHER).reason == "succeeded"
    assert leases.claim(9999, 1, OTHER).reason == "missing"


def test_renew_keeps_only_our_own_lease(state_redis) -> None:
    """Renew extends our lease; once another holder has it, renew says False."""
    generation = _begin(state_redis)
    leases = Leases(state_redis, ttl_seconds=30)
    me = ME.holder()
    leases.claim(9101, generation, me)
    state_redis.pexpire(keys.lease(9101), 1000)
    assert leases.renew(9101, me)
    assert state_redis.pttl(keys.lease(9101)) > 29_000
    state_redis.set(keys.lease(9101), str(OTHER))
    assert not leases.renew(9101, me)
    leases.release(9101, me)  # not ours: left alone
    assert leases.holder(9101) == str(OTHER)


def test_a_lease_that_is_not_renewed_expires(state_redis) -> None:
    """A holder that dies stops renewing; the lease disappears after its TTL (here 1 s,
    the mechanism; the deployed TTL is Settings.lease_ttl, 30 s)."""
    generation = _begin(state_redis)
    leases = Leases(state_redis, ttl_seconds=1)
    leases.claim(9101, generation, OTHER)
    deadline = time.monotonic() + 10
    while leases.holder(9101) is not None:
        assert time.monotonic() < deadline, "the lease did not expire"
        time.sleep(0.05)


def test_holders_on_this_machine_whose_process_is_gone_are_dead() -> None:
    """A finished process on this machine is dead; a live one is not; a holder on another
    machine is never judged dead from here (its lease must expire)."""
    me = ME.holder()
    finished = subprocess.run(["true"], check=True)
    del finished
    gone = subprocess.Popen(["true"])
    gone.wait()
    machine = me.node.rsplit("@", 1)[-1]
    dead = Holder(f"node-a@{machine}", "old-boot", gone.pid)
    live = subprocess.Popen(["sleep", "30"])
    try:
        assert holder_is_dead(str(dead), me)
        assert not holder_is_dead(str(Holder(f"node-a@{machine}", "b", live.pid)), me)
        assert not holder_is_dead(str(Holder("node-a@elsewhere", "b", gone.pid)), me)
        assert not holder_is_dead(str(me), me)
        assert not holder_is_dead("garbage", me)
    finally:
        live.kill()
        live.wait()


def test_worker_heartbeats_say_which_hosts_have_a_live_worker(state_redis) -> None:
    """A beat makes a worker live for its hosts for the TTL; leave removes it at once."""
    registry = WorkerRegistry(state_redis, ttl_seconds=30)
    assert registry.live("node-a") == [] and registry.last_seen("node-a") is None
    registry.beat("node-a@m1", ["node-a", "node-b"])
    assert registry.live("node-a") == ["node-a@m1"] == registry.live("node-b")
    seen = registry.last_seen("node-a")
    assert seen is not None and abs(seen - time.time()) < 5
    state_redis.zadd(keys.host_workers("node-a"), {"node-a@old": time.time() - 31})
    assert registry.live("node-a") == ["node-a@m1"]
    registry.leave("node-a@m1", ["node-a", "node-b"])
    assert registry.live("node-a") == [] == registry.live("node-b")
    assert registry.last_seen("node-a") is not None  # the old beat is still history
