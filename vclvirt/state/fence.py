"""Fenced record writes: every write a running operation makes to its reservation's record
is conditional on its fencing token, checked in the same atomic Redis script.

The token is the pair (generation, holder) the lease was claimed with. A write is applied
only while the record is still at that generation, names that holder, is not final, and
the lease key still holds it; otherwise nothing is written and the writer is told to stop
(`Cancelled(Fenced)`). A worker that was paused or cut off past its lease therefore
cannot write a step entry, a retry or a final state into a record another worker now
runs or has finished (Kleppmann's fencing token; Chubby's sequencer).

Recovery writes as "nobody" (holder ""): only while no lease is held at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import redis

from vclvirt.cancellation import Cancelled
from vclvirt.errors import Fenced
from vclvirt.scoped import bound
from vclvirt.state import keys
from vclvirt.state.computers import NO_IMAGE
from vclvirt.state.records import now

_FENCED_WRITE = """
local record = KEYS[1]
if redis.call('HGET', record, 'generation') ~= ARGV[1] then return 'generation' end
local state = redis.call('HGET', record, 'state')
if state == 'succeeded' or state == 'failed' or state == 'superseded' then return 'ended' end
if ARGV[2] ~= '' then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 'lease' end
  if redis.call('HGET', record, 'lease_holder') ~= ARGV[2] then return 'holder' end
elseif redis.call('EXISTS', KEYS[2]) == 1 then
  return 'lease'
end
local ops = cjson.decode(ARGV[3])
local flat = {}
for name, value in pairs(ops.hset or {}) do
  flat[#flat + 1] = name
  flat[#flat + 1] = value
end
if #flat > 0 then redis.call('HSET', record, unpack(flat)) end
if ops.hdel and #ops.hdel > 0 then redis.call('HDEL', record, unpack(ops.hdel)) end
if ops.hsetnx then redis.call('HSETNX', record, ops.hsetnx[1], ops.hsetnx[2]) end
if ops.leave_inflight then redis.call('SREM', KEYS[3], ARGV[4]) end
if ops.due then redis.call('ZADD', KEYS[4], ops.due, ARGV[4]) end
if ops.leave_due then redis.call('ZREM', KEYS[4], ARGV[4]) end
if ops.computer_image then redis.call('SET', KEYS[5], ops.computer_image) end
return 'ok'
"""

# Why a write was refused, as an operator reads it in the log.
_REFUSALS = {
    "generation": "the record was dispatched again (a newer generation runs it)",
    "lease": "the lease is no longer held by this worker",
    "holder": "another worker claimed the operation",
    "ended": "the operation has already ended",
}


@dataclass(frozen=True)
class RecordFence:
    """The fencing token of one claimed run: writes carry it, the record checks it."""

    reservation_id: int
    host: str
    computer: str
    generation: int
    holder: str  # "" for recovery, which writes only while nobody holds the lease


@dataclass
class Write:
    """One atomic change to a record and the host's indexes, applied only under the fence."""

    hset: dict[str, Any]
    hdel: Iterable[str] = ()
    hsetnx: tuple[str, str] | None = None
    leave_inflight: bool = False
    due: float | None = None
    leave_due: bool = False
    computer_image: str | None = None

    def encode(self) -> str:
        ops: dict[str, Any] = {"hset": {k: _field(v) for k, v in self.hset.items()}}
        if self.hdel:
            ops["hdel"] = list(self.hdel)
        if self.hsetnx:
            ops["hsetnx"] = list(self.hsetnx)
        if self.leave_inflight:
            ops["leave_inflight"] = True
        if self.due is not None:
            ops["due"] = repr(float(self.due))
        if self.leave_due:
            ops["leave_due"] = True
        if self.computer_image is not None:
            ops["computer_image"] = self.computer_image
        return json.dumps(ops)


def _field(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value)
    if value is None:
        return ""
    return str(value)


class FencedRecord:
    """Writes into one reservation's record under one fencing token."""

    def __init__(self, client: redis.Redis, fence: RecordFence) -> None:
        self.redis = client
        self.fence = fence
        self._script = client.register_script(_FENCED_WRITE)
        self.refused = 0  # writes refused (what the fault tests count)

    def apply(self, write: Write) -> None:
        """Apply `write`, or raise Cancelled(Fenced) and write nothing."""
        fence = self.fence
        answer = self._script(
            keys=[
                keys.record(fence.reservation_id),
                keys.lease(fence.reservation_id),
                keys.inflight(fence.host),
                keys.due(fence.host),
                keys.computer_image(fence.host, fence.computer),
            ],
            args=[fence.generation, fence.holder, write.encode(), fence.reservation_id],
        )
        verdict = answer.decode() if isinstance(answer, bytes) else str(answer)
        if verdict != "ok":
            self.refused += 1
            raise Cancelled(
                Fenced(
                    f"record write refused: {_REFUSALS.get(verdict, verdict)} "
                    f"(token: generation {fence.generation}, holder {fence.holder or '-'})",
                    host=fence.host,
                    reservation_id=fence.reservation_id,
                )
            )

    def set(self, **fields: Any) -> None:
        self.apply(Write(hset=fields))

    def wait(self, state: str, until: float, why: str, count: int = 1) -> None:
        """Nothing runs until `until` (a retry's backoff, a busy computer); the record says
        why, and the host's due set makes recovery dispatch it again then."""
        waiting = {"reason": why, "until": round(until, 3)}
        self.apply(
            Write(
                hset={
                    "state": state,
                    "current_step": "",
                    "lease_holder": "",
                    "waiting": waiting,
                    "waits": count,  # kept across dispatches: how long to wait next time
                },
                due=until,
            )
        )

    def finish(
        self, state: str, *, step: str | None = None, error: dict[str, Any] | None = None
    ) -> None:
        """End the operation: succeeded, failed (at `step`, with `error`) or superseded."""
        fields: dict[str, Any] = {"state": state, "current_step": "", "finished_at": now()}
        if error is not None:
            fields.update(failed_step=step or "", error=error)
        self.apply(
            Write(
                hset=fields,
                hdel=("waiting", "lease_holder", "waits"),
                leave_inflight=True,
                leave_due=True,
            )
        )

    def set_plan(self, steps: list[str]) -> None:
        """Only these steps run; the others are recorded as skipped (node_status decided)."""
        self.set(plan=steps)

    def set_outcome(self, outcome: dict[str, Any]) -> None:
        """What the operation produced, for the scheduler (e.g. a capture's new image)."""
        self.set(outcome=outcome)

    def set_computer_image(self, image: dict[str, Any] | None) -> None:
        """What the computer holds now: set after post_load, 'noimage' after unload."""
        self.apply(Write(hset={}, computer_image=json.dumps(image or NO_IMAGE)))


_current: ContextVar[FencedRecord | None] = ContextVar("vclvirt_record_fence", default=None)


def writing_as(record: FencedRecord) -> AbstractContextManager[FencedRecord]:
    """Writes deep inside a step (a guest's pinned host key) go through `record`."""
    return bound(_current, record)


def current() -> FencedRecord | None:
    """The fenced record of the operation running in this thread, if any."""
    return _current.get()
