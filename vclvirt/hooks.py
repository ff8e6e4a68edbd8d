"""What happens around each step besides the step itself, as hooks the runner calls:
its log lines and its metrics. The composition root installs them; an extension (the
fault suite's step hold, say) adds its own with `composition.add_hook`, so no test seam
sits in the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from vclvirt.errors import VclvirtError
from vclvirt.metrics import MASTER_BYTES, MASTER_COPIES, STEP_DURATION, STEP_FAILURES

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class StepEvent:
    """One step of one run: the context variables (reservation, host, step, task) are
    bound already, so log lines carry them."""

    reservation_id: int
    host: str
    step: str
    attempt: int


class RunHooks(Protocol):
    def step_started(self, event: StepEvent) -> None: ...
    def step_succeeded(self, event: StepEvent, seconds: float, result: dict[str, Any]) -> None: ...
    def step_retrying(self, event: StepEvent, error: VclvirtError, delay: float) -> None: ...
    def step_failed(self, event: StepEvent, error: VclvirtError, state: str) -> None: ...


class LogHooks:
    """One structured line per step event."""

    def step_started(self, event: StepEvent) -> None:
        log.info("step_started", attempt=event.attempt)

    def step_succeeded(self, event: StepEvent, seconds: float, result: dict[str, Any]) -> None:
        log.info("step_succeeded", attempt=event.attempt, seconds=round(seconds, 3))

    def step_retrying(self, event: StepEvent, error: VclvirtError, delay: float) -> None:
        log.warning(
            "step_retrying",
            error=str(error),
            code=error.code,
            attempt=event.attempt,
            retry_in_s=round(delay, 1),
        )

    def step_failed(self, event: StepEvent, error: VclvirtError, state: str) -> None:
        log.error("step_failed", error=str(error), code=error.code, state=state)


class MetricsHooks:
    """Step durations and failures, for Prometheus."""

    def step_started(self, event: StepEvent) -> None:
        pass

    def step_succeeded(self, event: StepEvent, seconds: float, result: dict[str, Any]) -> None:
        STEP_DURATION.labels(step=event.step, host=event.host).observe(seconds)
        if result.get("master_copied"):  # pre_define brought the master to the host
            MASTER_COPIES.labels(host=event.host).inc()
            MASTER_BYTES.labels(host=event.host).inc(int(result.get("master_bytes", 0)))

    def step_retrying(self, event: StepEvent, error: VclvirtError, delay: float) -> None:
        pass

    def step_failed(self, event: StepEvent, error: VclvirtError, state: str) -> None:
        STEP_FAILURES.labels(step=event.step, host=event.host, code=error.code).inc()


class Hooks:
    """Several hooks called in order, as one."""

    def __init__(self, hooks: list[RunHooks]) -> None:
        self.hooks = list(hooks)

    def step_started(self, event: StepEvent) -> None:
        for hook in self.hooks:
            hook.step_started(event)

    def step_succeeded(self, event: StepEvent, seconds: float, result: dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.step_succeeded(event, seconds, result)

    def step_retrying(self, event: StepEvent, error: VclvirtError, delay: float) -> None:
        for hook in self.hooks:
            hook.step_retrying(event, error, delay)

    def step_failed(self, event: StepEvent, error: VclvirtError, state: str) -> None:
        for hook in self.hooks:
            hook.step_failed(event, error, state)
