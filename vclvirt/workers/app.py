"""The Celery application and its configuration (celery-practice.md §1)."""

from __future__ import annotations

from celery import Celery

from vclvirt.config.settings import Settings, get_settings
from vclvirt.workers import logging as _logging  # noqa: F401 - connects Celery's log signals
from vclvirt.workers.routing import CONTROL_QUEUE


def create_app(settings: Settings) -> Celery:
    """A Celery app whose every setting is chosen for idempotent, long, per-host steps."""
    app = Celery(
        "vclvirt",
        include=[
            "vclvirt.tasks.load",
            "vclvirt.tasks.operations",
            "vclvirt.tasks.capture",
            "vclvirt.tasks.control",
        ],
    )
    visibility = settings.effective_visibility_timeout
    transport_options = {
        "visibility_timeout": visibility,
        "unacked_restore_interval": settings.unacked_restore_interval,
        "unacked_restore_throttle": settings.unacked_restore_throttle,
    }
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend or settings.broker_url,
        broker_transport_options=transport_options,
        result_backend_transport_options={"visibility_timeout": visibility},
        visibility_timeout=visibility,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Steps are idempotent, so a step lost with its worker is delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_time_limit=settings.step_time_limit,
        task_soft_time_limit=max(1, settings.step_time_limit - 60),
        task_track_started=True,
        result_extended=True,
        result_expires=settings.status_ttl_days * 86400,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        worker_max_tasks_per_child=settings.max_tasks_per_child or None,
        # Host steps are always routed explicitly; what is not (run_reservation sent
        # from Flower) goes to the control queue every worker also consumes.
        task_default_queue=CONTROL_QUEUE,
        timezone="UTC",
        enable_utc=True,
    )
    return app


app = create_app(get_settings())
