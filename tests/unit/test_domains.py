"""Domain helpers: XML readers by value, and converging operations on libvirt's test driver."""

from __future__ import annotations

import time

import libvirt
import pytest

from vclvirt.errors import HypervisorError, HypervisorUnavailable
from vclvirt.hypervisor import domains
from vclvirt.hypervisor.domains import disk_files, mac_addresses

DOMAIN_XML = """<domain type='kvm'>
  <name>vm1_X_1-v1</name>
  <devices>
    <disk type='file' device='cdrom'><source file='/iso/a.iso'/><target dev='hdc'/></disk>
    <disk type='file' device='disk'><source file='/srv/vms/vm1_1-v1.qcow2'/></disk>
    <disk type='block' device='disk'><source dev='/dev/sdb'/></disk>
    <disk type='file' device='DISK'><source file='/srv/vms/data.raw'/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/></disk>
    <interface type='bridge'><mac address='52:54:00:AA:00:01'/></interface>
    <interface type='network'><source network='default'/></interface>
    <interface type='network'><mac address='52:54:00:aa:00:02'/></interface>
  </devices>
</domain>"""


def test_disk_files_lists_file_backed_disks_in_order():
    """Only device='disk' (any case) with a source file is listed, in document order."""
    assert disk_files(DOMAIN_XML) == ["/srv/vms/vm1_1-v1.qcow2", "/srv/vms/data.raw"]


def test_disk_files_of_domain_without_disks():
    """A domain without disks has no disk files."""
    assert disk_files("<domain><devices/></domain>") == []


def test_mac_addresses_lower_cased_skipping_missing():
    """Every interface MAC, lower-cased; interfaces without a MAC are skipped."""
    assert mac_addresses(DOMAIN_XML) == ["52:54:00:aa:00:01", "52:54:00:aa:00:02"]


def minimal_domain(name: str) -> str:
    """The smallest domain XML the test driver accepts."""
    return (
        f"<domain type='test'><name>{name}</name><memory>524288</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os></domain>"
    )


@pytest.fixture
def conn():
    """A test-driver connection with two domains of vm1, one of vm10 and one of vm1-2."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    connection = libvirt.open("test:///default")
    names = ["vm1_A_1-v1", "vm1:legacy", "vm10_A_1-v1", "vm1-2_A_1-v1"]
    defined = [connection.defineXML(minimal_domain(n)) for n in names]
    yield connection
    for domain in defined:
        try:
            if domain.isActive():
                domain.destroy()
            domain.undefine()
        except libvirt.libvirtError:
            pass
    connection.close()


def test_computer_domains_finds_current_and_legacy_names(conn):
    """computer_domains returns only vm1's domains (C_ and C:), sorted by name."""
    assert [d.name() for d in domains.computer_domains(conn, "vm1", "h")] == [
        "vm1:legacy",
        "vm1_A_1-v1",
    ]


def test_lookup_missing_domain_is_none(conn):
    """Looking up a domain that is not defined gives None."""
    assert domains.lookup(conn, "vm1_absent", "h") is None


def test_start_destroy_and_power_state_converge(conn):
    """start and destroy are idempotent, and power_state follows them."""
    domain = domains.lookup(conn, "vm1_A_1-v1", "h")
    assert domains.power_state(domain, "h") == "off"
    assert domains.start(domain, "h") is True
    assert domains.start(domain, "h") is False
    assert domains.power_state(domain, "h") == "on"
    domains.destroy(domain, "h")
    domains.destroy(domain, "h")
    assert domains.power_state(domain, "h") == "off"


def test_define_invalid_xml_raises_hypervisor_error(conn):
    """Invalid XML is a permanent HypervisorError naming the host and action."""
    with pytest.raises(HypervisorError) as caught:
        domains.define(conn, "<domain", "kvm1")
    assert caught.value.host == "kvm1"
    assert "defining the domain" in str(caught.value)


def test_domain_xml_reads_back_disks_and_macs(conn):
    """domain_xml returns libvirt's XML, which the readers parse."""
    domain = domains.lookup(conn, "vm1_A_1-v1", "h")
    xml = domains.domain_xml(domain, "h")
    assert "<name>vm1_A_1-v1</name>" in xml
    assert disk_files(xml) == []


