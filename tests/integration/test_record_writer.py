"""The record's one writer (state/writer.py) on a real Redis: the Lua checks the same
table as Python, a move the table refuses writes nothing, reads never write, and the
listings read in one round trip."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest

from tests import holder
from tests.conftest import make_reservation
from vclvirt import composition, dispatch
from vclvirt.cancellation import Cancelled
from vclvirt.config.settings import Settings, get_settings
from vclvirt.errors import Fenced, InvalidInput, ResourceBusy
from vclvirt.identity import Identity
from vclvirt.models import parse_reservation
from vclvirt.recovery import Reconciler
from vclvirt.state import keys
from vclvirt.state.fence import FencedRecord, RecordFence, Write
from vclvirt.state.leases import Holder, Leases, WorkerRegistry
from vclvirt.state.machine import MOVES, NEW, State, allowed, lua_prelude
from vclvirt.state.records import RecordStore
from vclvirt.state.writer import RecordWriter
from vclvirt.vcl import api_routes

HOST = "writer-host"


def _begin(client: Any, rid: int, host: str = HOST) -> int:
    reservation = parse_reservation(
        make_reservation(rid, f"w-{rid}", "linux-Writer-1-v0", host=host)
    )
    return RecordStore(client).begin(reservation, "load", ["a", "b"])


def _snapshot(client: Any) -> dict[bytes, Any]:
    """Every key of the database, byte for byte, with its expiry (to the second)."""
    return {key: (client.dump(key), client.ttl(key)) for key in sorted(client.keys("*"))}


def test_the_lua_table_is_the_python_table(state_redis) -> None:
    """Every (move, from, to) answered by the scripts' `may` in Redis as by `allowed`."""
    may = state_redis.register_script(
        lua_prelude() + "return may(ARGV[1], ARGV[2], ARGV[3]) and 1 or 0"
    )
    for move, source, target in itertools.product([*MOVES, "unknown"], [NEW, *State], list(State)):
        answer = may(args=[move, source, target])
        assert bool(answer) is allowed(move, source, target), (move, source, target)


def test_a_move_the_table_refuses_writes_nothing(state_redis) -> None:
    """The holder of a running record cannot park it as succeeded, end it as if it were
    recovery, or set its state without naming a move; recovery cannot restart, claim a
    waiting record or re-dispatch an ended one. Each refusal leaves Redis byte-identical."""
    _begin(state_redis, 9601)
    running = holder.claimed(state_redis, 9601)
    before = _snapshot(state_redis)
    for write in (
        Write(hset={"state": State.SUCCEEDED}, move="park"),
        Write(hset={"state": State.FAILED}, move="abandon"),
        Write(hset={"state": State.QUEUED}),
        Write(hset={"state": State.QUEUED}, move="begin"),
    ):
        with pytest.raises(Cancelled) as refused:
            running.apply(write)
        assert isinstance(refused.value.reason, Fenced)
        assert "state machine does not allow" in refused.value.reason.message
        assert _snapshot(state_redis) == before

    running.wait(State.WAITING, time.time() + 60, "busy")
    Leases(state_redis, ttl_seconds=30).release(9601, holder.TEST_HOLDER)
    before = _snapshot(state_redis)
    claim = Leases(state_redis, ttl_seconds=30).claim(9601, 1, holder.TEST_HOLDER)
    assert not claim.ok and claim.reason == State.WAITING
    with pytest.raises(ResourceBusy):
        RecordStore(state_redis).restart_from(9601, "a")
    # the script itself, past the Python checks: restart only leaves failed
    restart = {"ttl": 60, "history": "[]", "forget": "[]", "stamp": time.time()}
    assert RecordWriter(state_redis).restart(9601, HOST, expected=1, **restart) == -1
    assert _snapshot(state_redis) == before

    _begin(state_redis, 9602)
    holder.finish(state_redis, 9602, State.SUCCEEDED)
    before = _snapshot(state_redis)
    assert RecordStore(state_redis).redispatch(9602, 1, "test") is None
    with pytest.raises(InvalidInput):
        RecordStore(state_redis).restart_from(9602, "a")
    assert RecordWriter(state_redis).restart(9602, HOST, expected=1, **restart) == -1
    assert _snapshot(state_redis) == before


def test_a_fenced_write_of_an_old_generation_or_a_lost_holder_is_refused(state_redis) -> None:
    """Under the table's moves the fence still holds: a move the table allows is refused
    for a generation that is not the record's, and for a holder whose lease is gone."""
    generation = _begin(state_redis, 9603)
    first = holder.claimed(state_redis, 9603)
    state_redis.delete(keys.lease(9603))  # the lease expired
    before = _snapshot(state_redis)
    with pytest.raises(Cancelled):
        first.finish(State.SUCCEEDED)
    assert _snapshot(state_redis) == before

    assert RecordStore(state_redis).redispatch(9603, generation, "lease expired") == 2
    old = FencedRecord(
        state_redis, RecordFence(9603, HOST, "w-9603", generation, str(holder.TEST_HOLDER))
    )
    Leases(state_redis, ttl_seconds=30).claim(9603, 2, holder.TEST_HOLDER)
    before = _snapshot(state_redis)
    with pytest.raises(Cancelled) as refused:
        old.finish(State.SUCCEEDED)
    assert "dispatched again" in refused.value.reason.message
    assert _snapshot(state_redis) == before


