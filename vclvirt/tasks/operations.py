"""One Celery task per operation (`vclvirt.load`, `vclvirt.capture`, `vclvirt.op.<name>`).

A message carries only the reservation id and the generation it was dispatched for (plus
host, computer and request id for log lines); the reservation itself is in its record.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task

from vclvirt.operations import Operation
from vclvirt.operations.registry import OPERATIONS
from vclvirt.state.machine import State
from vclvirt.workers.app import app
from vclvirt.workers.context import runner, worker_hosts

log = structlog.get_logger(__name__)


class OperationFailed(Exception):
    """The operation failed or was superseded (recorded already); Flower shows it as a
    failed task with the error's code, message and hint."""


def _register(op: Operation) -> Any:
    @app.task(
        name=op.task_name,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        throws=(OperationFailed,),  # an expected outcome: logged without a traceback
    )
    def run(self: Task, reservation_id: int, generation: int, host: str, **_: Any) -> Any:
        serving = worker_hosts()
        if serving is not None and host not in serving:
            # Recovery dispatches it again to the host's own queue.
            log.error("message_misrouted", host=host, serving=sorted(serving))
            return {"dropped": "misrouted"}
        outcome = runner().run(int(reservation_id), int(generation), task_id=self.request.id)
        if State.ended_badly(outcome.get("state")):
            raise OperationFailed(
                f"{outcome['state']} at {outcome['failed_step']}: {outcome['error']}"
            )
        return outcome

    run.__doc__ = f"Run the {op.name} of a reservation ({', '.join(op.steps)})."
    return run


TASKS = {name: _register(op) for name, op in OPERATIONS.items()}
