"""Enqueueing through vclvirt.dispatch on the real broker, no worker: what is written and
sent, and what is refused before anything is."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import make_reservation
from vclvirt import dispatch
from vclvirt.errors import InvalidInput, ResourceBusy
from vclvirt.recovery import queue_keys
from vclvirt.state import keys


@pytest.fixture
def broker(testbed) -> Iterator[Any]:
    """The tests' broker database; what a test enqueues is taken out again afterwards, so
    no later worker of node-a runs it."""
    client = dispatch._client()
    yield client
    for key in queue_keys("node-a"):
        for raw in client.lrange(key, 0, -1):
            if json.loads(raw)["headers"]["id"].startswith("vclvirt-95"):
                client.lrem(key, 0, raw)
    for rid in range(9500, 9600):
        client.delete(keys.record(rid))
        client.srem(keys.inflight("node-a"), rid)


def _queued_ids(client: Any) -> list[str]:
    return [
        json.loads(raw)["headers"]["id"]
        for key in queue_keys("node-a")
        for raw in client.lrange(key, 0, -1)
    ]


def test_a_load_writes_its_record_and_sends_one_small_message(broker) -> None:
    """One message per load, carrying ids only; the reservation is in the record once."""
    handle = dispatch.load(make_reservation(9500, "dsp-vm1", "linux-D-1-v0"))
    assert handle.task_id == "vclvirt-9500-1"
    assert handle.task_id in _queued_ids(broker)
    (raw,) = [r for k in queue_keys("node-a") for r in broker.lrange(k, 0, -1) if b"9500-1" in r]
    message = json.loads(raw)
    assert message["headers"]["task"] == "vclvirt.load"
    assert len(raw) < 2500, len(raw)  # the reservation does not ride in the message
    assert b"eth0_mac" not in raw
    record = dispatch.status(9500)
    assert record is not None and record.generation == 1


def test_a_bulk_load_validates_all_before_enqueueing_any(broker) -> None:
    """One invalid reservation in a list: InvalidInput naming its index, nothing written."""
    good = make_reservation(9510, "dsp-vm2", "linux-D-1-v0")
    bad = make_reservation(9511, "dsp-vm3", "linux-D-1-v0")
    bad["computer"]["eth0_mac"] = "not-a-mac"
    with pytest.raises(InvalidInput) as caught:
        dispatch.load_many([good, bad])
    assert caught.value.field == "[1].computer.eth0_mac"
    assert dispatch.status(9510) is None and dispatch.status(9511) is None
    assert not [i for i in _queued_ids(broker) if i.startswith("vclvirt-951")]


def test_a_bulk_load_answers_each_item_and_sends_the_others(broker) -> None:
    """A reservation already in flight is answered with its error in its place; the rest
    are enqueued, each with one message."""
    dispatch.load(make_reservation(9520, "dsp-vm4", "linux-D-1-v0"))
    answers = dispatch.load_many(
        [make_reservation(rid, f"dsp-{rid}", "linux-D-1-v0") for rid in (9520, 9521, 9522)]
    )
    assert isinstance(answers[0], ResourceBusy)
    assert [a.task_id for a in answers[1:]] == ["vclvirt-9521-1", "vclvirt-9522-1"]  # type: ignore[union-attr]
    queued = _queued_ids(broker)
    assert {"vclvirt-9520-1", "vclvirt-9521-1", "vclvirt-9522-1"} <= set(queued)
    assert queued.count("vclvirt-9520-1") == 1
