"""Domain operations through libvirt-python: each converges, so a repeated call is harmless."""

from __future__ import annotations

import time

import defusedxml.ElementTree as SafeET
import libvirt

from vclvirt.hypervisor.connection import libvirt_errors
from vclvirt.naming import belongs_to_computer

_STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "off",
    libvirt.VIR_DOMAIN_RUNNING: "on",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "suspended",
    libvirt.VIR_DOMAIN_SHUTDOWN: "on",  # still running, shutting down
    libvirt.VIR_DOMAIN_SHUTOFF: "off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def computer_domains(conn: libvirt.virConnect, computer: str, host: str) -> list[libvirt.virDomain]:
    """Every domain of this computer: named `C_…` or, from older VCL, `C:…`."""
    with libvirt_errors(host, "listing domains"):
        domains = conn.listAllDomains(0)
        return sorted(
            (d for d in domains if belongs_to_computer(d.name(), computer)),
            key=lambda d: d.name(),
        )


def lookup(conn: libvirt.virConnect, name: str, host: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        with libvirt_errors(host, f"looking up domain {name}"):
            raise


def power_state(domain: libvirt.virDomain, host: str) -> str:
    """on / off / suspended / blocked / crashed."""
    with libvirt_errors(host, f"reading the state of {domain.name()}"):
        state, _reason = domain.state()
    return _STATE_NAMES.get(state, "off")


def destroy(domain: libvirt.virDomain, host: str) -> None:
    """Hard stop; a domain that is not running is already where we want it."""
    try:
        domain.destroy()
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
            return  # not running
        with libvirt_errors(host, f"destroying {domain.name()}"):
            raise


def shut_down(
    domain: libvirt.virDomain, host: str, *, timeout: float, resend_every: float = 10.0
) -> str:
    """Graceful stop: ACPI power button (re-sent, like Nova), destroy after `timeout`.

    Returns how the domain went off: "already off", "acpi" or "destroy".
    """
    name = domain.name()
    with libvirt_errors(host, f"shutting down {name}"):
        if not domain.isActive():
            return "already off"
        deadline = time.monotonic() + timeout
        next_press = 0.0
        while time.monotonic() < deadline:
            if not domain.isActive():
                return "acpi"
            if time.monotonic() >= next_press:
                try:
                    domain.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                except libvirt.libvirtError as error:
                    if error.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                        raise
                next_press = time.monotonic() + resend_every
            time.sleep(0.5)
    destroy(domain, host)
    return "destroy"


def delete_snapshots(domain: libvirt.virDomain, host: str) -> int:
    """Delete every snapshot (roots with their children); returns how many roots."""
    with libvirt_errors(host, f"deleting snapshots of {domain.name()}"):
        roots = domain.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_ROOTS)
        for snapshot in roots:
            snapshot.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN)
        return len(roots)


def undefine(domain: libvirt.virDomain, host: str) -> None:
    """Remove the definition with its managed save, snapshot metadata and NVRAM."""
    flags = (
        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    )
    try:
        domain.undefineFlags(flags)
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        with libvirt_errors(host, f"undefining {domain.name()}"):
            raise


def define(conn: libvirt.virConnect, xml: str, host: str) -> libvirt.virDomain:
    """Define (or redefine: same name and UUID updates it) the domain."""
    with libvirt_errors(host, "defining the domain"):
        return conn.defineXML(xml)


def start(domain: libvirt.virDomain, host: str) -> bool:
    """Start unless running; returns True when this call started it."""
    with libvirt_errors(host, f"starting {domain.name()}"):
        if domain.isActive():
            return False
        domain.create()
        return True


def domain_xml(domain: libvirt.virDomain, host: str) -> str:
    with libvirt_errors(host, f"reading the XML of {domain.name()}"):
        return str(domain.XMLDesc(0))


def disk_files(xml: str) -> list[str]:
    """File paths of the domain's disks (device='disk', file-backed), in order."""
    root = SafeET.fromstring(xml)
    paths = []
    for disk in root.iterfind("./devices/disk"):
        source = disk.find("source")
        if disk.get("device", "").lower() == "disk" and source is not None and source.get("file"):
            paths.append(source.get("file", ""))
    return paths


def mac_addresses(xml: str) -> list[str]:
    root = SafeET.fromstring(xml)
    return [
        mac.get("address", "").lower()
        for mac in root.iterfind("./devices/interface/mac")
        if mac.get("address")
    ]
