"""Pre-staging (#20): a master put on hosts ahead of the loads that will need it.

A stage of image I on host H is a record (`keys.stage(I, H)`, a hash) and one message on
H's queue. The worker that takes it runs the master copy a load's pre_define runs
(images.master.ensure_master): under the host's copy lock, re-checked under it, written
to `.part`, verified, renamed. So a stage and loads of the same image on the same host
still make one copy, and a duplicate or late message copies nothing twice.

Every write names the stage's id: a stager that paused and comes back after a newer
stage of the same image and host began writes nothing (one Lua call checks and writes).
A stage whose worker died stops beating (`beat_at`); a new request replaces it, and the
copy, left as a `.part` under a lock nobody holds, starts again. A stage only adds a
master: nothing is ever evicted by staging.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from vclvirt.errors import InternalError, VclvirtError
from vclvirt.state.stages import BEAT_EVERY, StageStore

log = structlog.get_logger(__name__)

Copy = Callable[[str, Callable[[int, int], None]], dict[str, Any]]


def run_stage(store: StageStore, image: str, host: str, stage: str, copy: Copy) -> dict[str, Any]:
    """The worker's side: copy the master (`copy(image, progress)`), recording progress
    and the outcome under the stage's id. A message for a stage that ended or was
    replaced runs nothing."""
    log_ = log.bind(image=image, host=host, stage=stage)
    current = store.get(image, host)
    if current is None or current.stage != stage or current.finished:
        log_.info("stage_dropped", reason="replaced or ended")
        return {"dropped": True}
    if not store.write(image, host, stage, state="copying", beat_at=time.time()):
        return {"dropped": True}
    last = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal last
        if time.monotonic() - last >= BEAT_EVERY or done >= total:
            last = time.monotonic()
            store.write(image, host, stage, done_bytes=done, total_bytes=total, beat_at=time.time())

    try:
        outcome = copy(image, progress)
    except VclvirtError as error:
        error.with_context(host=host, reservation_id=None)
        store.write(image, host, stage, state="failed", error=error.to_dict(), beat_at=time.time())
        log_.warning("stage_failed", code=error.code, error=error.message)
        return {"state": "failed", "error": error.to_dict()}
    except Exception as error:  # a bug: recorded, never a stage left "copying"
        failure = InternalError(f"staging {image} on {host} failed: {error!r}", host=host)
        store.write(image, host, stage, state="failed", error=failure.to_dict())
        raise
    store.write(
        image,
        host,
        stage,
        state="done",
        copied=bool(outcome["copied"]),
        master=outcome["master"],
        beat_at=time.time(),
    )
    log_.info("stage_done", copied=outcome["copied"], master=outcome["master"])
    return {"state": "done", **outcome}
