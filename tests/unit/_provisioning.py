"""A host for the provisioning unit tests: libvirt's test driver (a private node per test),
the local transport and real qemu-img on files in the test's tmp dir, guest host keys
in an in-memory store (vclvirt.testing). With the test
driver the host's files are reached by commands (images.files.CommandFiles)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import Settings
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.hypervisor.drivers.kvm import KvmDriver
from vclvirt.models import Reservation, parse_reservation
from vclvirt.node.local import LocalTransport
from vclvirt.provisioning.access import HostAccess
from vclvirt.testing import memory_redis


@dataclass
class UnitHost:
    context: HostAccess
    conn: libvirt.virConnect
    root: Path

    @property
    def datastore(self) -> Path:
        return self.root / "images"

    @property
    def vms(self) -> Path:
        return self.root / "vms"

    @property
    def xml(self) -> Path:
        return self.root / "xml"

    def master(self, name: str, size: str = "16M") -> Path:
        path = self.datastore / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
        return path

    def domain_xml(
        self, name: str, disks: list[str], macs: tuple[str, ...] = (), disk_format: str = "qcow2"
    ) -> str:
        """A domain on the test driver; its disks are opened as `disk_format` (libvirt's
        QEMU driver writes the format into every disk's XML, the test driver does not)."""
        devices = "".join(
            f"<disk type='file' device='disk'><driver name='qemu' type='{disk_format}'/>"
            f"<source file='{d}'/><target dev='vd{chr(97 + i)}'/></disk>"
            for i, d in enumerate(disks)
        ) + "".join(f"<interface type='user'><mac address='{m}'/></interface>" for m in macs)
        return (
            f"<domain type='test'><name>{name}</name><memory>524288</memory><vcpu>1</vcpu>"
            f"<os><type>hvm</type></os><devices>{devices}</devices></domain>"
        )


def make_host(tmp_path: Path) -> UnitHost:
    """A fresh test-driver node with datastore, vm and xml directories under tmp_path."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    for sub in ("images", "vms", "xml", "repository"):
        (tmp_path / sub).mkdir(exist_ok=True)
    node_file = tmp_path / "node.xml"
    node_file.write_text("<node/>")
    uri = f"test://{node_file}"
    host = HostConfig(
        name="unit-host",
        address="127.0.0.1",
        transport="local",
        libvirt_uri=uri,
        domain_type="test",
        datastore_path=str(tmp_path / "images"),
        vm_path=str(tmp_path / "vms"),
        xml_dir=str(tmp_path / "xml"),
        repository_path=str(tmp_path / "repository"),
    )
    conn = libvirt.open(uri)
    node = LocalTransport(host.name)
    context = HostAccess(
        host=host,
        node=node,
        driver=KvmDriver(host, node),
        connect=lambda: conn,
        settings=Settings(power_off_timeout=5),
        management_node="unit-tests",
        guest_host_keys=GuestHostKeys(memory_redis()),
    )
    return UnitHost(context, conn, tmp_path)


def reservation(
    computer: str = "unit-vm1",
    image: str = "linux-Unit-11-v0",
    *,
    computer_id: int = 31,
    image_id: int = 11,
    os_type: str = "none",
    **top: Any,
) -> Reservation:
    return parse_reservation(
        {
            "reservation_id": 1000 + computer_id,
            "request_id": 2000 + computer_id,
            "state": "new",
            "host": "unit-host",
            "computer": {
                "id": computer_id,
                "hostname": f"{computer}.lab.test",
                "eth0_mac": f"52:54:00:cc:00:{computer_id:02x}",
                "eth1_mac": f"52:54:00:dd:00:{computer_id:02x}",
            },
            "image": {
                "id": image_id,
                "name": image,
                "revision": 0,
                "revision_id": image_id * 100,
                "pretty_name": "Unit image",
                "os_type": os_type,
                "os_name": "linux",
                "min_ram_mb": 64,
                "vcpus": 1,
            },
            **top,
        }
    )
