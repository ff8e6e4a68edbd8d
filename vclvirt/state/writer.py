"""The only code that writes a reservation's record: one atomic Lua script per move.

Each script checks its move against the state machine (state/machine.py, rendered into
every script as `may`), so a move the table does not allow writes nothing. The callers
(records.py, leases.py, fence.py) build the fields and read the answers; none of them
writes the hash itself.
"""

from __future__ import annotations

from typing import Any

import redis

from vclvirt.state import keys
from vclvirt.state.machine import lua_prelude

# Begin a record in one round trip: -1 (writes nothing) while an operation of it is in
# flight; 0 if it changed since the caller read it (another generation: read again); else
# the record is written over the ended one (or none, generation 0) and 1 is returned.
# A load is a new guest: its pinned host key goes; any other operation keeps it.
BEGIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if not may('begin', state, S.QUEUED) then
  return -1
end
local current = redis.call('HGET', KEYS[1], 'generation') or '0'
if current ~= ARGV[5] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', S.QUEUED, unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], 0, ARGV[2] - ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[4])
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], ARGV[3], 'EX', ARGV[1]) end
if ARGV[6] == 'keep' then redis.call('EXPIRE', KEYS[6], ARGV[1]) else redis.call('DEL', KEYS[6]) end
return 1
"""

# A failed record runs again from a step: 0 if it changed since the caller read it, -1 if
# it is not failed (read again to say why); else its new generation.
RESTART = """
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[2] then return 0 end
if not may('restart', redis.call('HGET', KEYS[1], 'state'), S.QUEUED) then return -1 end
local forget = cjson.decode(ARGV[5])
if #forget > 0 then redis.call('HDEL', KEYS[1], unpack(forget)) end
local generation = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'state', S.QUEUED, 'history', ARGV[4], 'dispatched_at', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[7])
return generation
"""

# Dispatch the record again (a new generation) if it is still in flight at the expected
# generation and nobody holds its lease (or only the holder known to be dead).
REDISPATCH = """
if not may('redispatch', redis.call('HGET', KEYS[1], 'state'), S.QUEUED) then return 0 end
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[4] then return 0 end
if holder then redis.call('DEL', KEYS[2]) end
local generation = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'state', S.QUEUED, 'dispatched_at', ARGV[2],
           'requeued', ARGV[3], 'lease_holder', '', 'current_step', '')
redis.call('HDEL', KEYS[1], 'waiting')
return generation
"""

# Take the lease of a dispatched generation, atomically with the record's check.
CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, 'missing'} end
if not may('claim', state, S.RUNNING) then return {0, state} end
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then return {0, 'stale'} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] and holder ~= ARGV[5] then return {0, 'held', holder} end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[1], 'state', S.RUNNING, 'lease_holder', ARGV[2], 'claimed_at', ARGV[4])
redis.call('HDEL', KEYS[1], 'waiting')
return {1, 'ok'}
"""

# A running operation's write under its fencing token (state/fence.py): the record is at
# the token's generation, names its holder and has not ended, and the lease key holds it
# (the empty holder, recovery: nobody holds it). A write that changes the state names its
# move, which the table must allow. The guest's pinned host key lives beside the record
# and expires with it.
FENCED = """
local record = KEYS[1]
if redis.call('HGET', record, 'generation') ~= ARGV[1] then return 'generation' end
local state = redis.call('HGET', record, 'state')
if not in_flight(state) then return 'ended' end
if ARGV[2] ~= '' then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 'lease' end
  if redis.call('HGET', record, 'lease_holder') ~= ARGV[2] then return 'holder' end
elseif redis.call('EXISTS', KEYS[2]) == 1 then
  return 'lease'
end
local ops = cjson.decode(ARGV[3])
local hset = ops.hset or {}
if ops.move or hset.state then
  if not may(ops.move, state, hset.state) then return 'move' end
end
local flat = {}
for name, value in pairs(hset) do
  flat[#flat + 1] = name
  flat[#flat + 1] = value
end
if #flat > 0 then redis.call('HSET', record, unpack(flat)) end
if ops.hdel and #ops.hdel > 0 then redis.call('HDEL', record, unpack(ops.hdel)) end
if ops.leave_inflight then redis.call('SREM', KEYS[3], ARGV[4]) end
if ops.due then redis.call('ZADD', KEYS[4], ops.due, ARGV[4]) end
if ops.leave_due then redis.call('ZREM', KEYS[4], ARGV[4]) end
if ops.computer_image then redis.call('SET', KEYS[5], ops.computer_image) end
if ops.pin then
  local ttl = redis.call('PTTL', record)
  if ttl > 0 then
    redis.call('SET', KEYS[6], ops.pin, 'NX', 'PX', ttl)
  else
    redis.call('SET', KEYS[6], ops.pin, 'NX')
  end
end
if ops.unpin then redis.call('DEL', KEYS[6]) end
return 'ok'
"""

