"""Domain operations through libvirt-python: each converges, so a repeated call is harmless."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import defusedxml.ElementTree as SafeET
import libvirt

from vclvirt import cancellation
from vclvirt.errors import HypervisorError, HypervisorUnavailable, SnapshotMissing
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


# A guest in these states runs no code: an ACPI button press reaches nobody.
_CANNOT_HEAR_ACPI = {libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_PAUSED}


def _listed(conn: libvirt.virConnect, host: str) -> list[libvirt.virDomain]:
    with libvirt_errors(host, "listing domains"):
        return list(conn.listAllDomains(0))


def _xml_if_still_there(domain: libvirt.virDomain, host: str) -> str | None:
    """The domain's XML, or None when it vanished since it was listed: other processes
    (other computers' loads, other users of the libvirtd) undefine domains at any time,
    and a domain that is gone is not one we are looking for."""
    try:
        return str(domain.XMLDesc(0))
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        with libvirt_errors(host, f"reading the XML of {domain.name()}"):
            raise


def computer_domains(
    conn: libvirt.virConnect, computer: str, host: str, computer_id: int | None = None
) -> list[libvirt.virDomain]:
    """Every domain of this computer: named `C_…`, from older VCL `C:…`, or one of the
    short forms of the 48-character rule (C alone, or its id); one that vanished since
    the listing is left out."""
    return sorted(
        (
            d
            for d in _listed(conn, host)
            if belongs_to_computer(d.name(), computer, computer_id) and _still_there(d, host)
        ),
        key=lambda d: d.name(),
    )


def _still_there(domain: libvirt.virDomain, host: str) -> bool:
    try:
        domain.isActive()
        return True
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        with libvirt_errors(host, f"reading the state of {domain.name()}"):
            raise


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
        # "Failed to terminate process N with SIGKILL: Device or resource busy": QEMU is
        # still flushing to a slow disk; the next attempt finds it gone.
        with libvirt_errors(host, f"destroying {domain.name()}", internal=HypervisorUnavailable):
            raise


def shut_down(
    domain: libvirt.virDomain, host: str, *, timeout: float, resend_every: float = 10.0
) -> str:
    """Graceful stop: ACPI power button (re-sent, like Nova), destroy after `timeout`.

    Returns how the domain went off: "already off", "acpi" or "destroy". A crashed or
    paused domain is destroyed at once: its guest runs no code to hear the button.
    """
    name = domain.name()
    with libvirt_errors(host, f"shutting down {name}", internal=HypervisorUnavailable):
        if not domain.isActive():
            return "already off"
        if domain.state()[0] in _CANNOT_HEAR_ACPI:
            destroy(domain, host)
            return "destroy"
        deadline = time.monotonic() + timeout
        next_press = 0.0
        while time.monotonic() < deadline:
            cancellation.check()  # a superseded operation stops waiting
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
        if error.get_error_code() == libvirt.VIR_ERR_INVALID_ARG:
            # A driver without NVRAM (libvirt's test driver): the other flags still apply.
            with libvirt_errors(host, f"undefining {domain.name()}"):
                domain.undefineFlags(flags & ~libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            return
        with libvirt_errors(host, f"undefining {domain.name()}"):
            if error.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                raise
            # A driver without NVRAM (libvirt's test driver) refuses the flag: it has none.
            domain.undefineFlags(flags & ~libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)


def define(conn: libvirt.virConnect, xml: str, host: str) -> libvirt.virDomain:
    """Define (or redefine: same name and UUID updates it) the domain. A definition
    libvirt refuses, however it says so, stays refused."""
    with libvirt_errors(host, "defining the domain", internal=HypervisorError):
        return conn.defineXML(xml)


def start(domain: libvirt.virDomain, host: str) -> bool:
    """Start unless running; returns True when this call started it. QEMU refusing to
    start (a disk it cannot open, "qemu unexpectedly closed the monitor") is permanent."""
    with libvirt_errors(host, f"starting {domain.name()}", internal=HypervisorError):
        if domain.isActive():
            return False
        domain.create()
        return True


def domain_xml(domain: libvirt.virDomain, host: str) -> str:
    with libvirt_errors(host, f"reading the XML of {domain.name()}"):
        return str(domain.XMLDesc(0))


@dataclass(frozen=True)
class DiskFile:
    """A file-backed disk of a domain and the format libvirt opens it with."""

    path: str
    format: str


def disks(xml: str) -> list[DiskFile]:
    """The domain's file-backed disks (device='disk'), in order. A disk whose XML names no
    format is raw: libvirt's QEMU driver opens it so (and writes type='raw' at define)."""
    root = SafeET.fromstring(xml)
    found = []
    for disk in root.iterfind("./devices/disk"):
        source = disk.find("source")
        if disk.get("device", "").lower() == "disk" and source is not None and source.get("file"):
            driver = disk.find("driver")
            fmt = driver.get("type") if driver is not None else None
            found.append(DiskFile(source.get("file", ""), fmt or "raw"))
    return found


def disk_files(xml: str) -> list[str]:
    """File paths of the domain's disks (device='disk', file-backed), in order."""
    return [disk.path for disk in disks(xml)]


def backing_file(xml: str) -> str | None:
    """The file behind the first file-backed disk of a running domain (libvirt records the
    backing chain it found at start-up as `<backingStore>`), or None."""
    root = SafeET.fromstring(xml)
    for disk in root.iterfind("./devices/disk"):
        source = disk.find("source")
        if disk.get("device", "").lower() == "disk" and source is not None and source.get("file"):
            backing = disk.find("./backingStore/source")
            return backing.get("file") if backing is not None else None
    return None


_QEMU_ARG = "{http://libvirt.org/schemas/domain/qemu/1.0}arg"
_MAC_OPTION = re.compile(r"(?:^|,)mac=([0-9A-Fa-f:]{17})(?:,|$)")


def mac_addresses(xml: str) -> list[str]:
    """MACs of the domain's NICs: libvirt interfaces, then NICs given on the QEMU command line."""
    root = SafeET.fromstring(xml)
    macs = [
        mac.get("address", "").lower()
        for mac in root.iterfind("./devices/interface/mac")
        if mac.get("address")
    ]
    for arg in root.iter(_QEMU_ARG):
        found = _MAC_OPTION.search(arg.get("value", ""))
        if found:
            macs.append(found.group(1).lower())
    return macs


def domains_using(conn: libvirt.virConnect, path: str, host: str) -> list[str]:
    """Names of the domains (any state) with a disk on this file."""
    found = []
    for domain in _listed(conn, host):
        xml = _xml_if_still_there(domain, host)
        if xml is not None and path in disk_files(xml):
            found.append(domain.name())
    return sorted(found)


def domains_with_mac(conn: libvirt.virConnect, macs: set[str], host: str) -> list[str]:
    """Names of the domains having a NIC with one of these MACs (capture finds its VM so)."""
    wanted = {m.lower() for m in macs}
    found = []
    for domain in _listed(conn, host):
        xml = _xml_if_still_there(domain, host)
        if xml is not None and wanted & set(mac_addresses(xml)):
            found.append(domain.name())
    return sorted(found)


def create_snapshot(domain: libvirt.virDomain, name: str, description: str, host: str) -> None:
    """An internal snapshot (disk and, when running, memory) of the domain."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "description").text = description
    with libvirt_errors(host, f"creating snapshot {name} of {domain.name()}"):
        domain.snapshotCreateXML(ET.tostring(root, encoding="unicode"), 0)


def list_snapshots(domain: libvirt.virDomain, host: str) -> list[dict[str, Any]]:
    with libvirt_errors(host, f"listing snapshots of {domain.name()}"):
        found = []
        for snapshot in domain.listAllSnapshots(0):
            root = SafeET.fromstring(snapshot.getXMLDesc(0))
            found.append(
                {
                    "name": snapshot.getName(),
                    "created": int(root.findtext("creationTime") or 0),
                    "state": root.findtext("state"),
                    "description": root.findtext("description") or "",
                    "current": bool(snapshot.isCurrent()),
                }
            )
        return sorted(found, key=lambda s: (s["created"], s["name"]))


def _snapshot(domain: libvirt.virDomain, name: str, host: str) -> libvirt.virDomainSnapshot:
    try:
        return domain.snapshotLookupByName(name, 0)
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise SnapshotMissing(
                f"domain {domain.name()} has no snapshot {name!r}", host=host
            ) from None
        with libvirt_errors(host, f"looking up snapshot {name}"):
            raise


def revert_snapshot(domain: libvirt.virDomain, name: str, host: str) -> None:
    snapshot = _snapshot(domain, name, host)
    with libvirt_errors(host, f"reverting {domain.name()} to snapshot {name}"):
        domain.revertToSnapshot(snapshot, 0)


def delete_snapshot(domain: libvirt.virDomain, name: str, host: str) -> None:
    """Delete one snapshot; its children are kept (merged into their parent's place)."""
    snapshot = _snapshot(domain, name, host)
    with libvirt_errors(host, f"deleting snapshot {name} of {domain.name()}"):
        snapshot.delete(0)


def disks_by_domain(conn: libvirt.virConnect, host: str) -> dict[str, list[str]]:
    """Every domain (any state) with the files of its disks; one that vanished since the
    listing is left out."""
    found = {}
    for domain in _listed(conn, host):
        xml = _xml_if_still_there(domain, host)
        if xml is not None:
            found[domain.name()] = disk_files(xml)
    return found
