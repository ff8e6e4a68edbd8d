"""The Celery application and its configuration (acks late, prefetch one), built by
`create_app` for one composition root: its operation tasks registered, its signals
(logging, the worker's life) connected."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery

from vclvirt.state.client import CONNECT_TIMEOUT, SOCKET_TIMEOUT
from vclvirt.tasks import control, operations, stage
from vclvirt.workers import lifecycle
from vclvirt.workers import logging as log_signals
from vclvirt.workers.routing import CONTROL_QUEUE

if TYPE_CHECKING:
    from vclvirt.composition import Root


def create_app(root: Root) -> Celery:
    """A Celery app for long, idempotent operations whose truth is the status record."""
    settings = root.settings
    app = Celery("vclvirt")
    transport_options = {
        # Correctness never depends on this (a duplicate message is dropped when it claims
        # the record); it only keeps Redis from handing out a running operation again.
        "visibility_timeout": settings.visibility_timeout,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
    }
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend or settings.broker_url,
        broker_transport_options=transport_options,
        result_backend_transport_options=transport_options,
        redis_socket_timeout=SOCKET_TIMEOUT,
        redis_socket_connect_timeout=CONNECT_TIMEOUT,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a broker restart is waited out, never fatal
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # A killed pool process's message is delivered again at once; the lease makes the
        # second delivery take over (or drop) instead of running twice.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A lost broker connection must not kill running operations: their leases keep
        # them exclusive, and they finish while the connection comes back.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_time_limit=settings.operation_time_limit,
        task_soft_time_limit=settings.operation_time_limit - 60,
        # The status record is the truth; Celery's results would be a second write per task.
        task_ignore_result=True,
        task_track_started=True,
        worker_send_task_events=True,
        # No task-sent event: it was a second publish per enqueue (a quarter of an
        # enqueue's time). Flower shows a task once a worker receives it; what waits is in
        # Flower's Broker page (queue lengths) and in the status record.
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_max_tasks_per_child=settings.max_tasks_per_child or None,
        # Operations are always routed explicitly; what is not (run_reservation sent
        # from Flower) goes to the control queue every worker also consumes.
        task_default_queue=CONTROL_QUEUE,
        timezone="UTC",
        enable_utc=True,
    )
    operations.register(app, root)
    control.register(app, root)
    stage.register(app, root)
    log_signals.connect_celery_signals()
    lifecycle.connect_worker_signals(root)
    return app
