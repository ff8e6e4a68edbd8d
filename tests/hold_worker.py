"""`python -m tests.hold_worker DIR worker --host H ...`: a real vclvirt worker with the
fault suite's step hold installed as a step hook (the product has no such seam).

Step S of reservation R waits, before its body runs, while the file `DIR/R.S` exists:
a test can kill the worker, restart the broker or stop a host while that step is
"running". The wait still stops when the run is cancelled (lease lost, superseded).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from vclvirt import cancellation, composition
from vclvirt.cli import run
from vclvirt.errors import VclvirtError
from vclvirt.hooks import StepEvent


class StepHold:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def step_started(self, event: StepEvent) -> None:
        marker = self.directory / f"{event.reservation_id}.{event.step}"
        while marker.exists():
            cancellation.check()
            time.sleep(0.1)

    def step_succeeded(self, event: StepEvent, seconds: float, result: dict[str, Any]) -> None:
        pass

    def step_retrying(self, event: StepEvent, error: VclvirtError, delay: float) -> None:
        pass

    def step_failed(self, event: StepEvent, error: VclvirtError, state: str) -> None:
        pass


def main() -> None:
    directory, *argv = sys.argv[1:]
    composition.add_hook(StepHold(Path(directory)))
    sys.argv = ["vclvirt", *argv]
    run()


if __name__ == "__main__":
    main()
