"""The fleet test bed (scripts/fleet): hosts that are machines of their own, reached only
through their addresses. Started here when it is not up; nothing skips."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

FLEET_SIZE = "4"  # a fleet already up (e.g. `make fleet`) is used as it is


@pytest.fixture(scope="session")
def fleet(testbed: Path) -> Any:
    """The fleet's inventory (fleet-1..N and the library server), up."""
    script = str(ROOT / "scripts" / "testbed")
    if subprocess.run([script, "fleet", "status"], capture_output=True, check=False).returncode:
        proc = subprocess.run(
            [script, "fleet", "up", FLEET_SIZE], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            pytest.fail(f"fleet did not come up:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    from vclvirt.config.inventory import load_inventory

    return load_inventory(testbed / "fleet" / "inventory.toml")


@pytest.fixture
def fleet_env(fleet: Any, testbed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """This process (dispatch) and the workers it starts read the fleet's inventory."""
    from vclvirt.config.settings import get_settings

    monkeypatch.setenv("VCLVIRT_INVENTORY", str(testbed / "fleet" / "inventory.toml"))
    get_settings.cache_clear()
    yield fleet
    get_settings.cache_clear()


def fleet_ssh(host: Any, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A command on a fleet machine, over SSH to its address (argv quoted by the remote
    shell: callers pass constants and names they made)."""
    import shlex

    return subprocess.run(
        [
            "ssh",
            "-i",
            str(host.key_file),
            "-o",
            f"UserKnownHostsFile={host.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            f"root@{host.address}",
            shlex.join(argv),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )


def fleet_link(machine: str, *change: str) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "testbed"), "fleet", "link", machine, *change],
        check=True,
        capture_output=True,
    )


def need_hosts(fleet: Any, count: int) -> Any:
    """The fleet, failing (never skipping) when it has fewer hosts than the test needs."""
    if len(fleet.hosts) < count:
        pytest.fail(
            f"this test needs {count} fleet hosts; the fleet up has {len(fleet.hosts)} "
            f"(scripts/testbed fleet down, then fleet up {count})",
            pytrace=False,
        )
    return fleet
