"""provisioning.power on libvirt's test driver: status, on, off, reset of the reservation's
own domain."""

from __future__ import annotations

import pytest

from tests.unit._provisioning import make_host, reservation
from vclvirt.errors import DomainMissing
from vclvirt.provisioning.power import Power

DOMAIN = "unit-vm1_Unitimage_11-v0"


@pytest.fixture
def host(tmp_path):
    made = make_host(tmp_path)
    made.conn.defineXML(made.domain_xml(DOMAIN, []))
    return made


def test_status_on_off_cycle(host):
    """off (already off) → on (started) → on again (not started again). The ACPI shutdown
    itself needs a real guest (the test driver has no ACPI): see the e2e tests."""
    power, r = Power(host.context), reservation()
    assert power.status(r) == {"domain": DOMAIN, "power": "off"}
    off = power.off(r)
    assert (off["domain"], off["method"], off["power"]) == (DOMAIN, "already off", "off")
    assert power.on(r) == {"domain": DOMAIN, "started": True, "power": "on"}
    assert power.on(r) == {"domain": DOMAIN, "started": False, "power": "on"}
    assert power.status(r) == {"domain": DOMAIN, "power": "on"}


def test_reset_power_cycles_the_domain(host):
    """reset of a running domain leaves it running (destroyed, then started)."""
    power, r = Power(host.context), reservation()
    power.on(r)
    before = host.conn.lookupByName(DOMAIN).ID()
    assert power.reset(r) == {"domain": DOMAIN, "power": "on"}
    assert host.conn.lookupByName(DOMAIN).ID() != before


def test_power_of_a_domain_that_is_not_there(host):
    """status says undefined; on/off/reset raise DomainMissing with a hint."""
    power, r = Power(host.context), reservation("unit-vm2", computer_id=32)
    assert power.status(r)["power"] == "undefined"
    for action in (power.on, power.off, power.reset):
        with pytest.raises(DomainMissing, match="is not defined"):
            action(r)
