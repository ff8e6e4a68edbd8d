"""The one way vclvirt opens a Redis client: bounded waits, and retries that ride out a
Redis restart (connection refused, still loading its append-only file)."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
# Workers ride out a restart of the broker (12 retries of up to 2 s, ~17 s in all): a
# running load does not notice it. Entry points (API, CLI, Python API) answer within a
# second or two instead: a person or a scheduler is waiting, and can call again.
PATIENT_RETRIES, IMPATIENT_RETRIES = 12, 3


def redis_client(url: str, *, patient: bool = True) -> redis.Redis:
    """A client whose every call gives up after bounded time instead of hanging."""
    retries, cap = (PATIENT_RETRIES, 2.0) if patient else (IMPATIENT_RETRIES, 0.5)
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=cap, base=0.05), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def deadline_client(client: redis.Redis, timeout: float) -> redis.Redis:
    """A client to the same Redis whose every call fails within `timeout` seconds, never
    retried: what keeps a lease alive must know in time that it cannot (recovery.py)."""
    kwargs = dict(client.connection_pool.connection_kwargs)
    kwargs.update(
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
        health_check_interval=0,
    )
    pool = redis.ConnectionPool(connection_class=client.connection_pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