def test_disks_carry_the_format_libvirt_opens_them_with():
    """Each file-backed disk with its driver type; one whose XML names none is raw, as
    libvirt's QEMU driver opens (and records) it."""
    xml = """<domain><devices>
      <disk type='file' device='disk'><driver name='qemu' type='vmdk'/>
        <source file='/srv/base/a.vmdk'/></disk>
      <disk type='file' device='disk'><source file='/srv/base/b.img'/></disk>
      <disk type='file' device='cdrom'><driver type='raw'/><source file='/iso/c.iso'/></disk>
    </devices></domain>"""
    assert domains.disks(xml) == [
        domains.DiskFile("/srv/base/a.vmdk", "vmdk"),
        domains.DiskFile("/srv/base/b.img", "raw"),
    ]


class VanishingListing:
    """A real test-driver connection whose listing is followed, before the caller reads a
    single domain, by the undefinition of `victim` — another process's domain going away
    between our listing and our reading of it (a real libvirt object, really gone)."""

    def __init__(self, conn: libvirt.virConnect, victim: str) -> None:
        self.conn, self.victim = conn, victim

    def listAllDomains(self, flags: int) -> list[libvirt.virDomain]:
        listed = self.conn.listAllDomains(flags)
        self.conn.lookupByName(self.victim).undefine()
        return listed


def test_a_domain_vanishing_during_a_listing_is_not_an_error(conn):
    """domains_with_mac, domains_using and computer_domains skip a domain that disappears
    while they list (it is not the one looked for) instead of failing with LIBVIRT_ERROR."""
    disk = "/srv/vms/vm1_1-v1.qcow2"
    mine = (
        "<domain type='test'><name>vm1_B_2-v0</name><memory>524288</memory><vcpu>1</vcpu>"
        f"<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<source file='{disk}'/><target dev='vda'/></disk><interface type='user'>"
        "<mac address='52:54:00:aa:00:09'/></interface></devices></domain>"
    )
    conn.defineXML(mine)
    try:
        for victim, call in (
            ("vm10_A_1-v1", lambda c: domains.domains_with_mac(c, {"52:54:00:AA:00:09"}, "h")),
            ("vm1-2_A_1-v1", lambda c: domains.domains_using(c, disk, "h")),
            ("vm1:legacy", lambda c: [d.name() for d in domains.computer_domains(c, "vm1", "h")]),
        ):
            assert call(VanishingListing(conn, victim)) in (
                ["vm1_B_2-v0"],
                ["vm1_A_1-v1", "vm1_B_2-v0"],  # computer_domains: vm1's other domain
            ), victim
            assert domains.lookup(conn, victim, "h") is None  # it really went away
    finally:
        conn.lookupByName("vm1_B_2-v0").undefine()


def test_a_vanished_domain_read_directly_still_fails_as_a_libvirt_error(conn):
    """Only listings forgive a vanished domain: reading a domain by its handle after it
    went away is still an error (domain_xml), for the caller to decide."""
    domain = conn.lookupByName("vm1_A_1-v1")
    domain.undefine()
    with pytest.raises(HypervisorError):
        domains.domain_xml(domain, "h")


def test_a_paused_domain_is_destroyed_at_once_not_after_the_acpi_timeout(conn):
    """A paused guest (as a crashed one) runs no code to hear the power button: shut_down
    destroys it at once instead of pressing for the whole timeout."""
    domain = conn.lookupByName("vm1_A_1-v1")
    domain.create()
    domain.suspend()
    assert domains.power_state(domain, "h") == "suspended"
    started = time.monotonic()
    assert domains.shut_down(domain, "h", timeout=600) == "destroy"
    assert time.monotonic() - started < 60  # never the 600 s of pressing
    assert domains.power_state(domain, "h") == "off"


class UnkillableDomain:
    """A domain whose QEMU does not die at once (libvirt's words when it is stuck in I/O)."""

    def name(self) -> str:
        return "vm1_A_1-v1"

    def destroy(self) -> None:
        error = libvirt.libvirtError("Failed to terminate process")
        message = "Failed to terminate process 4242 with SIGKILL: Device or resource busy"
        error.err = (libvirt.VIR_ERR_SYSTEM_ERROR, 0, message, 2, None, None, None, 0, 0)
        raise error


def test_a_qemu_that_does_not_die_at_once_is_retried_not_failed():
    """destroy judges libvirt's system error "Failed to terminate process" transient: QEMU
    is still flushing to a slow disk, and the next attempt finds it gone."""
    with pytest.raises(HypervisorUnavailable) as caught:
        domains.destroy(UnkillableDomain(), "kvm1")  # type: ignore[arg-type]
    assert "Device or resource busy" in caught.value.message
