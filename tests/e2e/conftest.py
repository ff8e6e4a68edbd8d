"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def holds(tmp_path: Path) -> Iterator[tuple[dict[str, str], Any]]:
    """A hold directory for workers (their env) and a function that holds or releases
    step S of reservation R (`hold(R, S)` / `hold(R, S, False)`)."""
    directory = tmp_path / "holds"
    directory.mkdir()

    def hold(rid: int, step: str, on: bool = True) -> None:
        marker = directory / f"{rid}.{step}"
        if on:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    yield {"VCLVIRT_TEST_HOLD_DIR": str(directory)}, hold
    for marker in directory.iterdir():
        marker.unlink()
