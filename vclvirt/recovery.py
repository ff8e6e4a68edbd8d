"""Recovery: the reservation's record drives it, the broker only hands out work.

Read top to bottom:

1. **Leases.** A worker process runs an operation only while it holds the
   reservation's lease (state/leases.py), taken atomically with the record's generation.
   `LeaseKeeper` renews it (and the computer lock) every third of its TTL and watches for
   a newer reservation taking the computer; if renewal fails for longer than the TTL, or
   the computer is taken, it cancels the operation (cancellation.py) so it stops before
   doing more host work.
2. **Dead holders.** A lease whose holder died expires after its TTL. Faster when the
   death is visible from here: a holder process on this same machine that no longer
   exists (a killed pool process, the previous run of a restarted worker) is dead now.
3. **Reconcile.** Every worker runs a `Reconciler` for its hosts: it beats (worker
   heartbeats say which hosts have a live worker), dispatches retries that are due, and
   dispatches again every in-flight record whose lease expired, whose holder is dead, or
   whose message the broker no longer has. Steps are idempotent, so the operation resumes
   at the step that had not completed. A new worker's first cycle is Nova's
   `_init_instance`: it resumes what its hosts had in flight.
4. **Deadlines.** Transient errors are retried with backoff until `transient_deadline`
   after the step's first one (longer than a host reboot); a step interrupted
   `max_interruptions` times fails; a reservation whose host has no live worker is shown
   as waiting and fails with NO_WORKER (retryable) after `no_worker_deadline`. Only the
   reconciler fails it: reading a record never writes it. The numbers are in
   retrypolicy.py.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import structlog
from kombu.transport.redis import Channel

from vclvirt.cancellation import Cancelled, CancelToken
from vclvirt.config.settings import Settings
from vclvirt.errors import LeaseLost, NoWorker, Superseded
from vclvirt.locks import ResourceLock
from vclvirt.retrypolicy import RetryPolicy
from vclvirt.state import keys
from vclvirt.state.computers import ComputerOwners
from vclvirt.state.fence import FencedRecord, RecordFence
from vclvirt.state.leases import Holder, Leases
from vclvirt.state.machine import State
from vclvirt.state.records import Glance, RecordStore, ReservationStatus, now
from vclvirt.state.stores import WORKER_LIFE_BEATS, Stores
from vclvirt.workers.routing import host_queue

log = structlog.get_logger(__name__)

# Publishes the record's operation for `generation` on its host's queue; `resumed` puts
# it ahead of operations that have not started yet.
Publish = Callable[[ReservationStatus, int, bool], None]


# -- 1 and 2: who holds a lease, and whether that holder is dead -----------------------


def _machine(node: str) -> str:
    return node.rsplit("@", 1)[-1]


def holder_is_dead(holder_text: str, me: Holder) -> bool:
    """True only when the death is certain from here: the holder ran on this machine and
    its process no longer exists. Anything else waits for the lease to expire."""
    holder = Holder.parse(holder_text)
    if holder is None or _machine(holder.node) != _machine(me.node) or holder.pid == me.pid:
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Renewable(Protocol):
    """What a run holds besides its lease and renews with it: a lock, a host slot."""

    def renew(self) -> bool: ...
    def release(self) -> None: ...


# The keeper renews every third of the TTL; every call it makes fails within a tenth of
# the TTL; without a renewal for RENEW_DEADLINE of the TTL it stops the run, well before
# the lease (renewed at the latest when that renewal was sent) can expire.
RENEW_EVERY, CALL_DEADLINE, RENEW_DEADLINE = 1 / 3, 1 / 10, 0.6


class LeaseKeeper:
    """Keeps a running operation's lease and what it holds alive; cancels the operation
    when it must stop (lease lost or not renewable in time, computer taken)."""

    def __init__(
        self,
        leases: Leases,
        owners: ComputerOwners,
        reservation_id: int,
        holder: Holder,
        *,
        ttl: float,
        watch_owner: tuple[str, str] | None,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.leases, self.owners = leases, owners
        self.reservation_id, self.holder = reservation_id, holder
        self.ttl = ttl
        self.watch_owner = watch_owner  # (host, computer) whose owner must stay us
        self.on_lost = on_lost  # cuts what the run has open on the host
        self.token = CancelToken()
        self.held: list[Renewable] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        for held in reversed(self.held):
            _quietly(held.release)
        _quietly(lambda: self.leases.release(self.reservation_id, self.holder))

    def hold(self, held: Renewable) -> None:
        self.held.append(held)

    def check(self) -> None:
        """Between steps: stop here if the operation was cancelled."""
        self.token.check()
        self.check_owner()
        self.token.check()

    def check_owner(self) -> None:
        if self.watch_owner is None:
            return
        owner = self.owners.owner_of(*self.watch_owner)
        if owner is not None and owner != self.reservation_id:
            self.token.cancel(
                Superseded(f"reservation {owner} now owns computer {self.watch_owner[1]}")
            )

    def _lost(self, reason: str) -> None:
        self.token.cancel(LeaseLost(reason))
        log.warning("lease_lost", reservation_id=self.reservation_id, reason=reason)
        try:
            self.on_lost()
        except Exception as error:
            log.warning("cut_failed", error=str(error))

    def _run(self) -> None:
        renewed = time.monotonic()  # when the last successful renewal was sent
        while not self._stop.wait(1.0):
            sent = time.monotonic()
            try:
                self.check_owner()
                if sent - renewed >= self.ttl * RENEW_EVERY:
                    if not self.leases.renew(self.reservation_id, self.holder):
                        return self._lost("the lease was taken or expired")
                    if not all(held.renew() for held in self.held):
                        return self._lost("the computer lock or the host slot was taken")
                    renewed = sent
            except redis.RedisError as error:
                # The broker is away: the lease survives it for its TTL, no longer.
                if time.monotonic() - renewed > self.ttl * RENEW_DEADLINE:
                    return self._lost(f"cannot renew the lease: {error}")


def _quietly(action: Callable[[], Any]) -> None:
    try:
        action()
    except redis.RedisError as error:  # the lease expires by itself
        log.warning("lease_release_failed", error=str(error))


# -- 4: deadlines ------------------------------------------------------------------------


def worker_ttl(settings: Settings) -> float:
    """A worker counts as alive for three heartbeats."""
    return WORKER_LIFE_BEATS * settings.heartbeat_interval


@dataclass(frozen=True)
class Waiting:
    """Why an in-flight reservation is not running, and when it fails if nothing changes."""

    reason: str
    since: float
    fails_at: float | None

    def to_dict(self) -> dict[str, Any]:
        # Past `fails_at` the record is abandoned: the next reconcile of any worker fails
        # it (NO_WORKER); until then it reads as waiting, with this saying so.
        abandoned = self.fails_at is not None and now() >= self.fails_at
        return {
            "reason": self.reason,
            "since": self.since,
            "fails_at": self.fails_at,
            "abandoned": abandoned,
        }


def no_worker(
    record: ReservationStatus, last_seen: float | None, settings: Settings
) -> Waiting | None:
    """Waiting for a worker: the record is in flight and no live worker serves its host
    (`last_seen`: the host's last worker heartbeat, None if none within a week)."""
    if record.finished or (last_seen is not None and last_seen >= now() - worker_ttl(settings)):
        return None
    since = max(record.dispatched_at or 0.0, last_seen or 0.0)
    fails_at = RetryPolicy.from_settings(settings).no_worker_fails_at(since)
    return Waiting(f"no live worker for host {record.host}", since, fails_at)


def fail_if_abandoned(
    records: RecordStore, last_seen: float | None, settings: Settings, record: ReservationStatus
) -> bool:
    """Fail (NO_WORKER) a record whose host has had no live worker past the deadline.
    The reconciler's alone: a read of the record never calls it."""
    waiting = no_worker(record, last_seen, settings)
    if waiting is None or waiting.fails_at is None or now() < waiting.fails_at:
        return False
    error = NoWorker(
        f"no live worker served host {record.host} for {settings.no_worker_deadline:.0f}s "
        f"(waiting since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(waiting.since))} UTC)",
        host=record.host,
        reservation_id=record.reservation_id,
    )
    # Only the generation we looked at: a worker that claimed it meanwhile wins.
    generation = records.redispatch(record.reservation_id, record.generation, "no live worker")
    if generation is None:
        return False
    fence = RecordFence(record.reservation_id, record.host, record.computer, generation, "")
    try:  # as nobody: refused if a worker claimed the new generation meanwhile
        FencedRecord(records.redis, fence).finish(
            State.FAILED, step=record.current_step or record.next_step(), error=error.to_dict()
        )
    except Cancelled:
        return False
    log.error("reservation_abandoned", reservation_id=record.reservation_id, code=error.code)
    return True


# -- 3: reconcile ------------------------------------------------------------------------


def task_id(reservation_id: int, generation: int) -> str:
    """The broker message of one generation of a reservation's operation."""
    return f"vclvirt-{reservation_id}-{generation}"


def queue_keys(host: str) -> list[str]:
    """The Redis lists of the host's queue: kombu keeps one per priority step, named by
    its Redis channel's separator and steps (read from kombu, not copied)."""
    queue = host_queue(host)
    return [f"{queue}{Channel.sep}{step}" if step else queue for step in Channel.priority_steps]


def queued_task_ids(client: redis.Redis, host: str) -> set[str]:
    """Ids of the messages waiting in the host's queue."""
    found = set()
    for key in queue_keys(host):
        for raw in client.lrange(key, 0, -1):
            try:
                found.add(str(json.loads(raw)["headers"]["id"]))
            except (ValueError, KeyError, TypeError):
                continue
    return found


class Reconciler:
    """One worker's recovery loop for the hosts it serves."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        hosts: list[str],
        me: Holder,
        publish: Publish,
        *,
        stores: Stores | None = None,
    ) -> None:
        self.redis, self.settings, self.hosts, self.me = client, settings, hosts, me
        self.publish = publish
        stores = stores or Stores.on(client, settings)
        self.records, self.leases, self.registry = stores.records, stores.leases, stores.registry
        # -inf: the first cycle beats and may scan whatever the monotonic clock reads (it
        # starts near 0 at boot, so 0.0 here would skip them on a freshly booted host).
        self._last_beat = -math.inf
        self._last_scan: dict[str, float] = {}

    def run(self, stop: threading.Event) -> None:
        """Cycle until `stop` is set; a failing cycle (broker away) is retried next time."""
        while not stop.is_set():
            try:
                self.cycle()
            except redis.RedisError as error:
                log.warning("reconcile_failed", error=str(error))
            stop.wait(self.settings.reconcile_interval)

    def cycle(self) -> None:
        if time.monotonic() - self._last_beat >= self.settings.heartbeat_interval:
            self.registry.beat(self.me.node, self.hosts)
            self._last_beat = time.monotonic()
        for host in self.hosts:
            self.dispatch_due(host)
            self.recover(host)
        self.fail_abandoned()

    def leave(self) -> None:
        """A clean shutdown: the hosts stop counting this worker as alive."""
        self.registry.leave(self.me.node, self.hosts)

    def dispatch_due(self, host: str) -> None:
        """Retries and waits whose time has come."""
        for member in self.redis.zrangebyscore(keys.due(host), 0, time.time()):
            if not self.redis.zrem(keys.due(host), member):  # type: ignore[arg-type]
                continue  # another worker of the host took it
            (seen,) = self.records.glance([int(member)])  # type: ignore[arg-type]
            if seen.state in (State.RETRYING, State.WAITING):
                self._again(seen, "due")

    def recover(self, host: str) -> None:
        """Dispatch again what has no live work behind it."""
        queued: set[str] | None = None
        for seen in self.records.glance(self.records.in_flight(host)):
            if seen.state is None or State.is_ended(seen.state):
                self.records.forget_in_flight(host, seen.reservation_id)
            elif seen.state == State.RUNNING:
                if seen.lease is None:
                    self._again(seen, f"lease expired (worker {seen.lease_holder} lost)")
                elif holder_is_dead(seen.lease, self.me):
                    self._again(seen, f"worker process {seen.lease} is gone", seen.lease)
            elif seen.state == State.QUEUED and self._scan_due(host, seen):
                if queued is None:
                    queued = queued_task_ids(self.redis, host)
                    self._last_scan[host] = time.monotonic()
                if task_id(seen.reservation_id, seen.generation) not in queued:
                    self._again(seen, "message lost by the broker")

    def _scan_due(self, host: str, seen: Glance) -> bool:
        """A queued record is looked for in the broker once it has waited past the grace,
        at most once per grace period per host (a long backlog is not rescanned per cycle)."""
        grace = self.settings.lost_message_grace
        if now() - seen.dispatched_at < grace:
            return False
        return time.monotonic() - self._last_scan.get(host, -math.inf) >= grace

    def _again(self, seen: Glance, reason: str, dead_holder: str = "") -> None:
        rid = seen.reservation_id
        generation = self.records.redispatch(rid, seen.generation, reason, dead_holder)
        if generation is None:
            return
        record = self.records.get(rid)
        if record is None:
            return
        self.publish(record, generation, True)
        log.info(
            "reservation_redispatched",
            reservation_id=rid,
            host=record.host,
            generation=generation,
            reason=reason,
        )

    def fail_abandoned(self) -> None:
        """Hosts without a live worker: their reservations fail at the deadline. One worker
        does it per cycle (any worker, whichever host it serves)."""
        lock = ResourceLock(
            self.redis, "reconcile:abandoned", str(self.me), ttl=self.settings.reconcile_interval
        )
        if not lock.acquire(wait=0):
            return
        for host in self.records.hosts_in_flight():
            if self.registry.live(host):
                continue
            last_seen = self.registry.last_seen(host)
            for rid in self.records.in_flight(host):
                record = self.records.get(rid)
                if record is None or record.finished:
                    self.records.forget_in_flight(host, rid)
                else:
                    fail_if_abandoned(self.records, last_seen, self.settings, record)
