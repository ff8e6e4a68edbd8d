"""The reservation status record in Redis: the truth operators and the scheduler read.

One hash per reservation. Each step writes only its own field, so concurrent
writers never overwrite each other's news. Celery's result backend is only
diagnostics (celery-practice.md §1.9).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from vclvirt.models import Reservation

PREFIX = "vclvirt"
INDEX = f"{PREFIX}:reservations"
HISTORY = 20  # earlier operations kept, in short, in each record


def _key(reservation_id: int) -> str:
    return f"{PREFIX}:reservation:{reservation_id}"


def computer_key(host: str, computer: str) -> str:
    return f"{PREFIX}:computer:{host}:{computer}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _now() -> float:
    return round(time.time(), 3)


@dataclass
class ReservationStatus:
    """A decoded status record."""

    reservation_id: int
    state: str
    operation: str
    host: str
    computer: str
    steps: list[str]
    step_records: dict[str, dict[str, Any]]
    current_step: str | None = None
    failed_step: str | None = None
    error: dict[str, Any] | None = None
    queued_at: float | None = None
    finished_at: float | None = None
    reservation: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    outcome: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    computer_image: dict[str, Any] | None = None  # what the computer holds now

    def summary(self) -> dict[str, Any]:
        """This operation in one line of history."""
        return {
            "operation": self.operation,
            "state": self.state,
            "failed_step": self.failed_step,
            "error_code": (self.error or {}).get("code"),
            "queued_at": self.queued_at,
            "finished_at": self.finished_at,
        }

    @property
    def last_step(self) -> str | None:
        return self.steps[-1] if self.steps else None

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "superseded")

    def to_dict(self) -> dict[str, Any]:
        return {
            "reservation_id": self.reservation_id,
            "state": self.state,
            "operation": self.operation,
            "host": self.host,
            "computer": self.computer,
            "current_step": self.current_step,
            "failed_step": self.failed_step,
            "error": self.error,
            "queued_at": self.queued_at,
            "finished_at": self.finished_at,
            "outcome": self.outcome,
            "computer_image": self.computer_image,
            "history": self.history,
            "steps": [
                {"name": s, **self.step_records.get(s, {"state": "pending"})} for s in self.steps
            ],
        }


class StatusStore:
    """Reads and writes reservation status records."""

    def __init__(self, client: redis.Redis, *, ttl_seconds: int = 30 * 86400) -> None:
        self.redis = client
        self.ttl = ttl_seconds

    def begin(
        self,
        reservation: Reservation,
        operation: str,
        steps: list[str],
        params: dict[str, Any] | None = None,
    ) -> None:
        """A fresh record for a newly enqueued operation; the computer now belongs to it."""
        key = _key(reservation.reservation_id)
        now = _now()
        previous = self.get(reservation.reservation_id)
        history = previous.history[-(HISTORY - 1) :] if previous else []
        if previous is not None:
            history.append(previous.summary())
        pipe = self.redis.pipeline()
        pipe.delete(key)
        pipe.hset(
            key,
            mapping={
                "reservation": reservation.model_dump_json(),
                "operation": operation,
                "host": reservation.host,
                "computer": reservation.computer.short_name,
                "state": "queued",
                "steps": json.dumps(steps),
                "queued_at": now,
                "history": json.dumps(history),
                "params": json.dumps(params or {}),
            },
        )
        pipe.expire(key, self.ttl)
        pipe.zadd(INDEX, {str(reservation.reservation_id): now})
        pipe.zremrangebyscore(INDEX, 0, now - self.ttl)  # their records have expired
        pipe.set(
            computer_key(reservation.host, reservation.computer.short_name),
            reservation.reservation_id,
            ex=self.ttl,
        )
        pipe.execute()

    def restart_from(self, reservation_id: int, step: str) -> None:
        """Make a failed record run again from `step`, keeping what earlier steps recorded."""
        record = self.get(reservation_id)
        if record is None:
            raise ValueError(f"no record for reservation {reservation_id}")
        again = record.steps[record.steps.index(step) :]
        history = [*record.history[-(HISTORY - 1) :], record.summary()]
        key = _key(reservation_id)
        pipe = self.redis.pipeline()
        pipe.hdel(
            key,
            "failed_step",
            "error",
            "finished_at",
            "current_step",
            *(f"step:{s}" for s in again),
        )
        pipe.hset(key, mapping={"state": "queued", "history": json.dumps(history)})
        pipe.expire(key, self.ttl)
        pipe.execute()

    def failed(self, limit: int = 100) -> list[ReservationStatus]:
        """The most recently queued reservations whose last operation failed."""
        found = []
        for member in self.redis.zrevrange(INDEX, 0, -1):
            record = self.get(int(member))  # type: ignore[arg-type]  # zset members: ids
            if record is not None and record.state == "failed":
                found.append(record)
                if len(found) >= limit:
                    break
        return found

    def owner_of(self, host: str, computer: str) -> int | None:
        value = self.redis.get(computer_key(host, computer))
        return int(value) if value is not None else None

    def _read_step(self, reservation_id: int, step: str) -> dict[str, Any]:
        raw = self.redis.hget(_key(reservation_id), f"step:{step}")
        return dict(json.loads(raw)) if raw else {}

    def _update_step(self, reservation_id: int, step: str, **changes: Any) -> dict[str, Any]:
        record = self._read_step(reservation_id, step)
        record.update(changes)
        if changes.get("ended_at") and record.get("started_at"):
            record["duration_s"] = round(changes["ended_at"] - record["started_at"], 3)
        self.redis.hset(_key(reservation_id), f"step:{step}", json.dumps(record))
        return record

    def step_started(
        self,
        reservation_id: int,
        step: str,
        *,
        task_id: str | None,
        worker: str | None,
        attempt: int,
    ) -> None:
        starts = int(self._read_step(reservation_id, step).get("starts", 0)) + 1
        self._update_step(
            reservation_id,
            step,
            state="running",
            started_at=_now(),
            ended_at=None,
            duration_s=None,
            task_id=task_id,
            worker=worker,
            attempt=attempt,
            starts=starts,  # more starts than attempts: the step was delivered again
            error=None,
        )
        self.redis.hset(_key(reservation_id), mapping={"state": "running", "current_step": step})

    def step_progress(self, reservation_id: int, step: str, **progress: Any) -> None:
        self._update_step(reservation_id, step, progress=progress)

    def step_succeeded(
        self, reservation_id: int, step: str, result: dict[str, Any], *, last: bool
    ) -> None:
        now = _now()
        self._update_step(reservation_id, step, state="succeeded", ended_at=now, result=result)
        if last:
            self.redis.hset(
                _key(reservation_id),
                mapping={"state": "succeeded", "current_step": "", "finished_at": now},
            )

    def step_retrying(
        self, reservation_id: int, step: str, error: dict[str, Any], countdown: float
    ) -> None:
        self._update_step(
            reservation_id, step, state="retrying", error=error, retry_in_s=round(countdown, 1)
        )
        self.redis.hset(_key(reservation_id), "state", "retrying")

    def step_failed(
        self, reservation_id: int, step: str, error: dict[str, Any], *, state: str = "failed"
    ) -> None:
        now = _now()
        self._update_step(reservation_id, step, state=state, ended_at=now, error=error)
        self.redis.hset(
            _key(reservation_id),
            mapping={
                "state": state,
                "failed_step": step,
                "current_step": "",
                "error": json.dumps(error),
                "finished_at": now,
            },
        )

    def set_outcome(self, reservation_id: int, outcome: dict[str, Any]) -> None:
        """What the operation produced, for the scheduler (e.g. a capture's new image)."""
        self.redis.hset(_key(reservation_id), "outcome", json.dumps(outcome))

    def set_plan(self, reservation_id: int, steps: list[str]) -> None:
        """Only these steps run; the others are recorded as skipped (node_status decided)."""
        self.redis.hset(_key(reservation_id), "plan", json.dumps(steps))

    def planned(self, reservation_id: int, step: str) -> bool:
        raw = self.redis.hget(_key(reservation_id), "plan")
        return raw is None or step in json.loads(raw)

    def step_skipped(self, reservation_id: int, step: str, *, last: bool) -> None:
        self._update_step(reservation_id, step, state="skipped")
        if last:
            self.redis.hset(
                _key(reservation_id),
                mapping={"state": "succeeded", "current_step": "", "finished_at": _now()},
            )

    def set_computer_image(self, host: str, computer: str, image: dict[str, Any] | None) -> None:
        """What the computer holds now; None records 'noimage' (after unload/maintenance)."""
        self.redis.set(
            f"{PREFIX}:computer-image:{host}:{computer}", json.dumps(image or {"image": "noimage"})
        )

    def computer_image(self, host: str, computer: str) -> dict[str, Any] | None:
        raw = self.redis.get(f"{PREFIX}:computer-image:{host}:{computer}")
        return dict(json.loads(raw)) if raw else None

    def step_result(self, reservation_id: int, step: str) -> dict[str, Any] | None:
        raw = self.redis.hget(_key(reservation_id), f"step:{step}")
        if not raw:
            return None
        result: dict[str, Any] | None = json.loads(raw).get("result")
        return result

    def get(self, reservation_id: int) -> ReservationStatus | None:
        raw = {_text(k): _text(v) for k, v in self.redis.hgetall(_key(reservation_id)).items()}
        if not raw:
            return None
        steps = json.loads(raw.get("steps", "[]"))
        return ReservationStatus(
            reservation_id=reservation_id,
            state=raw.get("state", "unknown"),
            operation=raw.get("operation", ""),
            host=raw.get("host", ""),
            computer=raw.get("computer", ""),
            steps=steps,
            step_records={s: json.loads(raw[f"step:{s}"]) for s in steps if f"step:{s}" in raw},
            current_step=raw.get("current_step") or None,
            failed_step=raw.get("failed_step") or None,
            error=json.loads(raw["error"]) if raw.get("error") else None,
            queued_at=float(raw["queued_at"]) if raw.get("queued_at") else None,
            finished_at=float(raw["finished_at"]) if raw.get("finished_at") else None,
            reservation=json.loads(raw.get("reservation", "{}")),
            history=json.loads(raw.get("history", "[]")),
            outcome=json.loads(raw["outcome"]) if raw.get("outcome") else None,
            params=json.loads(raw.get("params") or "{}"),
            computer_image=self.computer_image(raw.get("host", ""), raw.get("computer", "")),
        )
