"""A worker's life around its tasks.

Start: the main process runs the recovery loop for the worker's hosts (its first cycle
resumes what they had in flight), and each pool process opens its hosts' SSH and libvirt
connections before the first load needs them. Shutdown: the worker stops counting as
alive at once, so its hosts' reservations show "waiting" instead of trusting it.
Fork: what the main process holds is frozen first, so pool processes keep sharing it.
"""

from __future__ import annotations

import gc
import threading
from typing import TYPE_CHECKING, Any

import structlog
from celery import signals

from vclvirt.recovery import Reconciler

if TYPE_CHECKING:
    from vclvirt.composition import Root

log = structlog.get_logger(__name__)


class WorkerLife:
    """The recovery loop and the warm-up of one worker (its root)."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self.stop = threading.Event()
        self.reconciler: Reconciler | None = None

    def started(self, **_: Any) -> None:
        root = self.root
        hosts = sorted(root.identity.hosts)
        if not hosts:
            return
        self.reconciler = Reconciler(
            root.redis,
            root.settings,
            hosts,
            root.identity.holder(),
            root.publisher.publish_record,
            stores=root.stores,
        )
        threading.Thread(
            target=self.reconciler.run, args=(self.stop,), name="reconciler", daemon=True
        ).start()
        log.info("recovery_started", hosts=hosts, node=root.identity.node)

    def shutting_down(self, **_: Any) -> None:
        self.stop.set()
        if self.reconciler is not None:
            try:
                self.reconciler.leave()
            except Exception as error:  # the heartbeat expires by itself
                log.warning("leave_failed", error=str(error))

    def pool_process_started(self, **_: Any) -> None:
        """A worker of one host: open this pool process's connections in the background
        (off the first load's path); a failure here is reported by the first step that
        needs the host. A worker of several hosts connects when a step needs a host: its
        pool processes times its hosts would be that many SSH logins at every start."""
        root = self.root
        if len(root.identity.hosts) != 1:
            return

        def warm() -> None:
            for name in sorted(root.identity.hosts):
                try:
                    access = root.host(name).access
                    access.conn  # noqa: B018 - opens the libvirt connection
                    access.node.run(["true"], timeout=30)
                except Exception as error:
                    log.info("warm_up_failed", host=name, error=str(error))

        threading.Thread(target=warm, name="warm-up", daemon=True).start()


def freeze_before_fork(**_: Any) -> None:
    """Just before the pool forks a process: collect, then move every object the main
    process has to the collector's permanent generation. A pool process's collector then
    never walks them, so it never writes (and copies) the pages it inherited: about
    24 MB less per pool process (bench/footprint.py). What is frozen is never collected
    in the main process: only what was live at a fork, where cycles are rare."""
    gc.collect()
    gc.freeze()


def connect_worker_signals(root: Root) -> None:
    """Celery's signals are process-wide: connected once, for the process's root."""
    life = WorkerLife(root)
    signals.worker_ready.connect(life.started, weak=False, dispatch_uid="vclvirt.started")
    signals.worker_shutting_down.connect(
        life.shutting_down, weak=False, dispatch_uid="vclvirt.shutting_down"
    )
    signals.worker_before_create_process.connect(
        freeze_before_fork, weak=False, dispatch_uid="vclvirt.freeze_before_fork"
    )
    signals.worker_process_init.connect(
        life.pool_process_started, weak=False, dispatch_uid="vclvirt.pool_process"
    )
