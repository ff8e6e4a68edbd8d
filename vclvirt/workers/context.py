"""Per-process objects a worker reuses across tasks: status store, provisioners.

Created lazily, after the pool forks, so no SSH or libvirt connection is shared
between processes (celery-practice.md §1.8).
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
from vclvirt.status import StatusStore

WORKER_HOST_ENV = "VCLVIRT_WORKER_HOST"


def worker_hosts() -> set[str] | None:
    """The hosts this worker serves (set by `vclvirt worker --host`), None if unrestricted."""
    value = os.environ.get(WORKER_HOST_ENV)
    return set(value.split(",")) if value else None


@lru_cache(maxsize=4)
def _status_store(pid: int) -> StatusStore:
    settings = get_settings()
    client = redis.Redis.from_url(settings.broker_url)
    return StatusStore(client, ttl_seconds=settings.status_ttl_days * 86400)


def status_store() -> StatusStore:
    return _status_store(os.getpid())


@lru_cache(maxsize=64)
def _provisioner(pid: int, host_name: str) -> Provisioner:
    settings = get_settings()
    host = get_inventory().host(host_name)
    node: Transport = (
        LocalTransport(host.name)
        if host.transport == "local"
        else ssh_transport(host, connect_timeout=settings.ssh_connect_timeout)
    )
    driver = load_driver(host, node)
    return Provisioner(host, node, driver, lambda: connect(host))


def provisioner_for(host_name: str) -> Provisioner:
    return _provisioner(os.getpid(), host_name)
