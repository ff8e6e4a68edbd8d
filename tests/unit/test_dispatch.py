"""The scheduler's Python API (vclvirt/dispatch.py) against the in-memory store: what it
enqueues, and that bad input is refused with a clear error and changes nothing (no
record, no message). Unit twins of tests/integration's dispatch tests on real Redis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.unit._runs import HOST, SETTINGS, host_config, toy_reservation
from vclvirt import composition, dispatch
from vclvirt.config.inventory import Inventory
from vclvirt.errors import InvalidInput, ResourceBusy, UnknownHost, UnknownReservation
from vclvirt.identity import Identity
from vclvirt.state import keys
from vclvirt.state.records import RecordStore
from vclvirt.testing import memory_redis


class Sent(list[tuple[str, int, int, bool]]):
    """The messages published: (operation, reservation id, generation, resumed); it
    stands where the composition root's Publisher stands."""

    def publish(
        self, operation: str, reservation: Any, generation: int, *, resumed: bool = False
    ) -> str:
        self.append((operation, reservation.reservation_id, generation, resumed))
        return ""

    def publish_many(self, begun: list[tuple[str, Any, int]]) -> None:
        for operation, reservation, generation in begun:
            self.publish(operation, reservation, generation)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[redis.Redis, Sent]:
    """dispatch's seams, in one place: the composition root's store and publisher, and
    the inventory."""
    client, sent = memory_redis(), Sent()
    inventory = Inventory(hosts={HOST: host_config(tmp_path)})
    root = composition.Root(SETTINGS, Identity.client())
    monkeypatch.setattr(composition.Root, "redis", property(lambda _root: client))
    monkeypatch.setattr(composition.Root, "publisher", property(lambda _root: sent))
    monkeypatch.setattr(composition, "_root", root)
    monkeypatch.setattr(dispatch, "get_inventory", lambda: inventory)
    return client, sent


def document(**top: Any) -> dict[str, Any]:
    return {**toy_reservation().model_dump(mode="json"), **top}


def test_a_load_is_recorded_queued_and_sent_once(store: tuple[redis.Redis, Sent]):
    client, sent = store
    handle = dispatch.load(document())
    rid = handle.reservation_id
    assert handle.task_id == f"vclvirt-{rid}-1"
    assert sent == [("load", rid, 1, False)]
    record = RecordStore(client).get(rid)
    assert record is not None and (record.state, record.operation) == ("queued", "load")
    assert client.sismember(keys.inflight(HOST), rid)


def test_an_operation_after_one_ended_is_the_next_generation(store: tuple[redis.Redis, Sent]):
    """A new operation of a reservation whose last one ended begins its next generation,
    and keeps the earlier one in its history."""
    client, sent = store
    rid = dispatch.load(document()).reservation_id
    client.hset(keys.record(rid), "state", "succeeded")

    assert dispatch.run(document(), "power_off").task_id == f"vclvirt-{rid}-2"

    record = RecordStore(client).get(rid)
    assert record is not None and (record.operation, record.generation) == ("power_off", 2)
    assert [h["operation"] for h in record.history] == ["load"]
    assert sent == [("load", rid, 1, False), ("power_off", rid, 2, False)]


def test_a_second_enqueue_while_in_flight_is_busy_and_changes_nothing(
    store: tuple[redis.Redis, Sent],
):
    client, sent = store
    rid = dispatch.load(document()).reservation_id
    before = client.hgetall(keys.record(rid))
    with pytest.raises(ResourceBusy):
        dispatch.run(document(), "power_off")
    assert client.hgetall(keys.record(rid)) == before
    assert len(sent) == 1


BAD: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    (
        "invalid reservation",
        lambda: dispatch.load(document(computer={"id": 1, "hostname": "x"})),
        InvalidInput,
        "computer",
    ),
    ("unknown host", lambda: dispatch.load(document(host="nowhere")), UnknownHost, "nowhere"),
    (
        "unknown operation",
        lambda: dispatch.run(document(), "format_disk"),
        InvalidInput,
        "format_disk",
    ),
    (
        "bad parameters",
        lambda: dispatch.run(document(), "snapshot_create", {"name": "../../etc"}),
        InvalidInput,
        "params.name",
    ),
    (
        "capture of a reservation not in state image",
        lambda: dispatch.capture(document()),
        InvalidInput,
        "state",
    ),
    (
        "one invalid load of many",
        lambda: dispatch.load_many([document(), document(reservation_id="x")]),
        InvalidInput,
        "[1]",
    ),
    ("retry of an unknown reservation", lambda: dispatch.retry(4242), UnknownReservation, "4242"),
]


@pytest.mark.parametrize(("case", "call", "error", "named"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_clearly_and_changes_nothing(
    store: tuple[redis.Redis, Sent],
    case: str,
    call: Callable[[], Any],
    error: type[Exception],
    named: str,
):
    client, sent = store
    with pytest.raises(error) as refused:
        call()
    assert named in str(refused.value), case
    assert client.keys() == [], case  # no record, index or lease
    assert sent == [], case


def test_retry_of_a_failed_reservation_sends_it_again_from_the_failed_step(
    store: tuple[redis.Redis, Sent],
):
    client, sent = store
    rid = dispatch.load(document()).reservation_id
    client.hset(keys.record(rid), mapping={"state": "failed", "failed_step": "define"})
    with pytest.raises(InvalidInput, match="not a step of load"):
        dispatch.retry(rid, from_step="format_disk")
    assert len(sent) == 1

    handle = dispatch.retry(rid)

    assert sent[-1] == ("load", rid, 2, True)
    assert handle.task_id == f"vclvirt-{rid}-2"
    record = RecordStore(client).get(rid)
    assert record is not None and record.state == "queued"
