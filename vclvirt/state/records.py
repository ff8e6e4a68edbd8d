"""The reservation's status record: the truth the scheduler, operators and recovery read.

One hash per reservation (`keys.record`). An operation begins it (atomically: a second
begin while one is in flight is refused), a dispatch gives it a new `generation` (every
message carries the generation it was sent for, so a stale or duplicate message is
recognised and dropped), and it ends succeeded, failed or superseded (the moves:
state/machine.py). Steps write their own fields (see `steps.StepEntry`). Every write goes
through state/writer.py; this module builds what is written and reads records.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from vclvirt.errors import InvalidInput, ResourceBusy
from vclvirt.models import Reservation
from vclvirt.state import keys
from vclvirt.state.machine import State
from vclvirt.state.writer import RecordWriter

HISTORY = 20  # earlier operations kept, in short, in each record


def now() -> float:
    return round(time.time(), 3)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
    generation: int = 0
    current_step: str | None = None
    failed_step: str | None = None
    error: dict[str, Any] | None = None
    queued_at: float | None = None
    dispatched_at: float | None = None
    finished_at: float | None = None
    reservation: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    outcome: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    plan: list[str] | None = None
    waiting: dict[str, Any] | None = None  # why nothing runs now, and until when
    lease_holder: str | None = None
    waits: int = 0  # how often this operation has waited for a busy computer
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
        return State.is_ended(self.state)

    def next_step(self) -> str | None:
        """The first step that has not completed (succeeded or skipped)."""
        for step in self.steps:
            if self.step_records.get(step, {}).get("state") not in ("succeeded", "skipped"):
                return step
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reservation_id": self.reservation_id,
            "state": self.state,
            "operation": self.operation,
            "host": self.host,
            "computer": self.computer,
            "generation": self.generation,
            "current_step": self.current_step,
            "failed_step": self.failed_step,
            "error": self.error,
            "waiting": self.waiting,
            "queued_at": self.queued_at,
            "dispatched_at": self.dispatched_at,
            "finished_at": self.finished_at,
            "outcome": self.outcome,
            "computer_image": self.computer_image,
            "history": self.history,
            "steps": [
                {"name": s, **self.step_records.get(s, {"state": "pending"})} for s in self.steps
            ],
        }


def decode(reservation_id: int, raw: dict[str, str]) -> ReservationStatus:
    steps = json.loads(raw.get("steps", "[]"))

    def number(name: str) -> float | None:
        return float(raw[name]) if raw.get(name) else None

    return ReservationStatus(
        reservation_id=reservation_id,
        state=raw.get("state", "unknown"),
        operation=raw.get("operation", ""),
        host=raw.get("host", ""),
        computer=raw.get("computer", ""),
        steps=steps,
        step_records={s: json.loads(raw[f"step:{s}"]) for s in steps if f"step:{s}" in raw},
        generation=int(raw.get("generation") or 0),
        current_step=raw.get("current_step") or None,
        failed_step=raw.get("failed_step") or None,
        error=json.loads(raw["error"]) if raw.get("error") else None,
        queued_at=number("queued_at"),
        dispatched_at=number("dispatched_at"),
        finished_at=number("finished_at"),
        reservation=json.loads(raw.get("reservation", "{}")),
        history=json.loads(raw.get("history", "[]")),
        outcome=json.loads(raw["outcome"]) if raw.get("outcome") else None,
        params=json.loads(raw.get("params") or "{}"),
        plan=json.loads(raw["plan"]) if raw.get("plan") else None,
        waiting=json.loads(raw["waiting"]) if raw.get("waiting") else None,
        lease_holder=raw.get("lease_holder") or None,
        waits=int(raw.get("waits") or 0),
    )


# Records with what is shown beside them, in one round trip: for each id (ARGV[5..], or
# else the newest ARGV[1] of the index) that has a record: id, [field, value, ...], the
# host's last worker heartbeat, the computer's image. Key names are built here from
# their prefixes (ARGV[2..4]; one Redis, never a cluster).
_VIEW = """
local ids = {unpack(ARGV, 5)}
if #ids == 0 then ids = redis.call('ZREVRANGE', KEYS[1], 0, ARGV[1] - 1) end
local found = {}
for _, id in ipairs(ids) do
  local fields = redis.call('HGETALL', ARGV[2] .. id)
  if #fields > 0 then
    local record = {}
    for i = 1, #fields, 2 do record[fields[i]] = fields[i + 1] end
    local host, computer = record['host'] or '', record['computer'] or ''
    local top = redis.call('ZREVRANGE', ARGV[3] .. host, 0, 0, 'WITHSCORES')
    found[#found + 1] = id
    found[#found + 1] = fields
    found[#found + 1] = top[2] or false
    found[#found + 1] = redis.call('GET', ARGV[4] .. host .. ':' .. computer)
  end
end
return found
"""


@dataclass(frozen=True)
class Viewed:
    """A record as status shows it: with when a worker of its host last beat."""

    record: ReservationStatus
    last_seen: float | None  # None: no worker of the host beat within a week


@dataclass(frozen=True)
class Glance:
    """The few fields recovery looks at, for many records in one round trip."""

    reservation_id: int
    state: str | None  # None: the record has expired
    generation: int
    dispatched_at: float
    lease_holder: str | None  # who claimed it last, as the record says
    lease: str | None  # who holds its lease now (None: nobody, or it expired)


class RecordStore:
    """Begins, reads, re-dispatches and ends reservation records."""

    def __init__(self, client: redis.Redis, *, ttl_seconds: int = 30 * 86400) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._writer = RecordWriter(client)
        self._view = client.register_script(_VIEW)

    def get(self, reservation_id: int) -> ReservationStatus | None:
        raw = self.redis.hgetall(keys.record(reservation_id))
        if not raw:
            return None
        return decode(reservation_id, {_text(k): _text(v) for k, v in raw.items()})

    def glance(self, reservation_ids: list[int]) -> list[Glance]:
        pipe = self.redis.pipeline(transaction=False)
        for rid in reservation_ids:
            pipe.hmget(keys.record(rid), "state", "generation", "dispatched_at", "lease_holder")
            pipe.get(keys.lease(rid))
        answers = pipe.execute()
        found = []
        for index, rid in enumerate(reservation_ids):
            state, generation, dispatched, claimed = answers[2 * index]
            lease = answers[2 * index + 1]
            found.append(
                Glance(
                    rid,
                    _text(state) if state else None,
                    int(generation or 0),
                    float(dispatched or 0.0),
                    _text(claimed) if claimed else None,
                    _text(lease) if lease else None,
                )
            )
        return found

    def begin(
        self,
        reservation: Reservation,
        operation: str,
        steps: list[str],
        params: dict[str, Any] | None = None,
        *,
        owns_computer: bool = False,
    ) -> int:
        """A fresh record for a newly enqueued operation; returns its generation.

        Atomic: while an operation of the reservation is in flight, ResourceBusy (so a
        scheduler calling twice gets exactly one operation). A load or capture makes the
        reservation the computer's owner, which supersedes an older one in flight.
        """
        rid = reservation.reservation_id
        key = keys.record(rid)
        computer = reservation.computer.short_name
        previous: ReservationStatus | None = None
        while True:
            # First as if the record were new (one round trip, the common case); if it was
            # not, read it and write over it at the generation read.
            history = previous.history[-(HISTORY - 1) :] if previous else []
            if previous is not None:
                history.append(previous.summary())
            stamp = now()
            expected = previous.generation if previous else 0
            fields: dict[str, Any] = {
                "reservation": reservation.model_dump_json(),
                "operation": operation,
                "host": reservation.host,
                "computer": computer,
                "steps": json.dumps(steps),
                "queued_at": stamp,
                "dispatched_at": stamp,
                "generation": expected + 1,
                "history": json.dumps(history),
                "params": json.dumps(params or {}),
            }
            owner = keys.computer_owner(reservation.host, computer) if owns_computer else ""
            written = self._writer.begin(
                rid,
                reservation.host,
                ttl=self.ttl,
                stamp=stamp,
                expected=expected,
                owner_key=owner,
                keep_pin=operation != "load",  # a load is a new guest, with a new key
                fields=fields,
            )
            if written == 1:
                return expected + 1
            raw = {_text(k): _text(v) for k, v in self.redis.hgetall(key).items()}
            previous = decode(rid, raw) if raw else None
            if written == -1 and previous is not None and not previous.finished:
                raise ResourceBusy(
                    f"reservation {rid} is still {previous.state} "
                    f"({previous.operation}, step {previous.current_step or '-'})",
                    host=reservation.host,
                    reservation_id=rid,
                    hint="Wait for it to finish (vclvirt status), then try again",
                )

    def restart_from(self, reservation_id: int, step: str) -> int:
        """Make a failed record run again from `step` (earlier steps' results kept);
        returns the new generation. ResourceBusy unless the record has failed."""
        while True:
            record = self.get(reservation_id) or decode(reservation_id, {})
            if not record.finished:
                raise ResourceBusy(
                    f"reservation {reservation_id} is {record.state}; only a failed "
                    "reservation is retried",
                    reservation_id=reservation_id,
                    hint="Wait for it to finish (vclvirt status)",
                )
            if record.state != State.FAILED:
                raise InvalidInput(
                    f"reservation {reservation_id} {record.state}; only a failed "
                    "reservation is retried",
                    reservation_id=reservation_id,
                    hint="Enqueue the operation again instead (vclvirt load ...)",
                )
            again = record.steps[record.steps.index(step) :]
            forget = ["failed_step", "error", "finished_at", "current_step", "waiting"]
            generation = self._writer.restart(
                reservation_id,
                record.host,
                ttl=self.ttl,
                expected=record.generation,
                history=json.dumps([*record.history[-(HISTORY - 1) :], record.summary()]),
                forget=json.dumps([*forget, *(f"step:{s}" for s in again)]),
                stamp=now(),
            )
            if generation > 0:
                return generation
            # changed since it was read (another restart or enqueue): read it again

    def redispatch(
        self, reservation_id: int, generation: int, reason: str, dead_holder: str = ""
    ) -> int | None:
        """The record's next generation if it is still in flight at `generation` and no live
        holder runs it; None when someone else got there first or it has ended."""
        new = self._writer.redispatch(reservation_id, generation, now(), reason, dead_holder)
        return new or None

    def in_flight(self, host: str) -> list[int]:
        return sorted(int(m) for m in self.redis.smembers(keys.inflight(host)))

    def hosts_in_flight(self) -> list[str]:
        return sorted(_text(h) for h in self.redis.smembers(keys.INFLIGHT_HOSTS))

    def forget_in_flight(self, host: str, reservation_id: int) -> None:
        """Drop an index entry whose record has ended or expired."""
        self.redis.srem(keys.inflight(host), reservation_id)

    def view(self, reservation_ids: list[int]) -> list[Viewed]:
        """These records (those that exist) as shown, in one round trip."""
        return self._viewed(0, [str(rid) for rid in reservation_ids]) if reservation_ids else []

    def recent(self, limit: int = 1000) -> list[Viewed]:
        """The newest records (by queued time) as shown, in one round trip."""
        return self._viewed(limit, [])

    def _viewed(self, limit: int, ids: list[str]) -> list[Viewed]:
        prefixes = [keys.record(0)[:-1], keys.host_workers(""), keys.computer_image("", "")[:-1]]
        found = self._view(keys=[keys.INDEX], args=[limit, *prefixes, *ids])
        viewed = []
        for index in range(0, len(found), 4):
            rid, fields, seen, image = found[index : index + 4]
            raw = {_text(k): _text(v) for k, v in zip(fields[::2], fields[1::2], strict=True)}
            record = decode(int(rid), raw)
            record.computer_image = dict(json.loads(image)) if image else None
            viewed.append(Viewed(record, float(seen) if seen else None))
        return viewed
