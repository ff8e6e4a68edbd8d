"""Shared fixtures for unit tests: valid reservation documents with overrides, and a
worker's world of in-memory doubles (tests/unit/_runs.py). Nothing here, or in any unit
test, reaches a service: `make test-unit` runs this tier with the test bed's fixtures
(tests/conftest.py) left out."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from tests.unit._runs import ToyWorld, make_world
from vclvirt import hooks, recovery, runner
from vclvirt.models import Reservation, parse_reservation
from vclvirt.provisioning import cleanup, load

VALID_RESERVATION: dict[str, Any] = {
    "reservation_id": 200,
    "request_id": 100,
    "state": "new",
    "host": "kvmhost1",
    "computer": {
        "id": 22,
        "hostname": "vm4-22.example.org",
        "eth0_mac": "52:54:00:AA:00:01",
        "eth1_mac": "52:54:00:AA:00:02",
        "private_ip": "10.0.0.22",
    },
    "image": {
        "id": 3081,
        "name": "centos7-CentOS7Base64bitVM-3081-v5",
        "revision": 5,
        "revision_id": 9001,
        "pretty_name": "CentOS 7 Base (64 bit VM)",
        "os_type": "linux",
        "os_name": "centos7",
        "min_ram_mb": 2048,
        "vcpus": 1,
        "project": "vcl",
    },
}


def reservation_document(
    computer: dict[str, Any] | None = None, image: dict[str, Any] | None = None, **top: Any
) -> dict[str, Any]:
    """A valid reservation dict with the given fields replaced."""
    data = copy.deepcopy(VALID_RESERVATION)
    data["computer"].update(computer or {})
    data["image"].update(image or {})
    data.update(top)
    return data


@pytest.fixture
def document() -> Callable[..., dict[str, Any]]:
    """Factory for valid reservation dicts with overrides."""
    return reservation_document


@pytest.fixture
def reservation() -> Callable[..., Reservation]:
    """Factory for parsed reservations with overrides."""

    def build(
        computer: dict[str, Any] | None = None, image: dict[str, Any] | None = None, **top: Any
    ) -> Reservation:
        return parse_reservation(reservation_document(computer, image, **top))

    return build


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ToyWorld:
    """A worker's store, host and runner, all in memory (tests/unit/_runs.py)."""
    return make_world(tmp_path, monkeypatch)


# Modules whose log events the unit tests read (the `logged` fixture).
LOGGING_MODULES = (runner, recovery, hooks, cleanup, load)


@pytest.fixture
def logged(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[], AbstractContextManager[list[MutableMapping[str, Any]]]]:
    """`with logged() as logs:` collects the structlog events logged inside, as dicts. A
    CLI test before it may have configured structlog to cache each logger at first use,
    which capture_logs would not see: the modules' loggers are fresh ones for the test."""
    for module in LOGGING_MODULES:
        monkeypatch.setattr(module, "log", structlog.get_logger(module.__name__))
    return capture_logs


@pytest.fixture(autouse=True)
def _fresh_log_context() -> Iterator[None]:
    """Each test starts with no structlog context bound: a run binds its reservation,
    host and step, and only a worker's task hooks clear them (workers/logging.py), which
    the unit tier does not run; a test would read what an earlier test's run left."""
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