SCRIPTS = {"begin": BEGIN, "restart": RESTART, "redispatch": REDISPATCH}
SCRIPTS.update(claim=CLAIM, fenced=FENCED)


class RecordWriter:
    """Runs the record's writing scripts (each with the state machine's table)."""

    def __init__(self, client: redis.Redis) -> None:
        prelude = lua_prelude()
        self._scripts = {
            name: client.register_script(prelude + body) for name, body in SCRIPTS.items()
        }

    def _run(self, name: str, keys_: list[str], args: list[Any]) -> Any:
        return self._scripts[name](keys=keys_, args=args)

    def begin(
        self,
        reservation_id: int,
        host: str,
        *,
        ttl: int,
        stamp: float,
        expected: int,
        owner_key: str,
        keep_pin: bool,
        fields: dict[str, Any],
    ) -> int:
        """1 begun, 0 changed since read, -1 in flight (see BEGIN)."""
        flat = [item for pair in fields.items() for item in pair]
        answer = self._run(
            "begin",
            [
                keys.record(reservation_id),
                keys.INDEX,
                keys.inflight(host),
                keys.INFLIGHT_HOSTS,
                owner_key,
                keys.guest_host_key(reservation_id),
            ],
            [ttl, stamp, reservation_id, host, expected, "keep" if keep_pin else "drop", *flat],
        )
        return int(answer)

    def restart(
        self,
        reservation_id: int,
        host: str,
        *,
        ttl: int,
        expected: int,
        history: str,
        forget: str,
        stamp: float,
    ) -> int:
        """The new generation; 0 changed since read, -1 not failed (see RESTART)."""
        answer = self._run(
            "restart",
            [
                keys.record(reservation_id),
                keys.inflight(host),
                keys.INFLIGHT_HOSTS,
                keys.guest_host_key(reservation_id),
            ],
            [ttl, expected, reservation_id, history, forget, stamp, host],
        )
        return int(answer)

    def redispatch(
        self, reservation_id: int, generation: int, stamp: float, reason: str, dead_holder: str
    ) -> int:
        """The new generation, or 0 (see REDISPATCH)."""
        answer = self._run(
            "redispatch",
            [keys.record(reservation_id), keys.lease(reservation_id)],
            [generation, stamp, reason, dead_holder],
        )
        return int(answer)

    def claim(
        self,
        reservation_id: int,
        generation: int,
        holder: str,
        ttl_ms: int,
        stamp: float,
        *,
        take_over: str,
    ) -> list[Any]:
        """[taken, reason, current holder?] (see CLAIM)."""
        answer: list[Any] = self._run(
            "claim",
            [keys.record(reservation_id), keys.lease(reservation_id)],
            [generation, holder, ttl_ms, stamp, take_over],
        )
        return answer

    def fenced(
        self,
        reservation_id: int,
        host: str,
        computer: str,
        *,
        generation: int,
        holder: str,
        ops: str,
    ) -> str:
        """'ok', or why the write was refused (see FENCED)."""
        answer = self._run(
            "fenced",
            [
                keys.record(reservation_id),
                keys.lease(reservation_id),
                keys.inflight(host),
                keys.due(host),
                keys.computer_image(host, computer),
                keys.guest_host_key(reservation_id),
            ],
            [generation, holder, ops, reservation_id],
        )
        return answer.decode() if isinstance(answer, bytes) else str(answer)