@pytest.fixture
def reader(state_redis, monkeypatch) -> Any:
    """dispatch reads (and would write) the tests' own database: a client root on it."""
    root = composition.Root(get_settings(), Identity.client(), client=state_redis)
    monkeypatch.setattr(composition, "_root", root)
    return state_redis


def _abandon(client: Any, rid: int) -> None:
    """A record whose host has had no worker for longer than the deadline (900 s)."""
    _begin(client, rid)
    client.hset(keys.record(rid), "dispatched_at", time.time() - 1000)


def test_reading_an_abandoned_record_writes_nothing_and_says_so(reader) -> None:
    """status() and the VCL long-poll of a record past its no-worker deadline show it as
    waiting and abandoned, and leave every key byte-identical: only the reconciler fails
    it."""
    _abandon(reader, 9604)
    before = _snapshot(reader)
    shown = dispatch.status(9604)
    assert shown is not None and shown.state == State.WAITING and shown.waiting
    assert shown.waiting["reason"] == f"no live worker for host {HOST}"
    assert shown.waiting["abandoned"] is True
    assert shown.waiting["fails_at"] < time.time()
    polled = api_routes._record(9604)
    assert polled["state"] == State.WAITING and polled["waiting"]["abandoned"]
    assert [r.reservation_id for r in dispatch.failed()] == [9604]
    assert _snapshot(reader) == before


def test_the_reconciler_fails_an_abandoned_record_in_its_cycle(reader) -> None:
    """A worker of another host fails the abandoned record (NO_WORKER) in one cycle;
    status then reads it failed."""
    _abandon(reader, 9605)
    published: list[Any] = []
    me = Holder("other@machine", "boot", 1)
    Reconciler(
        reader,
        Settings(broker_url="redis://unused"),
        ["other-host"],
        me,
        lambda record, generation, resumed: published.append(record),
    ).cycle()
    shown = dispatch.status(9605)
    assert shown is not None and shown.state == State.FAILED
    assert shown.error and shown.error["code"] == "NO_WORKER"
    assert shown.waiting is None and not published


def test_a_live_worker_means_the_record_is_not_waiting(reader) -> None:
    _begin(reader, 9606)
    WorkerRegistry(reader, ttl_seconds=30).beat("w@m", [HOST])
    shown = dispatch.status(9606)
    assert shown is not None and shown.state == State.QUEUED and shown.waiting is None


class _Counting:
    """Counts the commands a Redis client sends (a pipeline counts once)."""

    def __init__(self, client: Any) -> None:
        self.client, self.sent = client, []
        original = client.execute_command

        def counted(*args: Any, **options: Any) -> Any:
            self.sent.append(args[0])
            return original(*args, **options)

        client.execute_command = counted


def test_failed_reads_in_one_round_trip(reader) -> None:
    """50 records (failed, succeeded, running with and without a worker): `failed()` is
    one command however many there are, and finds the failed and the waiting ones."""
    WorkerRegistry(reader, ttl_seconds=30).beat("w@m", ["served"])
    for rid in range(9610, 9660):
        kind = rid % 4
        _begin(reader, rid, host="served" if kind == 3 else HOST)
        if kind == 0:
            holder.finish(reader, rid, State.FAILED, step="a", error={"code": "X"})
        elif kind == 1:
            holder.finish(reader, rid, State.SUCCEEDED)
    reader.set(keys.computer_image(HOST, "w-9612"), json.dumps({"image": "linux-X-1-v0"}))
    dispatch.failed()  # the script is loaded once
    counting = _Counting(reader)
    found = dispatch.failed(limit=1000)
    assert counting.sent == ["EVALSHA"]
    by_state = {s: {r.reservation_id for r in found if r.state == s} for s in State}
    assert by_state[State.FAILED] == set(range(9612, 9660, 4))
    assert by_state[State.WAITING] == set(range(9610, 9660, 4))
    assert len(found) == 25
    waiting = next(r for r in found if r.reservation_id == 9610)
    assert waiting.waiting and not waiting.waiting["abandoned"]
    assert next(r for r in found if r.reservation_id == 9612).computer_image == {
        "image": "linux-X-1-v0"
    }
    assert len(dispatch.failed(limit=3)) == 3


def test_status_reads_in_one_round_trip(reader) -> None:
    _begin(reader, 9670)
    dispatch.status(9670)
    counting = _Counting(reader)
    assert dispatch.status(9670) is not None
    assert dispatch.status(9671) is None
    assert counting.sent == ["EVALSHA", "EVALSHA"]
