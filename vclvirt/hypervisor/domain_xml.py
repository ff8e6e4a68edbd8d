"""The domain XML, built from typed objects (never by string formatting).

`plan_domain` turns a reservation plus facts about the host into a `DomainSpec`;
`render_domain_xml` serialises it deterministically. Both are pure. Elements follow VCL's
module; docs/departures.md lists where they differ and why.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from datetime import datetime

import defusedxml.ElementTree as SafeET

from vclvirt.config.inventory import HostConfig
from vclvirt.models import Reservation

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
MIN_MEMORY_MIB = 512
DEFAULT_DISK_BUS = "ide"
DEFAULT_NIC_MODEL = "rtl8139"


@dataclass(frozen=True)
class Topology:
    sockets: int
    cores: int
    threads: int = 1


@dataclass(frozen=True)
class Disk:
    path: str
    format: str
    bus: str
    cache: str | None = None


@dataclass(frozen=True)
class Nic:
    mac: str
    source_type: str  # "network" or "bridge"
    source: str
    model: str


@dataclass(frozen=True)
class HostFacts:
    """What the XML depends on that only the host knows."""

    domain_type: str
    networks: frozenset[str] = frozenset()
    vm_path_is_local: bool = True
    disk_bus: str = DEFAULT_DISK_BUS
    nic_model: str = DEFAULT_NIC_MODEL


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    domain_type: str
    description: str
    memory_mib: int
    vcpus: int
    topology: Topology
    cpu_mode: str | None
    clock_offset: str
    disk: Disk
    nics: tuple[Nic, ...]
    qemu_args: tuple[str, ...] = field(default=())
    # A pvpanic device: the guest kernel reports its panic to libvirt, which keeps the
    # crashed domain (on_crash preserve) instead of letting the guest spin or reboot.
    panic_device: bool = False

    def with_qemu_args(self, *args: str) -> DomainSpec:
        return replace(self, qemu_args=self.qemu_args + args)


def cpu_topology(vcpus: int) -> Topology:
    """Sockets x cores x threads that multiply to exactly `vcpus`.

    The reference gives 2 sockets x n//2 cores for n > 2, which libvirt rejects
    for odd n (the product must equal the vCPUs); odd counts here get one socket of n cores.
    """
    if vcpus < 1:
        raise ValueError("vcpus must be at least 1")
    if vcpus <= 2:
        return Topology(sockets=vcpus, cores=1)
    if vcpus % 2 == 0:
        return Topology(sockets=2, cores=vcpus // 2)
    return Topology(sockets=1, cores=vcpus)


def memory_mib(min_ram_mb: int) -> int:
    return max(MIN_MEMORY_MIB, min_ram_mb)


def _derived_mac(seed: str) -> str:
    """A stable locally administered MAC for extra project NICs (the reference's are random)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _nic(mac: str, switch: str, facts: HostFacts) -> Nic:
    kind = "network" if switch in facts.networks else "bridge"
    return Nic(mac=mac, source_type=kind, source=switch, model=facts.nic_model)


def plan_nics(
    reservation: Reservation,
    private_switch: str | None,
    public_switch: str | None,
    facts: HostFacts,
) -> tuple[Nic, ...]:
    """eth0 to the private switch, eth1 (or project networks) as VCL picks them, in a stable order.

    Only one network gets the eth1 MAC (never two NICs alike); extra NICs get distinct stable MACs.
    """
    computer, project = reservation.computer, reservation.image.project.lower()
    nics: list[Nic] = []
    if private_switch:
        nics.append(_nic(computer.eth0_mac, private_switch, facts))
    configured = {s.lower() for s in (private_switch, public_switch) if s}
    project_networks = sorted(
        n
        for n in facts.networks
        if n.lower() not in configured and (n.lower() in project or project in n.lower())
    )
    used_for_public = None
    if "vcl" not in project and project_networks:
        used_for_public = project_networks[0]
        nics.append(Nic(computer.eth1_mac, "network", used_for_public, facts.nic_model))
    elif public_switch:
        nics.append(_nic(computer.eth1_mac, public_switch, facts))
    if project != "vcl":
        for network in project_networks:
            if network != used_for_public:
                mac = _derived_mac(f"{computer.id}/{network}")
                nics.append(Nic(mac, "network", network, facts.nic_model))
    return tuple(nics)


def describe(reservation: Reservation, loaded_at: datetime, management_node: str) -> str:
    image = reservation.image
    return (
        f"image: {image.pretty_name}\n"
        f"revision: {image.name}\n"
        f"load time: {loaded_at:%Y-%m-%d %H:%M:%S}\n"
        f"management node: {management_node}\n"
        f"request ID: {reservation.request_id}\n"
        f"reservation ID: {reservation.reservation_id}\n"
    )


def with_user_network(spec: DomainSpec, reservation: Reservation, host: HostConfig) -> DomainSpec:
    """One QEMU user-mode NIC with the guest's port 22 forwarded to the host's loopback.

    libvirt 9.0 rejects the passt backend for <interface type='user'>, so the NIC
    is given on the QEMU command line, at a fixed PCI address clear of libvirt's.
    """
    port = host.forwarded_ssh_port(reservation.computer.id)
    return replace(spec, nics=()).with_qemu_args(
        "-netdev",
        f"user,id=vclnet0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        f"virtio-net-pci,netdev=vclnet0,mac={reservation.computer.eth0_mac},bus=pci.0,addr=0x10",
    )


def _target_dev(bus: str) -> str:
    return {"virtio": "vda", "sata": "sda", "scsi": "sda", "usb": "sda"}.get(bus, "hda")


def plan_domain(
    reservation: Reservation,
    *,
    name: str,
    uuid: str,
    overlay_path: str,
    private_switch: str | None,
    public_switch: str | None,
    facts: HostFacts,
    loaded_at: datetime,
    management_node: str,
) -> DomainSpec:
    """Everything the domain should be, decided from the reservation and the host's facts."""
    image = reservation.image
    return DomainSpec(
        name=name,
        uuid=uuid,
        domain_type=facts.domain_type,
        description=describe(reservation, loaded_at, management_node),
        memory_mib=memory_mib(image.min_ram_mb),
        vcpus=image.vcpus,
        topology=cpu_topology(image.vcpus),
        # host-model needs hardware virtualisation; under TCG libvirt's default model boots.
        cpu_mode="host-model" if facts.domain_type == "kvm" else None,
        clock_offset="localtime" if image.is_windows else "utc",
        disk=Disk(
            path=overlay_path,
            format="qcow2",
            bus=facts.disk_bus,
            # Shared vm_path (NFS...): no host page cache, so the disk stays consistent (VCL-1084).
            cache=None if facts.vm_path_is_local else "none",
        ),
        nics=plan_nics(reservation, private_switch, public_switch, facts),
        # Windows has no in-box pvpanic driver (the device would show as unknown).
        panic_device=not image.is_windows,
    )


def render_domain_xml(spec: DomainSpec) -> str:
    """Serialise the spec; the same spec always gives the same text."""
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.Element("domain", {"type": spec.domain_type})
    ET.SubElement(root, "name").text = spec.name
    ET.SubElement(root, "uuid").text = spec.uuid
    ET.SubElement(root, "description").text = spec.description
    ET.SubElement(root, "memory", {"unit": "KiB"}).text = str(spec.memory_mib * 1024)
    ET.SubElement(root, "vcpu").text = str(spec.vcpus)
    cpu = ET.SubElement(root, "cpu", {"mode": spec.cpu_mode} if spec.cpu_mode else {})
    if spec.cpu_mode == "host-model":
        ET.SubElement(cpu, "model", {"fallback": "allow"})
    t = spec.topology
    ET.SubElement(
        cpu,
        "topology",
        {"sockets": str(t.sockets), "cores": str(t.cores), "threads": str(t.threads)},
    )
    os_el = ET.SubElement(root, "os")
    ET.SubElement(os_el, "type").text = "hvm"
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(root, "clock", {"offset": spec.clock_offset})
    # The reference writes preserve for both; libvirt's QEMU driver refuses it for
    # on_poweroff (a powered-off domain stays defined either way).
    ET.SubElement(root, "on_poweroff").text = "destroy"
    ET.SubElement(root, "on_reboot").text = "restart"
    ET.SubElement(root, "on_crash").text = "preserve"  # kept for the operator to look at
    devices = ET.SubElement(root, "devices")
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    driver = {"name": "qemu", "type": spec.disk.format}
    if spec.disk.cache:
        driver["cache"] = spec.disk.cache
    ET.SubElement(disk, "driver", driver)
    ET.SubElement(disk, "source", {"file": spec.disk.path})
    ET.SubElement(disk, "target", {"dev": _target_dev(spec.disk.bus), "bus": spec.disk.bus})
    for nic in spec.nics:
        interface = ET.SubElement(devices, "interface", {"type": nic.source_type})
        ET.SubElement(interface, "mac", {"address": nic.mac})
        ET.SubElement(interface, "source", {nic.source_type: nic.source})
        ET.SubElement(interface, "model", {"type": nic.model})
    ET.SubElement(devices, "graphics", {"type": "vnc", "autoport": "yes"})
    if spec.panic_device:
        ET.SubElement(devices, "panic", {"model": "isa"})
    if spec.qemu_args:
        commandline = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
        for arg in spec.qemu_args:
            ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", {"value": arg})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def reference_hardware(xml_text: str) -> tuple[str | None, str | None]:
    """Disk bus and NIC model recorded in an image's reference XML (None when absent)."""
    try:
        root = SafeET.fromstring(xml_text)
    except (ET.ParseError, ValueError):  # ValueError: defusedxml refused entities or a DTD
        return None, None
    bus = model = None
    for disk in root.iterfind("./devices/disk"):
        target = disk.find("target")
        # libvirt's device attribute defaults to "disk"
        if (
            disk.get("device", "disk").lower() == "disk"
            and target is not None
            and target.get("bus")
        ):
            bus = target.get("bus")
            break
    for interface in root.iterfind("./devices/interface"):
        model_el = interface.find("model")
        if model_el is not None and model_el.get("type"):
            model = model_el.get("type")
            break
    return bus, model
