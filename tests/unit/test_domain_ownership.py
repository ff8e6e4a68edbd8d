"""Which domains are a computer's: the short forms of the 48-character rule included
(naming.short_forms, domains.computer_domains), and the backing file of a running
domain read from its XML."""

from __future__ import annotations

import libvirt
import pytest

from vclvirt.hypervisor import domains
from vclvirt.naming import MAX_DOMAIN_NAME, belongs_to_computer, domain_name, short_forms

LONG = "c" * (MAX_DOMAIN_NAME + 1)  # 49 characters: its domains are named by its id
TIGHT = "t" * 44  # `t…_1-v0` is 49 characters: its domains fall back to the name alone


def test_domain_name_falls_back_to_the_short_forms():
    """The premise: domain_name gives the id for a long name, the name alone for a tight one."""
    assert domain_name(LONG, 77, "Pretty", 1, 0) == "77"
    assert domain_name(TIGHT, 78, "Pretty", 1, 0) == TIGHT


@pytest.mark.parametrize(
    ("computer", "computer_id", "forms"),
    [
        ("vm1", 5, {"vm1"}),  # `vm1_<a 45-character image id>-v0` would fall back to vm1
        (TIGHT, 6, {TIGHT}),
        ("t" * MAX_DOMAIN_NAME, 7, {"t" * MAX_DOMAIN_NAME}),
        (LONG, 8, {"8"}),  # a name over 48 characters is never used alone
        ("vm1", None, set()),  # without the id: the prefixes only, as before
        (LONG, None, set()),
    ],
)
def test_short_forms_are_those_domain_name_can_produce(computer, computer_id, forms):
    """The fallbacks domain_name can give this computer, nothing more."""
    assert short_forms(computer, computer_id) == forms


def test_short_forms_cover_every_fallback_domain_name_produces():
    """For every computer length and a range of image ids, a fallback name is a short form."""
    for length in range(1, 60):
        computer = "k" * length
        for image_id in (1, 7, 12345, 10**9, 10**40):
            name = domain_name(computer, 99, "Pretty Name", image_id, 3)
            if not name.startswith(f"{computer}_"):
                assert belongs_to_computer(name, computer, 99), (length, image_id, name)


def test_belongs_to_computer_with_its_id():
    """The id form belongs only to the long-named computer with that id; the bare name
    only to that computer, and only when its id is given."""
    assert belongs_to_computer("8", LONG, 8)
    assert not belongs_to_computer("9", LONG, 8)
    assert not belongs_to_computer("8", "vm1", 8)  # vm1's names never fall back to its id
    assert belongs_to_computer(TIGHT, TIGHT, 6)
    assert belongs_to_computer("vm1", "vm1", 5)
    assert not belongs_to_computer("vm1", "vm1")
    assert not belongs_to_computer(TIGHT + "x", TIGHT, 6)
    assert not belongs_to_computer("vm10", "vm1", 5)


def minimal_domain(name: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory>524288</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os></domain>"
    )


@pytest.fixture
def conn(tmp_path):
    """A private test-driver connection (its own empty node)."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    connection = libvirt.open(f"test://{node}")
    yield connection
    connection.close()


def test_computer_domains_finds_the_short_forms(conn):
    """A long-named computer's id-named domain and a tight computer's bare-named domain are
    found; another computer's id is not."""
    for name in ("8", "9", TIGHT, f"{TIGHT}_x_1-v0", f"{LONG}_a"):
        conn.defineXML(minimal_domain(name))
    assert [d.name() for d in domains.computer_domains(conn, LONG, "h", 8)] == ["8", f"{LONG}_a"]
    assert [d.name() for d in domains.computer_domains(conn, TIGHT, "h", 6)] == [
        TIGHT,
        f"{TIGHT}_x_1-v0",
    ]
    assert [d.name() for d in domains.computer_domains(conn, LONG, "h")] == [f"{LONG}_a"]


RUNNING_XML = """<domain type='kvm' id='3'><name>vm1_A_1-v0</name><devices>
  <disk type='file' device='cdrom'><source file='/iso/a.iso'/></disk>
  <disk type='file' device='disk'>
    <driver name='qemu' type='qcow2'/>
    <source file='/vms/vm1_1-v0.qcow2' index='2'/>
    <backingStore type='file' index='3'>
      <format type='qcow2'/>
      <source file='/images/linux-Img-1-v0.qcow2'/>
      <backingStore/>
    </backingStore>
  </disk>
  <disk type='file' device='disk'><source file='/vms/data.qcow2'/><backingStore/></disk>
</devices></domain>"""


def test_backing_file_of_the_first_disk():
    """The backing file libvirt recorded for the first file-backed disk (not a cdrom)."""
    assert domains.backing_file(RUNNING_XML) == "/images/linux-Img-1-v0.qcow2"


@pytest.mark.parametrize(
    "xml",
    [
        "<domain><devices/></domain>",
        "<domain><devices><disk type='file' device='disk'><source file='/a'/>"
        "<backingStore/></disk></devices></domain>",
        "<domain><devices><disk type='file' device='disk'><source file='/a'/>"
        "</disk></devices></domain>",
    ],
)
def test_backing_file_none_without_a_backing_store(xml):
    """No disk, a disk without a backing file, or an inactive domain's XML: None."""
    assert domains.backing_file(xml) is None
