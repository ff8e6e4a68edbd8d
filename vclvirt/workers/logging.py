"""structlog everywhere: one JSON event per line, task context bound on every line.

Celery's own records, paramiko's and ours all go through the same formatter.
`task_prerun` binds task id, step, reservation, request, host and computer, so
every line a step logs (including on a retry) carries them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from celery import signals

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(*, json: bool = True, level: str = "INFO") -> None:
    """Route structlog and stdlib logging to stdout through one renderer."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.dict_tracebacks if json else structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # Python warnings become JSON lines too


def _celery_setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Connected, so Celery leaves logging to us."""
    configure_logging(json=True, level=loglevel if isinstance(loglevel, str) else "INFO")


def _bind_task_context(task_id: str = "", task: Any = None, kwargs: Any = None, **_: Any) -> None:
    """A task's message names its reservation (id, request, host, computer): bind them."""
    structlog.contextvars.clear_contextvars()
    context: dict[str, Any] = {"task_id": task_id}
    if task is not None:
        context["operation"] = task.name.rsplit(".", 1)[-1]
    given = kwargs if isinstance(kwargs, dict) else {}
    context.update(
        {k: given[k] for k in ("reservation_id", "request_id", "host", "computer") if k in given}
    )
    structlog.contextvars.bind_contextvars(**context)


def _clear_task_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


def connect_celery_signals() -> None:
    """Let Celery's signals configure logging and bind task context (idempotent)."""
    signals.setup_logging.connect(_celery_setup_logging, weak=False)
    signals.task_prerun.connect(_bind_task_context, weak=False)
    signals.task_postrun.connect(_clear_task_context, weak=False)


connect_celery_signals()
