"""Domain XML: topology, memory, NIC plan, rendering, golden files, and libvirt acceptance."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import libvirt
import pytest

from vclvirt.config.inventory import HostConfig
from vclvirt.hypervisor.domain_xml import (
    DEFAULT_DISK_BUS,
    DEFAULT_NIC_MODEL,
    HostFacts,
    Topology,
    cpu_topology,
    memory_mib,
    plan_domain,
    plan_nics,
    reference_hardware,
    render_domain_xml,
    with_user_network,
)
from vclvirt.naming import LoadNames, domain_uuid

GOLDEN = Path(__file__).parent / "golden"
LOADED_AT = datetime(2024, 1, 1, 12, 0, 0)
ETH0, ETH1 = "52:54:00:aa:00:01", "52:54:00:aa:00:02"
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

REFERENCE_XML = """<domain type='kvm'>
  <name>win10-base</name>
  <devices>
    <disk type='file' device='cdrom'>
      <source file='/iso/virtio-win.iso'/>
      <target dev='hdc' bus='sata'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/win10.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'>
      <source network='default'/>
      <model type='e1000'/>
    </interface>
  </devices>
</domain>
"""


def facts(**overrides) -> HostFacts:
    """HostFacts for a qemu host with local vm_path, with overrides."""
    return HostFacts(**{"domain_type": "qemu", **overrides})


def spec_for(reservation, host_facts, private="br0", public="br1", host="kvmhost1"):
    """The DomainSpec the load would plan for this reservation (fixed load time)."""
    names = LoadNames.for_reservation(
        reservation, datastore_path="/var/lib/libvirt/images", vm_path="/srv/vms", xml_dir="/tmp"
    )
    return plan_domain(
        reservation,
        name=names.domain,
        uuid=domain_uuid(host, names.domain),
        overlay_path=names.overlay_path,
        private_switch=private,
        public_switch=public,
        facts=host_facts,
        loaded_at=LOADED_AT,
        management_node="mn1",
    )


def nic_table(nics):
    """(source_type, source, mac) of each NIC, in order."""
    return [(n.source_type, n.source, n.mac) for n in nics]


# --- cpu topology and memory -------------------------------------------------


@pytest.mark.parametrize("vcpus", range(1, 9))
def test_topology_multiplies_to_vcpus(vcpus):
    """sockets x cores x threads equals the vCPU count, with one thread per core."""
    t = cpu_topology(vcpus)
    assert t.sockets * t.cores * t.threads == vcpus
    assert t.threads == 1


@pytest.mark.parametrize("vcpus", [1, 2, 4, 6, 8, 16])
def test_topology_matches_reference_formula_for_one_two_and_even(vcpus):
    """For 1, 2 and even counts the reference's n<=2 -> n x 1, else 2 x n//2 holds."""
    expected = Topology(vcpus, 1) if vcpus <= 2 else Topology(2, vcpus // 2)
    assert cpu_topology(vcpus) == expected


@pytest.mark.parametrize("vcpus", [3, 5, 7])
def test_topology_for_odd_counts_is_one_socket(vcpus):
    """Odd counts above 2 get one socket of n cores (VCL's 2 x n//2 is refused)."""
    assert cpu_topology(vcpus) == Topology(1, vcpus)


@pytest.mark.parametrize("vcpus", [0, -1])
def test_topology_rejects_less_than_one(vcpus):
    """Zero or negative vCPU counts are refused."""
    with pytest.raises(ValueError):
        cpu_topology(vcpus)


@pytest.mark.parametrize(
    ("minram", "mib"), [(0, 512), (1, 512), (511, 512), (512, 512), (4096, 4096)]
)
def test_memory_floor_is_512(minram, mib):
    """Memory is the image's minimum RAM, but never below 512 MiB."""
    assert memory_mib(minram) == mib


def test_memory_rendered_in_kib(reservation):
    """The rendered <memory> is MiB x 1024 with an explicit KiB unit."""
    root = ET.fromstring(
        render_domain_xml(spec_for(reservation(image={"min_ram_mb": 100}), facts()))
    )
    memory = root.find("memory")
    assert (memory.text, memory.get("unit")) == ("524288", "KiB")


# --- clock, cpu mode, disk ---------------------------------------------------


@pytest.mark.parametrize(("os_type", "offset"), [("windows", "localtime"), ("linux", "utc")])
def test_clock_offset_follows_os_type(reservation, os_type, offset):
    """Windows guests keep local time; everything else UTC."""
    spec = spec_for(reservation(image={"os_type": os_type}), facts())
    assert spec.clock_offset == offset
    assert ET.fromstring(render_domain_xml(spec)).find("clock").get("offset") == offset


@pytest.mark.parametrize(("domain_type", "mode"), [("kvm", "host-model"), ("qemu", None)])
def test_cpu_mode_host_model_only_for_kvm(reservation, domain_type, mode):
    """host-model CPU is requested under kvm only (TCG uses libvirt's default model)."""
    spec = spec_for(reservation(), facts(domain_type=domain_type))
    assert spec.cpu_mode == mode
    assert ET.fromstring(render_domain_xml(spec)).find("cpu").get("mode") == mode


@pytest.mark.parametrize(("local", "cache"), [(True, None), (False, "none")])
def test_cache_none_when_vm_path_not_local(reservation, local, cache):
    """cache='none' is set only when vm_path is on shared storage."""
    spec = spec_for(reservation(), facts(vm_path_is_local=local))
    assert spec.disk.cache == cache
    driver = ET.fromstring(render_domain_xml(spec)).find("./devices/disk/driver")
    assert driver.get("cache") == cache


@pytest.mark.parametrize(
    ("bus", "dev"), [("virtio", "vda"), ("ide", "hda"), ("sata", "sda"), ("scsi", "sda")]
)
def test_disk_target_dev_follows_bus(reservation, bus, dev):
    """The disk target name matches the bus (vda for virtio, hda for ide, sda for sata/scsi)."""
    root = ET.fromstring(render_domain_xml(spec_for(reservation(), facts(disk_bus=bus))))
    target = root.find("./devices/disk/target")
    assert (target.get("bus"), target.get("dev")) == (bus, dev)


@pytest.mark.parametrize(
    ("os_type", "panic"), [("linux", True), ("none", True), ("windows", False)]
)
def test_a_crashed_guest_is_kept_and_told_by_a_panic_device(reservation, os_type, panic):
    """on_crash preserve (as the reference) with a pvpanic device so a guest's panic reaches
    libvirt at all; Windows (no in-box driver) gets none. on_poweroff stays destroy: QEMU
    refuses preserve there, and a powered-off domain stays defined either way."""
    root = ET.fromstring(
        render_domain_xml(spec_for(reservation(image={"os_type": os_type}), facts()))
    )
    actions = {a: root.findtext(a) for a in ("on_poweroff", "on_reboot", "on_crash")}
    assert actions == {"on_poweroff": "destroy", "on_reboot": "restart", "on_crash": "preserve"}
    assert [p.get("model") for p in root.findall("./devices/panic")] == (["isa"] if panic else [])


def test_disk_is_the_overlay_in_qcow2(reservation):
    """The only disk is the per-VM qcow2 overlay in vm_path."""
    root = ET.fromstring(render_domain_xml(spec_for(reservation(), facts())))
    disks = root.findall("./devices/disk")
    assert len(disks) == 1
    assert disks[0].find("source").get("file") == "/srv/vms/vm4-22_3081-v5.qcow2"
    assert disks[0].find("driver").get("type") == "qcow2"


def test_defaults_are_ide_and_rtl8139():
    """Without a reference XML the disk bus is ide and the NIC model rtl8139."""
    assert (DEFAULT_DISK_BUS, DEFAULT_NIC_MODEL) == ("ide", "rtl8139")
    assert (facts().disk_bus, facts().nic_model) == ("ide", "rtl8139")


def test_description_has_the_six_reference_lines(reservation):
    """The description lists image, revision, load time, MN, request and reservation ids."""
    spec = spec_for(reservation(), facts())
    assert spec.description == (
        "image: CentOS 7 Base (64 bit VM)\n"
        "revision: centos7-CentOS7Base64bitVM-3081-v5\n"
        "load time: 2024-01-01 12:00:00\n"
        "management node: mn1\n"
        "request ID: 100\n"
        "reservation ID: 200\n"
    )


def test_hostile_pretty_name_is_escaped(reservation):
    """Markup in the pretty name ends up as text, never as XML structure."""
    pretty = "</description><devices/><x a='\"'>&amp;"
    root = ET.fromstring(
        render_domain_xml(spec_for(reservation(image={"pretty_name": pretty}), facts()))
    )
    assert root.find("description").text.splitlines()[0] == f"image: {pretty}"
    assert len(root.findall("devices")) == 1


def test_render_is_deterministic(reservation):
    """The same spec always renders to the same text."""
    spec = spec_for(reservation(image={"project": "vclhpc"}), facts(networks=frozenset({"hpc"})))
    assert render_domain_xml(spec) == render_domain_xml(spec)


def test_qemu_args_render_in_the_qemu_namespace(reservation):
    """Extra qemu arguments go into a qemu:commandline element, one arg each."""
    spec = spec_for(reservation(), facts()).with_qemu_args("-fw_cfg", "name=opt/x,string=1")
    root = ET.fromstring(render_domain_xml(spec))
    ns = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    args = [a.get("value") for a in root.iterfind(f"./{ns}commandline/{ns}arg")]
    assert args == ["-fw_cfg", "name=opt/x,string=1"]


# --- NIC plan (VCL's project rules, one eth1 MAC) ------------------------------


def test_vcl_project_gets_exactly_eth0_and_eth1(reservation):
    """Project vcl: eth0 on the private switch, eth1 on the public switch, nothing else."""
    nics = plan_nics(
        reservation(), "br0", "br1", facts(networks=frozenset({"hpc", "vcl", "vclnet"}))
    )
    assert nic_table(nics) == [("bridge", "br0", ETH0), ("bridge", "br1", ETH1)]


def test_switch_that_is_a_libvirt_network_is_type_network(reservation):
    """A switch named like a libvirt network becomes an interface of type network."""
    nics = plan_nics(reservation(), "default", "br1", facts(networks=frozenset({"default"})))
    assert nic_table(nics) == [("network", "default", ETH0), ("bridge", "br1", ETH1)]


def test_hpc_project_network_takes_eth1_mac(reservation):
    """Project hpc with a network `hpc`: eth0 + the hpc network carrying the eth1 MAC."""
    nics = plan_nics(
        reservation(image={"project": "hpc"}), "br0", "br1", facts(networks=frozenset({"hpc"}))
    )
    assert nic_table(nics) == [("bridge", "br0", ETH0), ("network", "hpc", ETH1)]


def test_hpc_project_without_network_uses_public_switch(reservation):
    """Project hpc with no matching network falls back to the profile's eth1."""
    nics = plan_nics(
        reservation(image={"project": "hpc"}), "br0", "br1", facts(networks=frozenset({"lab"}))
    )
    assert nic_table(nics) == [("bridge", "br0", ETH0), ("bridge", "br1", ETH1)]


def test_vclhpc_project_adds_network_with_its_own_mac(reservation):
    """Project vclhpc with `hpc`: eth0 + eth1 (profile) + hpc with a distinct MAC."""
    nics = plan_nics(
        reservation(image={"project": "vclhpc"}), "br0", "br1", facts(networks=frozenset({"hpc"}))
    )
    assert nic_table(nics)[:2] == [("bridge", "br0", ETH0), ("bridge", "br1", ETH1)]
    assert [(n.source_type, n.source) for n in nics[2:]] == [("network", "hpc")]
    assert nics[2].mac not in (ETH0, ETH1)


def test_several_hpc_networks_only_one_gets_eth1_mac(reservation):
    """With several intersecting networks only the first (sorted) gets eth1's MAC."""
    nics = plan_nics(
        reservation(image={"project": "hpc"}),
        "br0",
        "br1",
        facts(networks=frozenset({"hpc-gpu", "hpc", "myhpc", "lab"})),
    )
    assert [n.source for n in nics] == ["br0", "hpc", "hpc-gpu", "myhpc"]
    macs = [n.mac for n in nics]
    assert macs.count(ETH1) == 1
    assert nics[1].mac == ETH1
    assert len(set(macs)) == len(macs)
    assert all(MAC.match(mac) for mac in macs)


def test_extra_nic_macs_are_stable_and_unicast_local(reservation):
    """Extra NIC MACs are the same on every plan, unicast, and distinct per network."""
    r = reservation(image={"project": "vclhpc"})
    first = plan_nics(r, "br0", "br1", facts(networks=frozenset({"hpc", "vclhpc-a", "vclhpc-b"})))
    second = plan_nics(r, "br0", "br1", facts(networks=frozenset({"vclhpc-b", "vclhpc-a", "hpc"})))
    assert first == second
    extra = [n.mac for n in first[2:]]
    assert len(extra) == 3 == len(set(extra))
    assert all(int(mac[:2], 16) & 1 == 0 for mac in extra)


def test_extra_nic_mac_differs_between_computers(reservation):
    """Two computers on the same project network get different MACs there."""
    f = facts(networks=frozenset({"hpc"}))
    a = plan_nics(reservation(image={"project": "vclhpc"}), "br0", "br1", f)
    b = plan_nics(
        reservation({"id": 23, "hostname": "vm4-23"}, {"project": "vclhpc"}), "br0", "br1", f
    )
    assert a[2].mac != b[2].mac


def test_networks_named_like_switches_are_not_project_networks(reservation):
    """Networks equal (any case) to the private or public switch are never added again."""
    nics = plan_nics(
        reservation(image={"project": "vclhpc"}),
        "hpc-private",
        "HPC-Public",
        facts(networks=frozenset({"hpc-private", "hpc-public"})),
    )
    assert [n.source for n in nics] == ["hpc-private", "HPC-Public"]


def test_network_intersecting_project_by_substring(reservation):
    """A network intersects when it contains the project name or the project contains it."""
    nics = plan_nics(
        reservation(image={"project": "vclhpc"}),
        "br0",
        "br1",
        facts(networks=frozenset({"hpc", "vclhpc-lab", "other"})),
    )
    assert [n.source for n in nics] == ["br0", "br1", "hpc", "vclhpc-lab"]


# --- reference hardware ------------------------------------------------------


def test_reference_hardware_reads_disk_bus_and_nic_model():
    """The first real disk's bus (cdrom skipped) and first NIC model are returned."""
    assert reference_hardware(REFERENCE_XML) == ("virtio", "virtio")


@pytest.mark.parametrize(
    "text",
    ["", "garbage", "<domain", "<domain/>", "<domain><devices/></domain>", "\x00\x01"],
)
def test_reference_hardware_on_garbage_is_none(text):
    """Unparsable or empty reference XML gives (None, None)."""
    assert reference_hardware(text) == (None, None)


def test_reference_hardware_on_entity_declarations_is_none():
    """Reference XML with entity declarations is treated as unusable: (None, None)."""
    hostile = '<!DOCTYPE d [<!ENTITY a "virtio">]><domain><devices/></domain>'
    try:
        result = reference_hardware(hostile)
    except ValueError as error:
        pytest.fail(f"reference_hardware raised {type(error).__name__} instead of (None, None)")
    assert result == (None, None)


# --- golden files and libvirt acceptance -------------------------------------


def golden_specs(reservation):
    """Representative reservations -> DomainSpec, keyed by golden file name."""
    ref_bus, ref_model = reference_hardware(REFERENCE_XML)
    return {
        "linux_1vcpu_no_nics": spec_for(reservation(), facts(), private=None, public=None),
        "windows_4vcpu_bridges_virtio": spec_for(
            reservation(
                {"id": 197, "hostname": "vclv99-197.example.org"},
                {
                    "id": 1846,
                    "revision": 12,
                    "name": "win10-Win10LTSC-1846-v12",
                    "pretty_name": "Windows 10 Enterprise LTSC 2019 with MATLAB, SPSS & Office 365",
                    "os_type": "windows",
                    "os_name": "win10",
                    "min_ram_mb": 8192,
                    "vcpus": 4,
                },
            ),
            facts(disk_bus=ref_bus, nic_model=ref_model),
        ),
        "hpc_project_networks": spec_for(
            reservation(image={"project": "hpc", "vcpus": 2}),
            facts(networks=frozenset({"default", "hpc", "hpc-gpu"})),
            private="default",
        ),
        "kvm_cache_none": spec_for(
            reservation(image={"vcpus": 3, "min_ram_mb": 1024}),
            facts(domain_type="kvm", vm_path_is_local=False, disk_bus="virtio"),
        ),
        # The test bed's shape: one user-mode NIC given on the QEMU command line.
        "qemu_user_network": with_user_network(
            spec_for(reservation(), facts(), private=None, public=None),
            reservation(),
            HostConfig(
                name="kvmhost1",
                address="127.0.0.1",
                transport="local",
                datastore_path="/var/lib/libvirt/images",
                guest_network="user",
                guest_ssh_ports=(22000, 22999),
            ),
        ),
    }


GOLDEN_NAMES = [
    "linux_1vcpu_no_nics",
    "windows_4vcpu_bridges_virtio",
    "hpc_project_networks",
    "kvm_cache_none",
    "qemu_user_network",
]


def test_golden_names_cover_all_specs(reservation):
    """Every representative spec has a golden file name in the parametrised list."""
    assert sorted(golden_specs(reservation)) == sorted(GOLDEN_NAMES)


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_render_matches_golden_file(reservation, name):
    """Rendered XML equals the reviewed golden file (created, and failing, if missing)."""
    xml = render_domain_xml(golden_specs(reservation)[name])
    path = GOLDEN / f"{name}.xml"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(xml)
        pytest.fail(f"golden file {path} was missing and has been created: review it, rerun")
    assert xml == path.read_text()


@pytest.fixture(scope="module")
def test_driver():
    """A connection to libvirt's in-process test driver."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


def test_test_driver_only_knows_domain_type_test(test_driver):
    """The test driver offers only domain type `test`, so golden XML is retyped for it."""
    caps = ET.fromstring(test_driver.getCapabilities())
    assert {d.get("type") for d in caps.iterfind("./guest/arch/domain")} == {"test"}


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_xml_defines_and_runs_on_test_driver(test_driver, name):
    """libvirt accepts each golden XML: define, create, destroy, undefine."""
    path = GOLDEN / f"{name}.xml"
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; run test_render_matches_golden_file first")
    golden = path.read_text()
    root = ET.fromstring(golden)
    assert root.get("type") in ("kvm", "qemu")
    xml = re.sub(r'^<domain type="(kvm|qemu)"', '<domain type="test"', golden, count=1)
    domain = test_driver.defineXML(xml)
    try:
        assert domain.name() == root.findtext("name")
        assert domain.UUIDString() == root.findtext("uuid")
        domain.create()
        assert domain.isActive()
        defined = ET.fromstring(domain.XMLDesc(0))
        macs = [m.get("address") for m in defined.iterfind("./devices/interface/mac")]
        assert macs == [m.get("address") for m in root.iterfind("./devices/interface/mac")]
        assert defined.find("vcpu").text == root.find("vcpu").text
        domain.destroy()
        assert not domain.isActive()
    finally:
        domain.undefine()
    with pytest.raises(libvirt.libvirtError):
        test_driver.lookupByName(root.findtext("name"))


# --- found by mutation testing (#23) --------------------------------------------------


def test_disk_without_a_device_attribute_is_a_disk():
    """libvirt's `device` defaults to disk: a reference disk without it gives its bus."""
    text = (
        "<domain><devices><disk type='file'><target dev='vda' bus='virtio'/></disk>"
        "<interface type='network'><model type='e1000'/></interface></devices></domain>"
    )
    assert reference_hardware(text) == ("virtio", "e1000")


def test_interface_without_a_model_is_skipped():
    """The first interface that names a model gives the NIC model; one without is skipped."""
    text = (
        "<domain><devices><interface type='network'/><interface type='bridge'>"
        "<model/></interface><interface type='bridge'><model type='e1000e'/></interface>"
        "</devices></domain>"
    )
    assert reference_hardware(text) == (None, "e1000e")


def test_usb_disk_is_an_sd_device():
    """A USB disk bus gets an sd* target like sata and scsi."""
    assert render_domain_xml_for_bus("usb").count('<target dev="sda" bus="usb" />') == 1


def render_domain_xml_for_bus(bus: str) -> str:
    from tests.unit.conftest import reservation_document
    from vclvirt.models import parse_reservation

    return render_domain_xml(
        spec_for(parse_reservation(reservation_document()), facts(disk_bus=bus))
    )


def test_zero_vcpus_refusal_says_why():
    """cpu_topology refuses fewer than one vCPU with the reason."""
    with pytest.raises(ValueError, match=r"^vcpus must be at least 1$"):
        cpu_topology(0)


def test_user_network_replaces_every_planned_nic(reservation):
    """With user-mode networking the planned switch NICs are dropped: one NIC only."""
    host = HostConfig(
        name="h", address="h", transport="local", datastore_path="/d", guest_network="user"
    )
    planned = spec_for(reservation(), facts())
    assert planned.nics
    user = with_user_network(planned, reservation(), host)
    assert user.nics == ()
    assert "<interface" not in render_domain_xml(user)


def test_switch_names_in_other_case_are_not_added_again_as_project_networks(reservation):
    """A project network equal to a switch name in another case is that switch, not a new NIC."""
    nics = plan_nics(
        reservation(image={"project": "hpc"}),
        "HPC-Private",
        None,
        facts(networks=frozenset({"hpc-private", "hpc-lab"})),
    )
    assert [n.source for n in nics] == ["HPC-Private", "hpc-lab"]
