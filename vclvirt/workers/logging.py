"""structlog everywhere: one JSON event per line, task context bound on every line.

Celery's own records, paramiko's and ours all go through the same formatter.
`task_prerun` binds task id, step, reservation, request, host and computer, so
every line a step logs (including on a retry) carries them. No line carries a
secret: tracebacks are rendered without frame locals, and every known secret
(API token, broker and Flower passwords) is replaced by *** in the final text.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

import structlog
import structlog.tracebacks
from celery import signals
from pydantic import ValidationError

from vclvirt.config.secrets import MASK, known_secrets
from vclvirt.config.settings import Settings, get_settings

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


_secrets: set[str] = set()


def register_secrets(*values: str | None) -> None:
    """Values no log line may show (a process learns some only after logging is set up)."""
    _secrets.update(v for v in values if v and len(v) >= 4)


class RedactingRenderer:
    """Renders with the given renderer, then replaces every registered secret by ***.

    Last in the chain, so it sees the final text of every line: our events, Celery's,
    uvicorn's and any library's, exception text included.
    """

    def __init__(self, renderer: Any) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, method: str, event_dict: Any) -> str:
        line = str(self._renderer(logger, method, event_dict))
        for secret in sorted(_secrets, key=len, reverse=True):
            line = line.replace(secret, MASK)
        return line


# Tracebacks as data, without frame locals: locals hold request headers (the API
# token), settings (the broker URL) and whatever else a frame had at hand.
_exceptions_without_locals = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def configure_logging(
    *, json: bool = True, level: str = "INFO", stream: IO[str] | None = None
) -> None:
    """Route structlog and stdlib logging to one stream (stdout) through one renderer."""
    try:
        register_secrets(*known_secrets(get_settings()))
    except ValidationError:  # invalid settings are reported elsewhere; still hide secrets
        fallback = Settings.model_construct(
            api_token=os.environ.get("VCLVIRT_API_TOKEN"),
            broker_url=os.environ.get("VCLVIRT_BROKER_URL", ""),
            result_backend=os.environ.get("VCLVIRT_RESULT_BACKEND"),
        )
        register_secrets(*known_secrets(fallback))
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
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
            _exceptions_without_locals if json else structlog.processors.format_exc_info,
            RedactingRenderer(renderer),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
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
    signals.setup_logging.connect(_celery_setup_logging, weak=False, dispatch_uid="vclvirt.log")
    signals.task_prerun.connect(_bind_task_context, weak=False, dispatch_uid="vclvirt.bind")
    signals.task_postrun.connect(_clear_task_context, weak=False, dispatch_uid="vclvirt.clear")
