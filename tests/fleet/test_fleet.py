"""The fleet is real: each host's libvirtd, disk and link are its own (scripts/fleet), and a
real worker on the management side loads a reservation onto one through its address."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

import libvirt
import pytest

from tests.conftest import make_reservation, wait_for
from tests.fleet.conftest import fleet_link, fleet_ssh, library_image, remove_computers
from vclvirt import dispatch
from vclvirt.naming import belongs_to_computer, file_base_name

# A TCG domain with no disk: QEMU starts and stays in its firmware.
PROBE_XML = """<domain type='qemu'>
  <name>{name}</name><uuid>{uuid}</uuid>
  <memory unit='MiB'>32</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>"""


def test_a_fleet_hosts_domain_is_not_seen_by_the_root_libvirtd(fleet):
    """A TCG domain defined and started in fleet-1's libvirtd exists there only: neither the
    management machine's libvirtd nor fleet-2's knows its name or UUID."""
    one, two = fleet.host("fleet-1"), fleet.host("fleet-2")
    name, ident = f"fleet-probe-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    conn = libvirt.open(one.effective_libvirt_uri)
    try:
        domain = conn.defineXML(PROBE_XML.format(name=name, uuid=ident))
        try:
            domain.create()
            assert domain.isActive()
            for uri in ("qemu:///system", two.effective_libvirt_uri):
                other = libvirt.open(uri)
                try:
                    assert name not in [d.name() for d in other.listAllDomains(0)], uri
                    assert ident not in [d.UUIDString() for d in other.listAllDomains(0)], uri
                finally:
                    other.close()
            # its QEMU runs in fleet-1's own mount namespace: its pid file is not here
            assert not Path(f"/run/libvirt/qemu/{name}.pid").exists()
            assert fleet_ssh(one, "test", "-s", f"/run/libvirt/qemu/{name}.pid", check=False)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                domain.destroy()
            domain.undefine()
    finally:
        conn.close()


def test_fleet_hosts_paths_do_not_exist_in_the_management_namespace(fleet):
    """Every directory a host entry names exists on the host and not here; a file made on a
    host's datastore is seen by that host only."""
    marker = f"fleet-marker-{uuid.uuid4().hex[:8]}"
    one, two = fleet.host("fleet-1"), fleet.host("fleet-2")
    try:
        fleet_ssh(one, "touch", f"{one.datastore_path}/{marker}")
        for host in (one, two):
            for path in (
                host.datastore_path,
                host.vm_path,
                host.xml_dir,
                host.fence_dir,
                host.repository_path,
            ):
                assert fleet_ssh(host, "test", "-d", path, check=False).returncode == 0, path
                assert not os.path.lexists(path), f"{path} exists on the management side"
        assert not os.path.lexists(f"{one.datastore_path}/{marker}")
        elsewhere = fleet_ssh(two, "test", "-e", f"{two.datastore_path}/{marker}", check=False)
        assert elsewhere.returncode == 1
    finally:
        fleet_ssh(one, "rm", "-f", f"{one.datastore_path}/{marker}")


@pytest.mark.slow
def test_worker_loads_a_reservation_onto_a_fleet_host(fleet_env, testbed, start_worker):
    """A worker in the root namespace loads onto fleet-1 through its address only: the
    master comes from the library server (sshfs on the host) to the host's own datastore,
    and the domain runs in the host's own libvirtd. A reload of the computer with another
    image leaves exactly one domain, on the new image's overlay; the old overlay is gone."""
    fleet = fleet_env
    host = fleet.host("fleet-1")
    image, computer = "linux-FleetLoad-611-v0", "fleet-load1"
    other = "linux-FleetReload-617-v0"
    library_image(fleet, testbed, image)
    library_image(fleet, testbed, other)
    remove_computers(host, computer)
    for master in (image, other):
        fleet_ssh(host, "rm", "-f", f"{host.datastore_path}/{master}.qcow2")
    start_worker("fleet-1")
    reservation = make_reservation(7611, computer, image, image_id=611, host="fleet-1")
    try:
        final = dispatch.load(reservation).wait(timeout=240)

        assert final.state == "succeeded", final.to_dict()
        conn = libvirt.open(host.effective_libvirt_uri)
        try:
            (domain,) = [
                d for d in conn.listAllDomains(0) if belongs_to_computer(d.name(), computer)
            ]
            assert domain.isActive()
        finally:
            conn.close()
        overlay = f"{host.vm_path}/{file_base_name(computer, 611, 0)}.qcow2"
        assert fleet_ssh(host, "test", "-s", overlay, check=False).returncode == 0
        assert fleet_ssh(host, "test", "-s", f"{host.datastore_path}/{image}.qcow2").returncode == 0
        assert not os.path.lexists(overlay)
        status = dispatch.run(reservation, "node_status").wait(60)
        assert status.step_records["node_status"]["result"]["status"] == "READY"

        reload = make_reservation(7616, computer, other, image_id=617, host="fleet-1")
        assert dispatch.load(reload).wait(timeout=240).state == "succeeded"
        conn = libvirt.open(host.effective_libvirt_uri)
        try:
            (domain,) = [
                d for d in conn.listAllDomains(0) if belongs_to_computer(d.name(), computer)
            ]
            assert domain.isActive() and "617-v0" in domain.name()
        finally:
            conn.close()
        assert fleet_ssh(host, "test", "-e", overlay, check=False).returncode == 1
        new_overlay = f"{host.vm_path}/{file_base_name(computer, 617, 0)}.qcow2"
        assert fleet_ssh(host, "test", "-s", new_overlay, check=False).returncode == 0
    finally:
        remove_computers(host, computer)


@pytest.mark.slow
def test_load_survives_a_link_cut_for_a_few_seconds(fleet_env, testbed, start_worker):
    """fleet-1's link goes down (ip link set ... down) for 5 s while its load copies the
    master from the library (its .part file is there): the load still ends succeeded, with
    the whole master, once the link is back."""
    fleet = fleet_env
    host = fleet.host("fleet-1")
    image, computer = "linux-FleetLinkCut-612-v0", "fleet-cut1"
    library_image(fleet, testbed, image, data="48M")
    fleet_ssh(host, "rm", "-f", f"{host.datastore_path}/{image}.qcow2")
    start_worker("fleet-1")
    reservation = make_reservation(7612, computer, image, image_id=612, host="fleet-1")
    fleet_link("fleet-1", "rate", "100mbit")
    try:
        handle = dispatch.load(reservation)
        part = f"{host.datastore_path}/{image}.qcow2.part"
        wait_for(
            lambda: fleet_ssh(host, "test", "-e", part, check=False).returncode == 0,
            120,
            f"the master copy to begin ({part} on fleet-1)",
        )
        fleet_link("fleet-1", "down")
        time.sleep(5)
        fleet_link("fleet-1", "up")
        final = handle.wait(timeout=300)
        assert final.state == "succeeded", final.to_dict()
        compare = fleet_ssh(
            host,
            "qemu-img",
            "compare",
            "-q",
            f"{host.repository_path}/{image}/{image}.qcow2",
            f"{host.datastore_path}/{image}.qcow2",
            check=False,
        )
        assert compare.returncode == 0, compare.stderr
    finally:
        fleet_link("fleet-1", "up")
        fleet_link("fleet-1", "rate", "1gbit")
        remove_computers(host, computer)
