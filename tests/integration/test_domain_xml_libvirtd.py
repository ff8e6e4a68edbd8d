"""Every golden domain XML, as it is (type kvm or qemu, host CPU model, cache modes,
bridges, networks, QEMU arguments), is accepted by the real libvirtd at qemu:///system.

libvirt's test:/// driver (tests/unit/test_domain_xml.py) knows only domain type
`test` and checks little of the rest; here each golden file is defined on the
libvirtd the hosts run, read back, and undefined again. Nothing is started, so no
bridge or network has to exist. The domains get names of their own (tests-golden-…)
so that no one else's domain is touched.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt
import pytest

from tests.unit.test_domain_xml import GOLDEN, GOLDEN_NAMES

QEMU_ARG = "{http://libvirt.org/schemas/domain/qemu/1.0}arg"


@pytest.fixture(scope="module")
def system() -> Iterator[libvirt.virConnect]:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("qemu:///system")
    yield conn
    conn.close()


def as_ours(golden: str, name: str) -> tuple[str, str, str]:
    """The golden XML under a domain name and UUID of this test; (xml, name, uuid)."""
    root = ET.fromstring(golden)
    ours, our_uuid = f"tests-golden-{name}", str(uuid.uuid5(uuid.NAMESPACE_DNS, name))
    for tag, value in (("name", ours), ("uuid", our_uuid)):
        element = f"<{tag}>{root.findtext(tag)}</{tag}>"
        assert golden.count(element) == 1, f"{element} should occur once in the golden file"
        golden = golden.replace(element, f"<{tag}>{value}</{tag}>")
    return golden, ours, our_uuid


def hardware(root: ET.Element) -> dict[str, object]:
    """What the golden file decides about the machine, in a form both sides share."""
    topology = root.find("cpu/topology")
    return {
        "type": root.get("type"),
        "memory_kib": int(root.findtext("memory") or 0),
        "vcpu": root.findtext("vcpu"),
        "cpu_mode": root.find("cpu").get("mode", "custom"),  # libvirt's default mode
        # libvirt adds dies="1", its default, to every topology
        "topology": {k: v for k, v in topology.attrib.items() if (k, v) != ("dies", "1")},
        "clock": root.find("clock").get("offset"),
        "disks": [
            (
                d.find("driver").get("type"),
                d.find("driver").get("cache"),
                d.find("source").get("file"),
                d.find("target").get("dev"),
                d.find("target").get("bus"),
            )
            for d in root.iterfind("devices/disk")
        ],
        "nics": [
            (
                n.get("type"),
                dict(n.find("source").attrib),
                n.find("mac").get("address"),
                n.find("model").get("type"),
            )
            for n in root.iterfind("devices/interface")
        ],
        "qemu_args": [arg.get("value") for arg in root.iter(QEMU_ARG)],
    }


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_xml_defines_on_the_real_libvirtd(system, name):
    """defineXML accepts the golden XML unchanged but for name and UUID, and libvirt keeps
    what it says: domain type, memory, CPU mode and topology, disks with their cache
    mode, NICs with source, MAC and model, QEMU arguments."""
    golden = (GOLDEN / f"{name}.xml").read_text()
    xml, domain_name, domain_uuid = as_ours(golden, name)
    for left in system.listAllDomains(0):  # by an interrupted run of this test
        if left.name() == domain_name:
            left.undefine()
    domain = system.defineXML(xml)
    try:
        defined = ET.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        assert (domain.name(), domain.UUIDString()) == (domain_name, domain_uuid)
        assert not domain.isActive()
        assert hardware(defined) == hardware(ET.fromstring(golden))
    finally:
        domain.undefine()
    with pytest.raises(libvirt.libvirtError):
        system.lookupByName(domain_name)


def test_the_golden_files_cover_both_domain_types_and_the_kvm_parts():
    """kvm and qemu are both among the golden files, and so are the parts only a real
    libvirtd checks: host-model CPU, cache none, bridges, networks, QEMU arguments."""
    roots = [ET.fromstring((GOLDEN / f"{name}.xml").read_text()) for name in GOLDEN_NAMES]
    parts = [hardware(root) for root in roots]
    assert {p["type"] for p in parts} == {"kvm", "qemu"}
    assert "host-model" in {p["cpu_mode"] for p in parts}
    assert "none" in {disk[1] for p in parts for disk in p["disks"]}  # type: ignore[attr-defined]
    nic_types = {nic[0] for p in parts for nic in p["nics"]}  # type: ignore[attr-defined]
    assert {"bridge", "network"} <= nic_types
    assert any(p["qemu_args"] for p in parts)
