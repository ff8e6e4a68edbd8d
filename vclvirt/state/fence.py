"""Fenced record writes: every write a running operation makes to its reservation's record
is conditional on its fencing token, checked in the same atomic Redis script.

The token is the pair (generation, holder) the lease was claimed with. A write is applied
only while the record is still at that generation, names that holder, is not final, and
the lease key still holds it; a change of state, only if the state machine allows the
move (state/machine.py; the script is in state/writer.py). Otherwise nothing is written
and the writer is told to stop (`Cancelled(Fenced)`). A worker that was paused or cut
off past its lease therefore cannot write a step entry, a retry or a final state into a
record another worker now runs or has finished (Kleppmann's fencing token; Chubby's sequencer).

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
from vclvirt.state.computers import NO_IMAGE
from vclvirt.state.machine import State
from vclvirt.state.records import now
from vclvirt.state.writer import RecordWriter

# Why a write was refused, as an operator reads it in the log.
_REFUSALS = {
    "generation": "the record was dispatched again (a newer generation runs it)",
    "lease": "the lease is no longer held by this worker",
    "holder": "another worker claimed the operation",
    "ended": "the operation has already ended",
    "move": "the state machine does not allow this move",
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
    move: str | None = None  # required when hset changes the state (machine.MOVES)
    pin: str | None = None  # the guest's SSH host key, unless one is pinned
    unpin: bool = False
    leave_inflight: bool = False
    due: float | None = None
    leave_due: bool = False
    computer_image: str | None = None

    def encode(self) -> str:
        ops: dict[str, Any] = {"hset": {k: _field(v) for k, v in self.hset.items()}}
        if self.hdel:
            ops["hdel"] = list(self.hdel)
        if self.move is not None:
            ops["move"] = self.move
        if self.pin is not None:
            ops["pin"] = self.pin
        if self.unpin:
            ops["unpin"] = True
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
        self._writer = RecordWriter(client)
        self.refused = 0  # writes refused (what the fault tests count)

    def apply(self, write: Write) -> None:
        """Apply `write`, or raise Cancelled(Fenced) and write nothing."""
        fence = self.fence
        verdict = self._writer.fenced(
            fence.reservation_id,
            fence.host,
            fence.computer,
            generation=fence.generation,
            holder=fence.holder,
            ops=write.encode(),
        )
        if verdict != "ok":
            self.refused += 1
            why = _REFUSALS.get(verdict, verdict)
            if verdict == "move":
                why += f" ({write.move or 'no move named'} to {write.hset.get('state')})"
            raise Cancelled(
                Fenced(
                    f"record write refused: {why} "
                    f"(token: generation {fence.generation}, holder {fence.holder or '-'})",
                    host=fence.host,
                    reservation_id=fence.reservation_id,
                )
            )

    def set(self, **fields: Any) -> None:
        self.apply(Write(hset=fields))

    def wait(self, state: State, until: float, why: str, count: int = 1) -> None:
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
                move="park",
            )
        )

    def finish(
        self, state: State, *, step: str | None = None, error: dict[str, Any] | None = None
    ) -> None:
        """End the operation: succeeded, failed (at `step`, with `error`) or superseded.
        Recovery (the empty holder) ends only an abandoned one, which it failed."""
        fields: dict[str, Any] = {"state": state, "current_step": "", "finished_at": now()}
        if error is not None:
            fields.update(failed_step=step or "", error=error)
        self.apply(
            Write(
                hset=fields,
                hdel=("waiting", "lease_holder", "waits"),
                leave_inflight=True,
                leave_due=True,
                move="abandon" if not self.fence.holder else "finish",
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
