"""The stage task: a master copied onto the worker's host ahead of its loads (staging.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery

from vclvirt.images.copy import Progress
from vclvirt.staging import run_stage
from vclvirt.state.stages import StageStore

if TYPE_CHECKING:
    from vclvirt.composition import Root


def register(app: Celery, root: Root) -> None:
    @app.task(name="vclvirt.stage", acks_late=True)
    def stage(image: str, host: str, stage: str) -> dict[str, Any]:
        """Copy image's master onto host under the stage's id (a duplicate or replaced
        stage runs nothing)."""

        def copy(name: str, progress: Progress) -> dict[str, Any]:
            return root.host(host).images.stage(name, progress)

        return run_stage(StageStore(root.redis), image, host, stage, copy)
