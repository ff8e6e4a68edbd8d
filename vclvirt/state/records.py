"""The reservation's status record: the truth the scheduler, operators and recovery read.

One hash per reservation (`keys.record`). An operation begins it (atomically: a second
begin while one is in flight is refused), a dispatch gives it a new `generation` (every
message carries the generation it was sent for, so a stale or duplicate message is
recognised and dropped), and it ends succeeded, failed or superseded. Steps write their
own fields (see `steps.StepLog`).
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

HISTORY = 20  # earlier operations kept, in short, in each record
FINAL = ("succeeded", "failed", "superseded")
# A guest's pinned SSH host key outlives single operations; a new load gets a new guest.
GUEST_HOST_KEY = "guest_host_key"


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
        return self.state in FINAL

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


# Dispatch the record again (a new generation) if it is still in flight at the expected
# generation and nobody holds its lease (or only the holder known to be dead).
_REDISPATCH = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'succeeded' or state == 'failed' or state == 'superseded' then
  return 0
end
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[4] then return 0 end
if holder then redis.call('DEL', KEYS[2]) end
local generation = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'state', 'queued', 'dispatched_at', ARGV[2],
           'requeued', ARGV[3], 'lease_holder', '', 'current_step', '')
redis.call('HDEL', KEYS[1], 'waiting')
return generation
"""


# Begin a record in one round trip: -1 (writes nothing) while an operation of it is in
# flight; 0 if it changed since the caller read it (another generation: read again); else
# the record is written over the ended one (or none, generation 0) and 1 is returned.
_BEGIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'succeeded' and state ~= 'failed' and state ~= 'superseded' then
  return -1
end
local current = redis.call('HGET', KEYS[1], 'generation') or '0'
if current ~= ARGV[5] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], 0, ARGV[2] - ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[4])
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], ARGV[3], 'EX', ARGV[1]) end
return 1
"""


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
        self._redispatch = client.register_script(_REDISPATCH)
        self._begin = client.register_script(_BEGIN)

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
        raw: dict[str, str] = {}
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
                "state": "queued",
                "steps": json.dumps(steps),
                "queued_at": stamp,
                "dispatched_at": stamp,
                "generation": expected + 1,
                "history": json.dumps(history),
                "params": json.dumps(params or {}),
            }
            if operation != "load" and raw.get(GUEST_HOST_KEY):
                fields[GUEST_HOST_KEY] = raw[GUEST_HOST_KEY]
            owner = keys.computer_owner(reservation.host, computer) if owns_computer else ""
            written = self._begin(
                keys=[key, keys.INDEX, keys.inflight(reservation.host), keys.INFLIGHT_HOSTS, owner],
                args=[
                    self.ttl,
                    stamp,
                    rid,
                    reservation.host,
                    expected,
                    *(item for pair in fields.items() for item in pair),
                ],
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
        key = keys.record(reservation_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    raw = {_text(k): _text(v) for k, v in pipe.hgetall(key).items()}
                    record = decode(reservation_id, raw)
                    if not record.finished:
                        raise ResourceBusy(
                            f"reservation {reservation_id} is {record.state}; only a failed "
                            "reservation is retried",
                            reservation_id=reservation_id,
                            hint="Wait for it to finish (vclvirt status)",
                        )
                    if record.state != "failed":
                        raise InvalidInput(
                            f"reservation {reservation_id} {record.state}; only a failed "
                            "reservation is retried",
                            reservation_id=reservation_id,
                            hint="Enqueue the operation again instead (vclvirt load ...)",
                        )
                    again = record.steps[record.steps.index(step) :]
                    history = [*record.history[-(HISTORY - 1) :], record.summary()]
                    generation = record.generation + 1
                    pipe.multi()
                    pipe.hdel(
                        key,
                        "failed_step",
                        "error",
                        "finished_at",
                        "current_step",
                        "waiting",
                        *(f"step:{s}" for s in again),
                    )
                    pipe.hset(
                        key,
                        mapping={
                            "state": "queued",
                            "history": json.dumps(history),
                            "generation": generation,
                            "dispatched_at": now(),
                        },
                    )
                    pipe.expire(key, self.ttl)
                    pipe.sadd(keys.inflight(record.host), reservation_id)
                    pipe.sadd(keys.INFLIGHT_HOSTS, record.host)
                    pipe.execute()
                    return generation
                except redis.WatchError:
                    continue

    def redispatch(
        self, reservation_id: int, generation: int, reason: str, dead_holder: str = ""
    ) -> int | None:
        """The record's next generation if it is still in flight at `generation` and no live
        holder runs it; None when someone else got there first or it has ended."""
        new = self._redispatch(
            keys=[keys.record(reservation_id), keys.lease(reservation_id)],
            args=[generation, now(), reason, dead_holder],
        )
        return int(new) or None

    def in_flight(self, host: str) -> list[int]:
        return sorted(int(m) for m in self.redis.smembers(keys.inflight(host)))

    def hosts_in_flight(self) -> list[str]:
        return sorted(_text(h) for h in self.redis.smembers(keys.INFLIGHT_HOSTS))

    def forget_in_flight(self, host: str, reservation_id: int) -> None:
        """Drop an index entry whose record has ended or expired."""
        self.redis.srem(keys.inflight(host), reservation_id)

    def recent(self, limit: int = 1000) -> list[ReservationStatus]:
        """Records, most recently queued first."""
        found = []
        for member in self.redis.zrevrange(keys.INDEX, 0, limit - 1):
            record = self.get(int(member))  # type: ignore[arg-type]  # zset members: ids
            if record is not None:
                found.append(record)
        return found
