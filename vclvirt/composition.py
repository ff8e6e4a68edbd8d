"""The composition root: the one place a process's objects are built, from its settings
and its identity — the Redis client, the hosts (SSH, libvirt), the runner, the Celery app
and its publisher. Nothing else builds them (libvirt connections are still cached per
process by hypervisor.connection, which the hosts built here call).

Connections are per process: they are made on first use in each process, after the
worker's pool has forked, never shared across a fork. `install` makes a root the
process's own (`vclvirt worker` does, before Celery starts); `current` returns it, or a
client root built from the settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar, cast

import redis
from celery import Celery

from vclvirt.config.inventory import get_inventory
from vclvirt.config.settings import Settings, get_settings
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.hooks import Hooks, LogHooks, MetricsHooks, RunHooks
from vclvirt.identity import Identity
from vclvirt.node.local import LocalTransport
from vclvirt.node.ssh import ssh_transport
from vclvirt.node.transport import Transport
from vclvirt.provisioning.host import Host, build_host
from vclvirt.runner import Runner
from vclvirt.state.client import redis_client
from vclvirt.state.leases import WorkerRegistry
from vclvirt.state.records import RecordStore
from vclvirt.state.stores import Stores
from vclvirt.tasks.publish import Publisher
from vclvirt.workers.app import create_app

_extra_hooks: list[RunHooks] = []
T = TypeVar("T")


def add_hook(hook: RunHooks) -> None:
    """Install a step hook in every root built after this call (an extension's way in)."""
    _extra_hooks.append(hook)


class Root:
    """What one process uses, built on demand and kept for the process's life."""

    def __init__(
        self, settings: Settings, identity: Identity, *, client: redis.Redis | None = None
    ) -> None:
        """`client`: a Redis client to use instead of one opened from the settings (an
        in-memory one in the unit tier, a test's own database)."""
        self.settings, self.identity, self._client = settings, identity, client
        self.hooks = Hooks([LogHooks(), MetricsHooks(), *_extra_hooks])
        self._pid = os.getpid()
        self._made: dict[str, Any] = {}  # this process's connections and what uses them

    def _once(self, name: str, make: Callable[[], T]) -> T:
        """`make()` once per process: after a fork the child opens its own connections."""
        if self._pid != os.getpid():
            self._pid, self._made = os.getpid(), {}
        if name not in self._made:
            self._made[name] = make()
        return cast(T, self._made[name])

    @property
    def redis(self) -> redis.Redis:
        """Workers ride out a broker restart; clients (a person waiting) give up sooner."""
        if self._client is not None:
            return self._client
        patient = bool(self.identity.hosts)
        return self._once("redis", lambda: redis_client(self.settings.broker_url, patient=patient))

    @property
    def stores(self) -> Stores:
        return self._once("stores", lambda: Stores.on(self.redis, self.settings))

    @property
    def records(self) -> RecordStore:
        return self.stores.records

    @property
    def registry(self) -> WorkerRegistry:
        return self.stores.registry

    def host(self, name: str) -> Host:
        """The Host `name` of the inventory, reached over SSH (or locally), with its
        libvirt connection; UnknownHost before anything is contacted."""
        return self._once(f"host:{name}", lambda: self._build_host(name))

    def _build_host(self, name: str) -> Host:
        config, settings = get_inventory().host(name), self.settings
        node: Transport = (
            LocalTransport(config.name, command_timeout=settings.command_timeout, fenced=True)
            if config.transport == "local"
            else ssh_transport(
                config,
                connect_timeout=settings.ssh_connect_timeout,
                command_timeout=settings.command_timeout,
            )
        )
        return build_host(config, node, settings, GuestHostKeys(self.redis))

    @property
    def runner(self) -> Runner:
        return self._once(
            "runner",
            lambda: Runner(
                self.redis,
                self.settings,
                self.host,
                identity=self.identity,
                hooks=self.hooks,
                stores=self.stores,
            ),
        )

    @cached_property
    def app(self) -> Celery:
        """The Celery app (safe across fork: Celery reconnects in the child)."""
        return create_app(self)

    @cached_property
    def publisher(self) -> Publisher:
        return Publisher(self.app)


_root: Root | None = None


def install(root: Root) -> Root:
    """Make `root` this process's (and its forked children's) root."""
    global _root
    _root = root
    return root


def current() -> Root:
    """This process's root: the installed one, else a client's, from the settings."""
    global _root
    if _root is None:
        _root = Root(get_settings(), Identity.client())
    return _root
