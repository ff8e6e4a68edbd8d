"""The one way vclvirt opens a Redis client: bounded waits, and retries that ride out a
Redis restart (connection refused, still loading its append-only file)."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
# 12 retries of up to 2 s: a restart of a few seconds is invisible to callers; a broker
# that stays away raises, and the caller treats that as transient.
RETRIES = 12


def redis_client(url: str) -> redis.Redis:
    """A client whose every call gives up after bounded time instead of hanging."""
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
