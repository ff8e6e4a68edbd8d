"""provisioning.node_status: RELOAD whenever the hypervisor has no running domain with the
expected name; os_type none decides by the image behind the domain's disk."""

from __future__ import annotations

import pytest

from tests.unit._provisioning import make_host, reservation
from vclvirt.provisioning.node_status import NodeStatus

DOMAIN = "unit-vm1_Unitimage_11-v0"


@pytest.fixture
def host(tmp_path):
    return make_host(tmp_path)


def test_reinstall_and_missing_or_stopped_domains_reload(host):
    """state reinstall, no domain, a defined but stopped domain: RELOAD with the reason."""
    status = NodeStatus(host.context)
    assert status.check(reservation(state="reinstall"))["status"] == "RELOAD"
    assert status.check(reservation()) == {
        "status": "RELOAD",
        "reason": f"domain {DOMAIN} is not running",
    }
    host.conn.defineXML(host.domain_xml(DOMAIN, []))
    assert status.check(reservation())["status"] == "RELOAD"


def test_os_type_none_without_a_known_backing_image_reloads(host):
    """A running domain whose disk has no backing chain in its XML runs an unknown image."""
    host.conn.defineXML(host.domain_xml(DOMAIN, [str(host.vms / "unit-vm1_11-v0.qcow2")]))
    host.conn.lookupByName(DOMAIN).create()
    result = NodeStatus(host.context).check(reservation())
    assert result == {
        "status": "RELOAD",
        "reason": f"domain {DOMAIN} runs image unknown, not linux-Unit-11-v0",
    }
