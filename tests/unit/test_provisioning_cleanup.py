"""provisioning.cleanup on libvirt's test driver with real files: what a computer holds is
removed (short-form domain names included), nothing else; remove_overlay."""

from __future__ import annotations

import subprocess

import libvirt
import pytest

from tests.unit._provisioning import make_host, reservation
from vclvirt.errors import VclvirtError
from vclvirt.provisioning.cleanup import Cleanup, is_own_overlay
from vclvirt.state import keys

LONG = "perf-" + "l" * 45  # 50 characters: its domains are named by its id


@pytest.fixture
def host(tmp_path):
    return make_host(tmp_path)


def overlay(host, name: str, master) -> str:
    path = host.vms / name
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(master), "-F", "qcow2", str(path)],
        check=True,
    )
    return str(path)


def test_is_own_overlay_only_inside_vm_path_and_named_for_the_computer():
    """`<vm_path>/<computer>_<id>-v<rev>.<ext>` only: not a master, not a neighbour's."""
    assert is_own_overlay("/vms/vm1_7-v0.qcow2", "vm1", "/vms")
    assert not is_own_overlay("/images/vm1_7-v0.qcow2", "vm1", "/vms")
    assert not is_own_overlay("/vms/vm10_7-v0.qcow2", "vm1", "/vms")
    assert not is_own_overlay("/vms/linux-X-7-v0.qcow2", "vm1", "/vms")
    assert not is_own_overlay("/vms/sub/vm1_7-v0.qcow2", "vm1", "/vms")


def test_delete_existing_domains_removes_the_short_form_domains_too(host):
    """A long-named computer's domain named by its id, with its overlay, XML files of the
    computer: all gone; the master, a neighbour's domain and files stay."""
    master = host.master("linux-Unit-11-v0")
    r = reservation(LONG, computer_id=77)
    own = overlay(host, f"{LONG}_11-v0.qcow2", master)
    other = overlay(host, "unit-other_11-v0.qcow2", master)
    host.conn.defineXML(host.domain_xml("77", [own, str(master)]))
    host.conn.defineXML(host.domain_xml("78", [other]))
    host.conn.lookupByName("77").create()
    (host.xml / f"{LONG}_11-v0.xml").write_text("<domain/>")
    (host.xml / "unit-other_11-v0.xml").write_text("<domain/>")

    outcome = Cleanup(host.context).delete_existing_domains(r)

    assert outcome == {"deleted_domains": ["77"], "removed_files": [own]}
    assert [d.name() for d in host.conn.listAllDomains(0)] == ["78"]
    assert sorted(p.name for p in host.vms.iterdir()) == ["unit-other_11-v0.qcow2"]
    assert sorted(p.name for p in host.xml.iterdir()) == ["unit-other_11-v0.xml"]
    assert master.exists()


def test_delete_existing_domains_finds_a_bare_computer_name(host):
    """A domain named exactly after the computer (its name fell back) is the computer's."""
    host.conn.defineXML(host.domain_xml("unit-vm1", []))
    host.conn.defineXML(host.domain_xml("unit-vm10", []))
    outcome = Cleanup(host.context).delete_existing_domains(reservation("unit-vm1"))
    assert outcome["deleted_domains"] == ["unit-vm1"]
    assert [d.name() for d in host.conn.listAllDomains(0)] == ["unit-vm10"]


def test_remove_overlay_removes_overlay_and_xml_when_no_domain_uses_it(host):
    """A load that will not run: its overlay and XML file go; the paths are returned."""
    master = host.master("linux-Unit-11-v0")
    r = reservation()
    path = overlay(host, "unit-vm1_11-v0.qcow2", master)
    (host.xml / "unit-vm1_11-v0.xml").write_text("<domain/>")

    removed = Cleanup(host.context).remove_overlay(r)

    assert removed == [path, str(host.xml / "unit-vm1_11-v0.xml")]
    assert list(host.vms.iterdir()) == [] and list(host.xml.iterdir()) == []
    assert master.exists()
    assert Cleanup(host.context).remove_overlay(r) == []  # nothing left: nothing removed


def test_remove_overlay_keeps_everything_while_a_domain_uses_it(host):
    """An overlay some domain runs from (whatever its name) is never removed."""
    master = host.master("linux-Unit-11-v0")
    path = overlay(host, "unit-vm1_11-v0.qcow2", master)
    (host.xml / "unit-vm1_11-v0.xml").write_text("<domain/>")
    host.conn.defineXML(host.domain_xml("someone-else", [path]))

    assert Cleanup(host.context).remove_overlay(reservation()) == []
    assert (host.vms / "unit-vm1_11-v0.qcow2").exists()
    assert (host.xml / "unit-vm1_11-v0.xml").exists()


