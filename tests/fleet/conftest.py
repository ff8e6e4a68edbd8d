"""The fleet test bed (scripts/fleet): hosts that are machines of their own, reached only
through their addresses. Started here when it is not up; nothing skips."""

from __future__ import annotations

import contextlib
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


def fleet_guest_shell(reservation: dict[str, Any], *argv: str) -> str:
    """Run argv in the reservation's guest on a fleet host, as post_load does: through a
    relay on the host (the guest's port is forwarded to the host's own 127.0.0.1), and
    with the guest's pinned host key."""
    from vclvirt import composition
    from vclvirt.guest.access import connect_guest
    from vclvirt.models import parse_reservation

    access = composition.current().host(reservation["host"]).access
    guest = connect_guest(access.guest_target(parse_reservation(reservation)), timeout=60)
    try:
        return guest.run(list(argv)).text
    finally:
        guest.close()


def library_host(fleet: Any, testbed: Path) -> Any:
    """The library server, as a host entry with the fleet's key, known_hosts and its address."""
    env = (testbed / "fleet" / "env").read_text()
    (address,) = [
        line.split("=", 1)[1] for line in env.splitlines() if "VCLVIRT_FLEET_LIBRARY=" in line
    ]
    return fleet.host("fleet-1").model_copy(update={"address": address})


def library_image(fleet: Any, testbed: Path, name: str, data: str = "") -> None:
    """A qcow2 image in the library server's repository, made there over SSH."""
    library = library_host(fleet, testbed)
    directory = f"{fleet.host('fleet-1').repository_path}/{name}"
    path = f"{directory}/{name}.qcow2"
    fleet_ssh(library, "rm", "-rf", directory)
    fleet_ssh(library, "mkdir", "-p", directory)
    fleet_ssh(library, "qemu-img", "create", "-q", "-f", "qcow2", path, "128M")
    if data:
        fleet_ssh(library, "qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data}", path)


def remove_computers(host: Any, *computers: str) -> None:
    """The computers' domains on the host's own libvirtd, and their files on its disk
    (one libvirt connection and one command per host)."""
    import libvirt

    from vclvirt.naming import belongs_to_computer

    conn = libvirt.open(host.effective_libvirt_uri)
    try:
        for domain in conn.listAllDomains(0):
            if any(belongs_to_computer(domain.name(), c) for c in computers):
                with contextlib.suppress(libvirt.libvirtError):
                    if domain.isActive():
                        domain.destroy()
                    domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    finally:
        conn.close()
    names = [arg for c in computers for arg in ("-o", "-name", f"{c}_*")][1:]
    fleet_ssh(host, "find", host.vm_path, host.xml_dir, "(", *names, ")", "-delete")


def publish_guest(fleet: Any, testbed: Path, image: str) -> None:
    """The bootable test guest (scripts/build-test-guest) as `image` in the library
    server's repository, sent over the library's link; no fleet host keeps a copy."""
    from tests.conftest import GUEST_CACHE

    library = library_host(fleet, testbed)
    address = library.address
    directory = f"{fleet.host('fleet-1').repository_path}/{image}"
    fleet_ssh(library, "mkdir", "-p", directory)
    for suffix in ("qcow2", "xml"):
        subprocess.run(
            ["scp", "-q", "-i", str(library.key_file),
             "-o", f"UserKnownHostsFile={library.known_hosts}", "-o", "BatchMode=yes",
             str(GUEST_CACHE / f"vclvirt-test-guest.{suffix}"),
             f"root@{address}:{directory}/{image}.{suffix}"],
            check=True, timeout=120,
        )  # fmt: skip
    for host in fleet.hosts.values():
        fleet_ssh(host, "rm", "-f", f"{host.datastore_path}/{image}.qcow2")
        fleet_ssh(host, "rm", "-f", f"{host.datastore_path}/{image}.xml")
