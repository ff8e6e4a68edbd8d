"""Per-process objects a worker reuses across tasks: the Redis client, the runner, the
provisioners (with their SSH and libvirt connections).

Created lazily, after the pool forks, so no connection is shared between processes
(celery-practice.md §1.8).
"""

from __future__ import annotations

import os
from functools import lru_cache

import redis

from vclvirt.config.inventory import get_inventory
from vclvirt.config.settings import get_settings
from vclvirt.hypervisor.connection import connect
from vclvirt.hypervisor.drivers import load_driver
from vclvirt.node.local import LocalTransport
from vclvirt.node.ssh import ssh_transport
from vclvirt.node.transport import Transport
from vclvirt.provisioner import Provisioner
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
    return Runner(client(), get_settings(), provisioner_for)


def runner() -> Runner:
    return _runner(os.getpid())


@lru_cache(maxsize=64)
def _provisioner(pid: int, host_name: str) -> Provisioner:
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
    driver = load_driver(host, node, copy_timeout=settings.copy_timeout)
    return Provisioner(host, node, driver, lambda: connect(host, node))


def provisioner_for(host_name: str) -> Provisioner:
    return _provisioner(os.getpid(), host_name)
