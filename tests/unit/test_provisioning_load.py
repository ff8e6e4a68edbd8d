"""provisioning.load on libvirt's test driver with real qemu-img: pre_define's overlay
(recreated unless reuse_overlay and right), generate_xml, define with the operators' copy."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import libvirt
import pytest

from tests.unit._provisioning import make_host, reservation
from vclvirt.config.settings import Settings
from vclvirt.errors import HypervisorError, VclvirtError
from vclvirt.guest import hooks
from vclvirt.hypervisor import domains
from vclvirt.hypervisor.domain_xml import DEFAULT_DISK_BUS, DEFAULT_NIC_MODEL
from vclvirt.naming import domain_uuid
from vclvirt.provisioning.load import LoadSteps
from vclvirt.testing import FakeTransport


@pytest.fixture
def host(tmp_path):
    return make_host(tmp_path)


def qemu_io(path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(path)], capture_output=True, text=True
    )


def info(path) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, check=True
    )
    return json.loads(out.stdout)


def test_pre_define_makes_an_overlay_backed_by_the_master(host):
    """The cached master is found and a qcow2 overlay with backing format is created."""
    master = host.master("linux-Unit-11-v0")
    result = LoadSteps(host.context).pre_define(reservation())
    overlay = host.vms / "unit-vm1_11-v0.qcow2"
    assert result == {
        "master": str(master),
        "master_format": "qcow2",
        "master_copied": False,
        "master_bytes": 0,
        "overlay": str(overlay),
        "overlay_created": True,
        "notes": [],
    }
    found = info(overlay)
    assert (found["backing-filename"], found["backing-filename-format"]) == (str(master), "qcow2")


def test_pre_define_recreates_an_existing_overlay_unless_told_to_reuse_it(host):
    """Default: a user's data in an existing overlay is gone. reuse_overlay: the right overlay
    keeps its data; an overlay of another master is still recreated."""
    host.master("linux-Unit-11-v0")
    other = host.master("linux-Other-12-v0")
    steps, r = LoadSteps(host.context), reservation()
    overlay = host.vms / "unit-vm1_11-v0.qcow2"
    steps.pre_define(r)
    assert qemu_io(overlay, "write -P 0x77 0 64k").returncode == 0

    assert steps.pre_define(r, reuse_overlay=True)["overlay_created"] is False
    assert "verification failed" not in qemu_io(overlay, "read -P 0x77 0 64k").stdout

    assert steps.pre_define(r)["overlay_created"] is True
    assert "verification failed" not in qemu_io(overlay, "read -P 0 0 64k").stdout

    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(other), "-F", "qcow2", str(overlay)],
        check=True,
    )
    assert steps.pre_define(r, reuse_overlay=True)["overlay_created"] is True
    assert info(overlay)["backing-filename"].endswith("linux-Unit-11-v0.qcow2")


def test_reference_xml_decides_bus_and_is_read_once(host):
    """The master's reference XML gives the disk bus and NIC model; it is read once per
    process (a master and its XML never change under their name)."""
    host.master("linux-Unit-11-v0")
    reference = host.datastore / "linux-Unit-11-v0.xml"
    reference.write_text(
        "<domain><devices><disk device='disk'><target dev='hda' bus='ide'/></disk>"
        "<interface type='bridge'><model type='e1000'/></interface></devices></domain>"
    )
    steps = LoadSteps(host.context)
    first = steps.host_facts(reservation())
    reference.write_text("<domain><devices/></domain>")
    again = steps.host_facts(reservation())
    assert (first.disk_bus, first.nic_model) == ("ide", "e1000")
    assert (again.disk_bus, again.nic_model) == ("ide", "e1000")
    assert first.domain_type == "test"


def test_define_keeps_the_xml_for_operators_and_defines_the_domain(host):
    """define writes `<xml_dir>/<base>.xml` with the generated XML and defines it, autostarted."""
    host.master("linux-Unit-11-v0")
    steps, r = LoadSteps(host.context), reservation()
    steps.pre_define(r)
    generated = steps.generate_xml(r)
    result = steps.define(r, generated["xml"])
    assert result == {
        "domain": generated["domain"],
        "xml_path": str(host.xml / "unit-vm1_11-v0.xml"),
    }
    assert (host.xml / "unit-vm1_11-v0.xml").read_text() == generated["xml"]
    domain = host.conn.lookupByName(generated["domain"])
    assert domain.autostart() == 1


def test_post_load_of_os_type_none_contacts_no_guest(host):
    """An image without a guest OS to talk to: post_load says so and succeeds."""
    assert LoadSteps(host.context).post_load(reservation()) == {
        "guest": "not contacted: os_type none"
    }


def on_fake_node(host) -> FakeTransport:
    """The host's commands answered by a fake from here on (its files keep the real one)."""
    assert host.context.files is not None  # chosen now, over the real transport
    fake = FakeTransport("unit-host")
    host.context.node = fake
    return fake


