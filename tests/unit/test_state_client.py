"""Every Redis client vclvirt opens gives up after bounded time and rides out a restart."""

from __future__ import annotations

from redis.exceptions import BusyLoadingError, ConnectionError

from vclvirt.state.client import CONNECT_TIMEOUT, SOCKET_TIMEOUT, redis_client


def test_the_client_has_socket_and_connect_timeouts_and_retries() -> None:
    """No call can hang for ever; a broker restarting (refusing, loading) is retried."""
    client = redis_client("redis://127.0.0.1:1/0")
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == SOCKET_TIMEOUT == 10
    assert kwargs["socket_connect_timeout"] == CONNECT_TIMEOUT == 5
    retry = kwargs["retry"]
    assert retry._retries >= 10
    assert issubclass(BusyLoadingError, ConnectionError)  # retried as a connection error
    assert ConnectionError in retry._supported_errors


def test_entry_points_give_up_sooner_than_workers() -> None:
    """A person or a scheduler waiting on the API or CLI is answered within seconds."""
    worker = redis_client("redis://127.0.0.1:1/0").connection_pool.connection_kwargs["retry"]
    entry = redis_client("redis://127.0.0.1:1/0", patient=False)
    retry = entry.connection_pool.connection_kwargs["retry"]
    assert retry._retries < worker._retries
