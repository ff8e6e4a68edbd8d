"""A hook for the fault suite (tests/e2e/test_recovery.py): hold a step open so that a
test can kill the worker, restart the broker or stop a host while that step runs.

Inert unless the worker's environment names a directory in VCLVIRT_TEST_HOLD_DIR; then
step S of reservation R waits while the file `<dir>/<R>.<S>` exists.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from vclvirt import cancellation

HOLD_DIR_ENV = "VCLVIRT_TEST_HOLD_DIR"


def hold(reservation_id: int, step: str) -> None:
    directory = os.environ.get(HOLD_DIR_ENV)
    if not directory:
        return
    marker = Path(directory) / f"{reservation_id}.{step}"
    while marker.exists():
        cancellation.check()
        time.sleep(0.1)