@pytest.mark.parametrize(
    ("fstype", "local"),
    [
        ("ext4", True),
        ("xfs", True),
        ("fuse.sshfs", True),
        ("nfs4", False),
        ("cifs", False),
        ("ceph", False),
        ("fuse.glusterfs", False),
    ],
)
def test_vm_path_is_local_unless_its_filesystem_is_a_remote_one(host, fstype, local):
    """findmnt's answer for vm_path, read once per process: a network filesystem (also
    behind FUSE) is not local, which the domain XML's disk cache mode depends on."""
    node = on_fake_node(host)
    node.on("findmnt", stdout=f"{fstype}\n".encode())
    steps = LoadSteps(host.context)
    assert steps.host_facts(reservation()).vm_path_is_local is local
    assert steps.host_facts(reservation()).vm_path_is_local is local
    assert node.argvs("findmnt") == [("findmnt", "-n", "-o", "FSTYPE", "-T", str(host.vms))]


def test_without_a_reference_xml_the_defaults_and_it_is_remembered_only_with_the_master(
    host, monkeypatch
):
    """No reference XML: the default disk bus and NIC model. Before its master is there
    the XML may still come (it is placed first), so it is looked for again; once the
    master is there, its absence is final."""
    steps = LoadSteps(host.context)
    facts = steps.host_facts(reservation())
    assert (facts.disk_bus, facts.nic_model) == (DEFAULT_DISK_BUS, DEFAULT_NIC_MODEL)
    reference = host.datastore / "linux-Unit-11-v0.xml"
    reference.write_text(
        "<domain><devices><disk device='disk'><target dev='sda' bus='sata'/></disk>"
        "</devices></domain>"
    )
    assert steps.host_facts(reservation()).disk_bus == "sata"  # not remembered absent

    other = reservation("unit-vm2", "linux-Other-12-v0", computer_id=32, image_id=12)
    there = str(host.master("linux-Other-12-v0"))
    # The test driver's files find masters by search only; a pool-backed host answers so.
    monkeypatch.setattr(
        host.context.files, "master_format", lambda path: "qcow2" if path == there else None
    )
    assert steps.host_facts(other).disk_bus == DEFAULT_DISK_BUS
    (host.datastore / "linux-Other-12-v0.xml").write_text(reference.read_text())
    assert steps.host_facts(other).disk_bus == DEFAULT_DISK_BUS  # remembered absent


def test_generate_xml_gives_a_user_mode_guest_its_forwarded_port(host):
    """guest_network "user": one QEMU user-mode NIC, port 22 forwarded; "switches": none."""
    host.master("linux-Unit-11-v0")
    steps, r = LoadSteps(host.context), reservation()
    assert "hostfwd" not in steps.generate_xml(r)["xml"]
    host.context.host = host.context.host.model_copy(
        update={"guest_network": "user", "guest_ssh_ports": (24000, 24999)}
    )
    generated = steps.generate_xml(r)
    assert generated["domain"] == "unit-vm1_Unitimage_11-v0"
    assert "hostfwd=tcp:127.0.0.1:24031-:22" in generated["xml"]


def test_define_refuses_a_domain_libvirt_named_otherwise(host, monkeypatch):
    """libvirt defining another name than the one asked for is the host's error."""

    class Named:
        def name(self) -> str:
            return "someone-else"

    monkeypatch.setattr(domains, "define", lambda conn, xml, host_name: Named())
    with pytest.raises(HypervisorError, match="libvirt defined 'someone-else', expected") as err:
        LoadSteps(host.context).define(reservation(), "<domain/>")
    assert err.value.host == "unit-host"


def test_a_domain_that_cannot_autostart_is_defined_all_the_same(host, monkeypatch, logged):
    """Autostart refused (a transient domain, a read-only config dir) is logged, not fatal."""

    class NoAutostart:
        def name(self) -> str:
            return "unit-vm1_Unitimage_11-v0"

        def setAutostart(self, flag: int) -> None:
            raise libvirt.libvirtError("cannot set autostart")

    monkeypatch.setattr(domains, "define", lambda conn, xml, host_name: NoAutostart())
    with logged() as logs:
        result = LoadSteps(host.context).define(reservation(), "<domain/>")
    assert result["domain"] == "unit-vm1_Unitimage_11-v0"
    assert logs == [
        {
            "event": "autostart_failed",
            "domain": "unit-vm1_Unitimage_11-v0",
            "error": "cannot set autostart",
            "log_level": "warning",
        }
    ]


