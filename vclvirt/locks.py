"""Redis locks named after the resource they protect (`computer:<host>:<name>`).

A lock lives for a short TTL that a background thread keeps extending while its
holder runs, so the lock of a killed worker frees itself within a minute. The
same task id may take over its own lock: that is a redelivered step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from vclvirt.errors import ResourceBusy

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


@contextmanager
def resource_lock(
    client: redis.Redis, resource: str, owner: str, *, wait: float = 600.0, ttl: float = 60.0
) -> Iterator[None]:
    """Hold `vclvirt:lock:<resource>` for the block, or raise ResourceBusy after `wait`."""
    key = f"vclvirt:lock:{resource}"
    ttl_ms = int(ttl * 1000)
    deadline = time.monotonic() + wait
    while True:
        if client.set(key, owner, nx=True, px=ttl_ms):
            break
        raw = client.get(key)
        holder = raw.decode() if isinstance(raw, bytes) else raw
        if holder == owner:
            client.pexpire(key, ttl_ms)
            break
        if time.monotonic() >= deadline:
            raise ResourceBusy(f"{resource} is locked by {holder or '?'}")
        time.sleep(0.2)
    stop = threading.Event()

    def keep_alive() -> None:
        while not stop.wait(ttl / 3):
            client.eval(_EXTEND, 1, key, owner, ttl_ms)

    refresher = threading.Thread(target=keep_alive, name=f"lock:{resource}", daemon=True)
    refresher.start()
    try:
        yield
    finally:
        stop.set()
        refresher.join()
        client.eval(_RELEASE, 1, key, owner)
