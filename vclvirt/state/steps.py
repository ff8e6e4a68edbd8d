"""The step log inside a reservation's record: one field `step:<name>` per step.

A `StepEntry` is held in memory by whoever runs the step, and every transition is one
fenced write of the whole entry (plus the record fields that change with it): one Redis
round trip per transition, concurrent writers never mix their fields, and a writer that
lost its lease writes nothing (state/fence.py).
"""

from __future__ import annotations

import json
from typing import Any

import redis

from vclvirt.state import keys
from vclvirt.state.fence import FencedRecord, Write
from vclvirt.state.machine import State
from vclvirt.state.records import now


class StepEntry:
    """One step of one reservation, as its record shows it."""

    def __init__(self, record: FencedRecord, name: str, data: dict[str, Any]) -> None:
        self.record = record
        self.name = name
        self.data = dict(data)

    @property
    def state(self) -> str | None:
        return self.data.get("state")

    def _write(self) -> None:
        self.record.set(**{f"step:{self.name}": json.dumps(self.data)})

    def started(
        self, *, task_id: str | None, worker: str | None, holder: str | None = None
    ) -> None:
        """Running now; `attempt` counts every start, retries and redeliveries alike.
        `holder` is the process that runs it (worker node, its run, pid)."""
        self.data.update(
            state="running",
            started_at=now(),
            ended_at=None,
            duration_s=None,
            task_id=task_id,
            worker=worker,
            holder=holder,
            attempt=int(self.data.get("attempt", 0)) + 1,
            error=None,
            retry_in_s=None,
        )
        entry = {f"step:{self.name}": json.dumps(self.data)}
        fields = {**entry, "state": State.RUNNING, "current_step": self.name}
        self.record.apply(Write(hset=fields, move="step"))

    def progress(self, **progress: Any) -> None:
        self.data["progress"] = progress
        self._write()

    def succeeded(self, result: dict[str, Any]) -> None:
        self._end("succeeded", result=result, transient_since=None)
        self._write()

    def skipped(self, reason: str) -> None:
        self.data.update(state="skipped", reason=reason)
        self._write()

    def retrying(self, error: dict[str, Any], countdown: float) -> None:
        """Failed transiently; runs again after `countdown` seconds."""
        self.data.update(
            state="retrying",
            error=error,
            retry_in_s=round(countdown, 1),
            transient_since=self.data.get("transient_since") or now(),
        )
        self._write()

    def failed(self, error: dict[str, Any], *, state: str = "failed") -> None:
        self._end(state, error=error)
        self._write()

    def _end(self, state: str, **changes: Any) -> None:
        ended = now()
        self.data.update(state=state, ended_at=ended, **changes)
        if self.data.get("started_at"):
            self.data["duration_s"] = round(ended - self.data["started_at"], 3)


def step_result(client: redis.Redis, reservation_id: int, step: str) -> dict[str, Any] | None:
    """What a completed step recorded, or None."""
    raw = client.hget(keys.record(reservation_id), f"step:{step}")
    if not raw:
        return None
    result: dict[str, Any] | None = json.loads(raw).get("result")
    return result