@pytest.mark.parametrize(("os_type", "timeout"), [("linux", 61.0), ("windows", 92.0)])
def test_post_load_waits_for_the_guest_as_long_as_its_os_may_take(
    host, tmp_path, monkeypatch, os_type, timeout
):
    """post_load_timeout_linux or _windows, by the image's OS; then the OS hook runs with
    the site's scripts, and the guest's connection is closed whatever the hook does."""
    key = tmp_path / "guest_key"
    key.write_text("")
    host.context.settings = Settings(
        guest_key_file=key,
        post_load_timeout_linux=61,
        post_load_timeout_windows=92,
        post_load_scripts_dir=tmp_path,
    )
    host.context.host = host.context.host.model_copy(
        update={"guest_network": "user", "guest_ssh_ports": (24000, 24999), "guest_via_host": False}
    )
    waited: list[float] = []
    closed: list[bool] = []

    class Guest:
        def close(self) -> None:
            closed.append(True)

    guest, loaded = Guest(), reservation(os_type=os_type)

    def connect(target, *, timeout: float) -> Guest:
        assert (target.address, target.port, target.key_file) == ("127.0.0.1", 24031, key)
        waited.append(timeout)
        return guest

    def hook(asked, asked_for, *, scripts_dir):
        assert (asked, asked_for, scripts_dir) == (guest, loaded, tmp_path)
        return {"hostname": "set"}

    ticks = iter([10.0, 12.3456])
    monkeypatch.setattr(
        "vclvirt.provisioning.load.time", SimpleNamespace(monotonic=lambda: next(ticks))
    )

    monkeypatch.setattr("vclvirt.provisioning.load.connect_guest", connect)
    monkeypatch.setattr(hooks, "post_load", hook)
    result = LoadSteps(host.context).post_load(loaded)
    assert waited == [timeout] and closed == [True]
    assert result == {"guest": "127.0.0.1:24031", "ssh_after_s": 2.35, "hostname": "set"}


def test_a_reused_overlay_is_logged(host, logged):
    host.master("linux-Unit-11-v0")
    steps, r = LoadSteps(host.context), reservation()
    steps.pre_define(r)
    with logged() as logs:
        steps.pre_define(r, reuse_overlay=True)
    overlay = str(host.vms / "unit-vm1_11-v0.qcow2")
    assert {"event": "overlay_reused", "overlay": overlay, "log_level": "info"} in logs


def test_pre_define_reports_the_masters_copy_from_the_repository(host):
    """A master only in the repository is copied to the host, its progress reported."""
    (host.root / "repository" / "linux-Unit-11-v0").mkdir()
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            str(host.root / "repository" / "linux-Unit-11-v0" / "linux-Unit-11-v0.qcow2"),
            "4M",
        ],
        check=True,
    )
    reported: list[tuple[int, int]] = []
    result = LoadSteps(host.context).pre_define(
        reservation(), lambda done, total: reported.append((done, total))
    )
    assert result["master_copied"] is True
    assert reported and reported[-1][0] == reported[-1][1] > 0


def test_a_findmnt_that_fails_leaves_vm_path_local(host):
    """findmnt finding nothing (exit 1) is no error: vm_path counts as local."""
    node = on_fake_node(host)
    node.on("findmnt", exit_status=1)
    assert LoadSteps(host.context).host_facts(reservation()).vm_path_is_local is True


