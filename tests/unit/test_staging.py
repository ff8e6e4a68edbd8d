"""Pre-staging's records and the worker's side of a stage (vclvirt/staging.py), on the
unit tier's in-memory Redis: joining a stage under way, replacing a stalled one, and a
stager that comes back after its stage was replaced writing nothing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from vclvirt.errors import ImageNotFound
from vclvirt.staging import run_stage
from vclvirt.state import keys
from vclvirt.state.stages import STALLED_AFTER, StageStore
from vclvirt.testing import memory_redis

IMAGE, HOST = "linux-Stage-42-v0", "kvm01"


@pytest.fixture
def store() -> StageStore:
    return StageStore(memory_redis())


def copied(image: str, progress: Any) -> dict[str, Any]:
    progress(50, 100)
    progress(100, 100)
    return {"master": f"/images/{image}.qcow2", "copied": True, "bytes": 100}


def test_a_stage_under_way_is_joined_and_a_stalled_one_replaced(store):
    first, new = store.begin(IMAGE, HOST)
    assert new and store.get(IMAGE, HOST).state == "queued"
    assert store.begin(IMAGE, HOST) == (first, False)  # under way: joined

    store.redis.hset(keys.stage(IMAGE, HOST), "queued_at", time.time() - STALLED_AFTER - 1)
    assert store.get(IMAGE, HOST).to_dict()["state"] == "stalled"
    second, new = store.begin(IMAGE, HOST)
    assert new and second != first
    assert store.redis.ttl(keys.stage(IMAGE, HOST)) > 0


def test_a_stage_runs_the_copy_and_records_progress_and_the_outcome(store):
    stage, _ = store.begin(IMAGE, HOST)

    outcome = run_stage(store, IMAGE, HOST, stage, copied)

    assert outcome["state"] == "done"
    shown = store.get(IMAGE, HOST).to_dict()
    assert shown["state"] == "done" and shown["copied"] is True
    assert shown["master"] == f"/images/{IMAGE}.qcow2"
    assert (shown["done_bytes"], shown["total_bytes"]) == (100, 100)


def test_a_failed_copy_is_recorded_with_its_error(store):
    stage, _ = store.begin(IMAGE, HOST)

    def missing(image: str, progress: Any) -> dict[str, Any]:
        raise ImageNotFound(f"image {image} not found")

    assert run_stage(store, IMAGE, HOST, stage, missing)["state"] == "failed"
    shown = store.get(IMAGE, HOST).to_dict()
    assert shown["state"] == "failed"
    assert shown["error"]["code"] == "IMAGE_NOT_FOUND" and shown["error"]["host"] == HOST


def test_a_message_delivered_again_after_its_stage_ended_copies_nothing(store):
    stage, _ = store.begin(IMAGE, HOST)
    run_stage(store, IMAGE, HOST, stage, copied)
    calls: list[str] = []

    def counted(image: str, progress: Any) -> dict[str, Any]:
        calls.append(image)
        return copied(image, progress)

    assert run_stage(store, IMAGE, HOST, stage, counted) == {"dropped": True}
    assert calls == []


def test_a_stager_whose_stage_was_replaced_writes_nothing(store):
    """The stager pauses mid-copy past STALLED_AFTER; a new stage replaces its record.
    When it comes back, its progress and its outcome are refused: the record is the new
    stage's."""
    old, _ = store.begin(IMAGE, HOST)

    def paused_then_back(image: str, progress: Any) -> dict[str, Any]:
        progress(10, 100)
        store.redis.hset(keys.stage(IMAGE, HOST), "beat_at", time.time() - STALLED_AFTER - 1)
        store.redis.hset(keys.stage(IMAGE, HOST), "queued_at", time.time() - STALLED_AFTER - 1)
        new, begun = store.begin(IMAGE, HOST)
        assert begun and new != old
        progress(100, 100)
        return copied(image, progress)

    run_stage(store, IMAGE, HOST, old, paused_then_back)

    shown = store.get(IMAGE, HOST)
    assert shown.stage != old
    assert (shown.state, shown.done_bytes, shown.copied) == ("queued", 0, None)
