"""A worker's life around its tasks.

Start: the main process runs the recovery loop for the worker's hosts (its first cycle
resumes what they had in flight), and each pool process opens its hosts' SSH and libvirt
connections before the first load needs them. Shutdown: the worker stops counting as
alive at once, so its hosts' reservations show "waiting" instead of trusting it.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from celery import signals

from vclvirt.config.settings import get_settings
from vclvirt.recovery import Reconciler, this_process
from vclvirt.state.client import redis_client

log = structlog.get_logger(__name__)

_stop = threading.Event()
_running: list[Reconciler] = []


def _start_recovery(**_: Any) -> None:
    from vclvirt.tasks.publish import publish_record
    from vclvirt.workers.context import worker_hosts

    hosts = worker_hosts()
    if not hosts:
        return
    settings = get_settings()
    reconciler = Reconciler(
        redis_client(settings.broker_url), settings, sorted(hosts), this_process(), publish_record
    )
    _running.append(reconciler)
    threading.Thread(target=reconciler.run, args=(_stop,), name="reconciler", daemon=True).start()
    log.info("recovery_started", hosts=sorted(hosts), node=reconciler.me.node)


def _stop_recovery(**_: Any) -> None:
    _stop.set()
    for reconciler in _running:
        try:
            reconciler.leave()
        except Exception as error:  # the heartbeat expires by itself
            log.warning("leave_failed", error=str(error))


def _warm_up(**_: Any) -> None:
    """Open this pool process's connections in the background (off the first load's path)."""
    from vclvirt.workers.context import host, worker_hosts

    def warm() -> None:
        for name in sorted(worker_hosts() or ()):
            try:
                access = host(name).access
                access.conn  # noqa: B018 - opens the libvirt connection
                access.node.run(["true"], timeout=30)
            except Exception as error:  # the first step reports it properly
                log.info("warm_up_failed", host=name, error=str(error))

    threading.Thread(target=warm, name="warm-up", daemon=True).start()


def connect_worker_signals() -> None:
    signals.worker_ready.connect(_start_recovery, weak=False)
    signals.worker_shutting_down.connect(_stop_recovery, weak=False)
    signals.worker_process_init.connect(_warm_up, weak=False)