def test_a_reference_xml_with_bytes_that_are_not_utf8_is_still_read(host):
    host.master("linux-Unit-11-v0")
    (host.datastore / "linux-Unit-11-v0.xml").write_bytes(
        b"<domain><!-- \xff\xfe --><devices><disk device='disk'>"
        b"<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
    assert LoadSteps(host.context).host_facts(reservation()).disk_bus == "virtio"


def test_generate_xml_names_the_domain_its_uuid_switches_and_management_node(host):
    """The XML carries the domain's stable uuid, the host's switches for the NICs, the
    management node in its description."""
    host.master("linux-Unit-11-v0")
    host.context.host = host.context.host.model_copy(
        update={"private_switch": "br-priv", "public_switch": "br-pub"}
    )
    host.conn.networkDefineXML("<network><name>br-priv</name><bridge name='brpriv0'/></network>")
    generated = LoadSteps(host.context).generate_xml(reservation())
    xml = generated["xml"]
    assert f"<uuid>{domain_uuid('unit-host', generated['domain'])}</uuid>" in xml
    assert "br-priv" in xml and "br-pub" in xml
    assert "management node: unit-tests" in xml


def test_a_switch_that_is_a_libvirt_network_is_joined_as_one_the_other_as_a_bridge(host):
    """The host's networks decide each NIC's source: a libvirt network by name, anything
    else a Linux bridge."""
    host.master("linux-Unit-11-v0")
    host.context.host = host.context.host.model_copy(
        update={"private_switch": "br-priv", "public_switch": "br-pub"}
    )
    host.conn.networkDefineXML("<network><name>br-priv</name><bridge name='brpriv0'/></network>")
    xml = LoadSteps(host.context).generate_xml(reservation())["xml"]
    assert "<source network='br-priv'" in xml.replace('"', "'")
    assert "<source bridge='br-pub'" in xml.replace('"', "'")


@pytest.mark.parametrize(
    ("fails", "step"),
    [
        ("getCapabilities", "generate_xml"),
        ("listAllNetworks", "generate_xml"),
        ("defineXML", "define"),
    ],
)
def test_libvirt_failing_while_loading_is_the_hosts_error(host, fails, step):
    """Reading the host's capabilities or networks, or defining the domain: whichever
    libvirt call fails, the error names the host."""
    host.master("linux-Unit-11-v0")
    host.context.host = host.context.host.model_copy(update={"domain_type": "auto"})
    real = host.conn

    class Conn:
        def __getattr__(self, name):
            if name == fails:
                raise libvirt.libvirtError(f"{name} failed")
            return getattr(real, name)

    host.context.connect = lambda: Conn()
    steps = LoadSteps(host.context)
    with pytest.raises(VclvirtError) as caught:
        if step == "define":
            steps.define(reservation(), steps.generate_xml(reservation())["xml"])
        else:
            steps.generate_xml(reservation())
    assert caught.value.host == "unit-host"
    assert fails in str(caught.value)


def test_the_drivers_hooks_get_the_reservation_the_master_and_the_overlay(host, monkeypatch):
    """A hypervisor driver's pre_define and XML hooks see what they need to act on: the
    reservation, the master's and the overlay's paths."""
    master = host.master("linux-Unit-11-v0")
    seen: list[tuple[object, ...]] = []
    driver = host.context.driver

    def pre_define(r, master_path, overlay_path):
        seen.append(("pre_define", r.reservation_id, master_path, overlay_path))
        return ["noted"]

    def extend_domain_xml(spec, r):
        seen.append(("extend", r.reservation_id))
        return spec

    monkeypatch.setattr(driver, "pre_define", pre_define)
    monkeypatch.setattr(driver, "extend_domain_xml", extend_domain_xml)
    steps = LoadSteps(host.context)
    r = reservation()
    result = steps.pre_define(r)
    steps.generate_xml(r)
    assert result["notes"] == ["noted"]
    assert seen == [
        ("pre_define", r.reservation_id, str(master), host.context.names(r).overlay_path),
        ("extend", r.reservation_id),
    ]


def test_the_load_time_in_the_description_is_utc_whatever_the_local_zone(host, monkeypatch):
    """Operators compare it with logs and records, which are UTC."""
    host.master("linux-Unit-11-v0")
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: never the same wall clock
    time.tzset()
    try:
        xml = LoadSteps(host.context).generate_xml(reservation())["xml"]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    stamp = re.search(r"load time: (\S+ \S+)", xml)
    assert stamp is not None
    loaded = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - loaded).total_seconds()) < 120


def test_a_cached_master_is_found_through_libvirt_without_a_search(host, monkeypatch):
    """`<datastore>/<image>.qcow2` is looked up through the host's files (a libvirt
    storage pool on a real host) first: no recursive search runs on the host for a master
    they know. (The test driver's files have no pools: they are told here.)"""
    master = host.master("linux-Unit-11-v0")
    known = {str(master): "qcow2"}
    monkeypatch.setattr(
        "vclvirt.images.files.CommandFiles.master_format", lambda _self, path: known.get(path)
    )

    def searched(*_args, **_kwargs):
        raise AssertionError("searched the datastore for a master that is in place")

    monkeypatch.setattr("vclvirt.images.master.find_master", searched)
    result = LoadSteps(host.context).pre_define(reservation())
    assert (result["master"], result["master_copied"]) == (str(master), False)
