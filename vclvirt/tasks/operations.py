"""One Celery task per operation, named `vclvirt.<operation>` (`vclvirt.load`, ...).

A message carries only the reservation id and the generation it was dispatched for (plus
host, computer and request id for log lines); the reservation itself is in its record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from celery import Celery, Task

from vclvirt.operation import Operation
from vclvirt.operations import OPERATIONS

if TYPE_CHECKING:
    from vclvirt.composition import Root

log = structlog.get_logger(__name__)


class OperationFailed(Exception):
    """The operation failed or was superseded (recorded already); Flower shows it as a
    failed task with the error's code, message and hint."""


def _register(app: Celery, root: Root, op: Operation) -> Any:
    @app.task(
        name=op.task_name,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        throws=(OperationFailed,),  # an expected outcome: logged without a traceback
    )
    def execute(self: Task, reservation_id: int, generation: int, host: str, **_: Any) -> Any:
        if not root.identity.serves(host):
            # Recovery dispatches it again to the host's own queue.
            log.error("message_misrouted", host=host, serving=sorted(root.identity.hosts))
            return {"dropped": "misrouted"}
        outcome = root.runner.run(int(reservation_id), int(generation), task_id=self.request.id)
        if outcome.get("state") in ("failed", "superseded"):
            raise OperationFailed(
                f"{outcome['state']} at {outcome['failed_step']}: {outcome['error']}"
            )
        return outcome

    execute.__doc__ = f"{op.summary} ({', '.join(op.step_names)})."
    return execute


def register(app: Celery, root: Root) -> None:
    """One task per declared operation, run by `root`'s runner."""
    for op in OPERATIONS.values():
        _register(app, root, op)