def test_remove_overlay_says_in_the_log_what_it_kept_or_removed(host, logged):
    """overlay_kept names the overlay and the domains using it; overlay_removed the paths."""
    master = host.master("linux-Unit-11-v0")
    path = overlay(host, "unit-vm1_11-v0.qcow2", master)
    host.conn.defineXML(host.domain_xml("someone-else", [path]))
    with logged() as logs:
        Cleanup(host.context).remove_overlay(reservation())
    assert logs == [
        {"event": "overlay_kept", "overlay": path, "used_by": ["someone-else"], "log_level": "info"}
    ]
    host.conn.lookupByName("someone-else").undefine()
    with logged() as logs:
        Cleanup(host.context).remove_overlay(reservation())
    assert logs == [{"event": "overlay_removed", "removed": [path], "log_level": "info"}]


def test_remove_overlay_names_the_host_when_libvirt_fails(host):
    """libvirt failing while the users of the overlay are looked for is the host's error."""

    class Broken:
        def listAllDomains(self, flags: int = 0):
            raise libvirt.libvirtError("connection reset by peer")

    host.context.connect = lambda: Broken()
    with pytest.raises(VclvirtError) as caught:
        Cleanup(host.context).remove_overlay(reservation())
    assert caught.value.host == "unit-host"


def test_delete_existing_domains_removes_every_domains_files_forgets_the_guest_key_and_logs(
    host, logged
):
    """Two domains of the computer: the files of both are reported; a disk that is not the
    computer's overlay is kept and logged; the pinned guest host key is forgotten (a new
    guest has a new key)."""
    master = host.master("linux-Unit-11-v0")
    r = reservation()
    first = overlay(host, "unit-vm1_11-v0.qcow2", master)
    second = overlay(host, "unit-vm1_11-v1.qcow2", master)
    host.conn.defineXML(host.domain_xml("unit-vm1_Unitimage_11-v0", [first, str(master)]))
    host.conn.defineXML(host.domain_xml("unit-vm1", [second]))
    keys_ = host.context.guest_host_keys
    keys_.redis.set(keys.guest_host_key(r.reservation_id), "ssh-ed25519 AAAA")

    with logged() as logs:
        outcome = Cleanup(host.context).delete_existing_domains(r)

    assert sorted(outcome["deleted_domains"]) == ["unit-vm1", "unit-vm1_Unitimage_11-v0"]
    assert sorted(outcome["removed_files"]) == sorted([first, second])
    assert keys_.pinned(r.reservation_id) is None
    assert {
        "event": "disk_kept",
        "domain": "unit-vm1_Unitimage_11-v0",
        "path": str(master),
        "reason": "not an overlay of this computer inside vm_path",
        "log_level": "warning",
    } in logs
    assert {
        "event": "domain_deleted",
        "domain": "unit-vm1_Unitimage_11-v0",
        "removed": [first],
        "log_level": "info",
    } in logs


@pytest.mark.parametrize(
    "fails", ["listAllDomains", "destroy", "listAllSnapshots", "XMLDesc", "undefineFlags"]
)
def test_libvirt_failing_during_cleanup_is_the_hosts_error(host, fails):
    """Whichever libvirt call fails, the error names the host it failed on."""
    host.conn.defineXML(host.domain_xml("unit-vm1", []))
    host.conn.lookupByName("unit-vm1").create()
    real = host.conn

    class Domain:
        def __init__(self, domain):
            self.domain = domain

        def __getattr__(self, name):
            if name == fails:
                raise libvirt.libvirtError(f"{name} failed")
            return getattr(self.domain, name)

    class Conn:
        def __getattr__(self, name):
            if name == fails:
                raise libvirt.libvirtError(f"{name} failed")
            if name == "listAllDomains":
                return lambda flags=0: [Domain(d) for d in real.listAllDomains(flags)]
            return getattr(real, name)

    host.context.connect = lambda: Conn()
    with pytest.raises(VclvirtError) as caught:
        Cleanup(host.context).delete_existing_domains(reservation("unit-vm1"))
    assert caught.value.host == "unit-host"


def test_delete_domain_keeps_the_overlays_something_else_still_owns_and_says_so(host, logged):
    """The sweep removes a domain whose overlay a record still owns: the overlay stays
    (and the log says why), the computer's other overlay goes, the domain is undefined."""
    master = host.master("linux-Unit-11-v0")
    owned = overlay(host, "unit-vm1_11-v0.qcow2", master)
    stray = overlay(host, "unit-vm1_11-v1.qcow2", master)
    host.conn.defineXML(host.domain_xml("unit-vm1", [owned, stray]))
    domain = host.conn.lookupByName("unit-vm1")

    with logged() as logs:
        removed = Cleanup(host.context).delete_domain(domain, "unit-vm1", keep=[owned])

    assert removed == [stray]
    assert (host.vms / "unit-vm1_11-v0.qcow2").exists()
    assert not (host.vms / "unit-vm1_11-v1.qcow2").exists()
    assert "unit-vm1" not in host.conn.listDefinedDomains()
    assert {
        "event": "disk_kept",
        "domain": "unit-vm1",
        "path": owned,
        "reason": "still owned",
        "log_level": "info",
    } in logs
