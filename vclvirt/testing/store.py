"""The record store of the unit tier: an in-memory Redis running the real Lua scripts.

Records, leases, locks, slots and fenced writes are Lua scripts (state/*.py, locks.py),
so a hand-written fake store would test a copy of them. fakeredis runs the scripts
themselves in an embedded Lua 5.1 (lupa), with the calls they make: TIME, PEXPIRE,
HSETNX, ZADD, cjson, string.format and string.match.
"""

from __future__ import annotations

import fakeredis
import redis


def memory_redis() -> redis.Redis:
    """An empty Redis of its own, in this process. A client made from its connection
    pool (state.client.deadline_client) reaches the same data."""
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())
