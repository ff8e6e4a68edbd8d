"""Per-process objects a worker reuses across tasks: the Redis client, the runner, the
provisioners (with their SSH and libvirt connections).

Created lazily, after the pool forks, so no connection is shared between processes
(a forked child must not reuse its parent's sockets).
"""

from __future__ import annotations

import os
from functools import lru_cache

import redis

from vclvirt.config.inventory import get_inventory
from vclvirt.config.settings import get_settings
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.node.local import LocalTransport
from vclvirt.node.ssh import ssh_transport
from vclvirt.node.transport import Transport
from vclvirt.provisioning.host import Host, build_host
from vclvirt.runner import Runner
from vclvirt.state.client import redis_client

WORKER_HOST_ENV = "VCLVIRT_WORKER_HOST"


def worker_hosts() -> set[str] | None:
    """The hosts this worker serves (set by `vclvirt worker --host`), None if unrestricted."""
    value = os.environ.get(WORKER_HOST_ENV)
    return set(value.split(",")) if value else None


@lru_cache(maxsize=4)
def _client(pid: int) -> redis.Redis:
    return redis_client(get_settings().broker_url)


def client() -> redis.Redis:
    """This process's Redis client for records, leases and locks."""
    return _client(os.getpid())


@lru_cache(maxsize=4)
def _runner(pid: int) -> Runner:
    return Runner(client(), get_settings(), host)


def runner() -> Runner:
    return _runner(os.getpid())


@lru_cache(maxsize=64)
def _host(pid: int, host_name: str) -> Host:
    settings = get_settings()
    host = get_inventory().host(host_name)
    node: Transport = (
        LocalTransport(host.name, command_timeout=settings.command_timeout, fenced=True)
        if host.transport == "local"
        else ssh_transport(
            host,
            connect_timeout=settings.ssh_connect_timeout,
            command_timeout=settings.command_timeout,
        )
    )
    return build_host(host, node, settings, GuestHostKeys(client()))


def host(host_name: str) -> Host:
    """This process's Host for `host_name`, with its SSH and libvirt connections."""
    return _host(os.getpid(), host_name)
