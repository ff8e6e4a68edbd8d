"""A worker's main process freezes what it holds just before its pool forks a process, so
the pool process's garbage collector never walks the inherited objects and never copies
their pages (about 24 MB per pool process, bench/footprint.py)."""

from __future__ import annotations

import gc

from celery import signals

from tests.unit._runs import HOST, SETTINGS
from vclvirt import composition
from vclvirt.identity import Identity
from vclvirt.workers import lifecycle


def frozen(obj: object) -> bool:
    """In the collector's permanent generation: tracked, but in no generation it walks."""
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


def test_the_main_process_freezes_its_objects_before_the_pool_forks() -> None:
    held = [object()]  # something the main process holds when the pool forks
    lifecycle.connect_worker_signals(composition.Root(SETTINGS, Identity.worker([HOST])))
    try:
        assert not frozen(held)
        signals.worker_before_create_process.send(sender=None)
        assert frozen(held)
        made_after = [object()]
        assert not frozen(made_after)  # only what existed at the fork
    finally:
        gc.unfreeze()
        for signal, uid in [
            (signals.worker_ready, "vclvirt.started"),
            (signals.worker_shutting_down, "vclvirt.shutting_down"),
            (signals.worker_before_create_process, "vclvirt.freeze_before_fork"),
            (signals.worker_process_init, "vclvirt.pool_process"),
        ]:
            signal.disconnect(dispatch_uid=uid)
