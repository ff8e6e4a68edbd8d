"""provisioning.node_status: RELOAD whenever the hypervisor has no running domain with the
expected name; os_type none decides by the image behind the domain's disk."""

from __future__ import annotations

import socket
import time

import libvirt
import pytest

from tests.unit._provisioning import make_host, reservation
from vclvirt.config.settings import Settings
from vclvirt.errors import GuestAccessNotConfigured, VclvirtError
from vclvirt.guest import hooks
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


def with_guest_key(host, tmp_path, **settings) -> None:
    """A readable guest key in the settings, as a worker configured for guests has."""
    key = tmp_path / "guest_key"
    key.write_text("not used: no guest is contacted\n")
    host.context.settings = Settings(guest_key_file=key, power_off_timeout=5, **settings)


def running(host, name: str = DOMAIN) -> None:
    host.conn.defineXML(host.domain_xml(name, [str(host.vms / "unit-vm1_11-v0.qcow2")]))
    host.conn.lookupByName(name).create()


@pytest.mark.parametrize("state", ["new", "reload", "reinstall"])
@pytest.mark.parametrize(
    ("key", "why"),
    [
        (None, "VCLVIRT_GUEST_KEY_FILE is unset"),
        ("/nonexistent/guest_key", "is not a file this worker can read"),
    ],
)
def test_no_usable_guest_key_fails_with_its_own_code_and_touches_nothing(host, state, key, why):
    """A running VM that node_status cannot ask about (no key to log in with) is a
    configuration error, GUEST_ACCESS_NOT_CONFIGURED (permanent, with a hint) — never RELOAD;
    the domain keeps running."""
    running(host)
    host.context.settings = Settings(guest_key_file=key, power_off_timeout=5)
    linux = reservation(state=state, os_type="linux")
    with pytest.raises(GuestAccessNotConfigured, match=why) as caught:
        NodeStatus(host.context).check(linux)
    assert not caught.value.transient and "VCLVIRT_GUEST_KEY_FILE" in caught.value.hint
    assert host.conn.lookupByName(DOMAIN).isActive()


def test_a_switches_host_without_private_ip_is_a_configuration_error(host, tmp_path):
    """guest_network "switches" reaches the guest at its private IP: without one there is no
    way in, so node_status fails (naming the field to set) rather than answering RELOAD."""
    running(host)
    with_guest_key(host, tmp_path)
    assert host.context.host.guest_network == "switches"
    linux = reservation(os_type="linux")
    assert linux.computer.private_ip is None
    with pytest.raises(GuestAccessNotConfigured, match="no private_ip") as caught:
        NodeStatus(host.context).check(linux)
    assert "private_ip" in caught.value.hint
    assert host.conn.lookupByName(DOMAIN).isActive()


def test_os_type_none_needs_no_guest_access(host):
    """An image without a guest is judged by the hypervisor alone, key or no key."""
    host.context.settings = Settings(guest_key_file=None, power_off_timeout=5)
    assert NodeStatus(host.context).check(reservation())["status"] == "RELOAD"


def test_a_crashed_domain_reloads(host, tmp_path):
    """A domain kept in a crashed or paused state does not run the guest: RELOAD, saying so."""
    running(host)
    with_guest_key(host, tmp_path)
    host.context.host = host.context.host.model_copy(update={"guest_network": "user"})
    host.conn.lookupByName(DOMAIN).suspend()
    assert NodeStatus(host.context).check(reservation(os_type="linux")) == {
        "status": "RELOAD",
        "reason": f"domain {DOMAIN} is not running (suspended)",
    }


def test_node_status_timeout_is_how_long_the_guest_has_to_answer(host, tmp_path):
    """VCLVIRT_NODE_STATUS_TIMEOUT: a running domain whose guest does not answer SSH is
    reloaded once that many seconds have passed (0.5 here, not the default 15)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the guest never answers
    running(host)
    host.context.host = host.context.host.model_copy(
        update={"guest_network": "user", "guest_ssh_ports": (port, port), "guest_via_host": False}
    )
    with_guest_key(host, tmp_path, node_status_timeout=0.5)
    started = time.monotonic()
    result = NodeStatus(host.context).check(reservation(os_type="linux"))
    assert result["status"] == "RELOAD"
    assert "did not answer SSH within 0.5s" in result["reason"]
    assert time.monotonic() - started < 5


def test_check_guest_access_says_where_the_guest_is_reached_and_with_which_key(host, tmp_path):
    """Nothing contacted: os_type none needs no guest; otherwise the address and the key."""
    status = NodeStatus(host.context)
    assert status.check_guest_access(reservation()) == {"guest": "not contacted: os_type none"}
    host.context.host = host.context.host.model_copy(
        update={"guest_network": "user", "guest_ssh_ports": (24000, 24000)}
    )
    with_guest_key(host, tmp_path)
    assert status.check_guest_access(reservation(os_type="linux")) == {
        "guest": "127.0.0.1:24000",
        "key_file": str(tmp_path / "guest_key"),
    }


def test_reinstall_reloads_even_a_running_domain(host):
    running(host)
    assert NodeStatus(host.context).check(reservation(state="reinstall")) == {
        "status": "RELOAD",
        "reason": "state reinstall always reloads",
    }


def test_os_type_none_running_its_image_is_ready(host):
    """No guest to ask: a running domain whose disk is backed by this image's master is
    READY; backed by another master, RELOAD naming both."""
    overlay = str(host.vms / "unit-vm1_11-v0.qcow2")
    xml = host.domain_xml(DOMAIN, [overlay]).replace(
        f"<source file='{overlay}'/>",
        f"<source file='{overlay}'/><backingStore type='file'>"
        f"<format type='qcow2'/><source file='{host.datastore}/linux-Unit-11-v0.qcow2'/>"
        "</backingStore>",
    )
    assert "backingStore" in xml
    host.conn.defineXML(xml)
    host.conn.lookupByName(DOMAIN).create()
    assert NodeStatus(host.context).check(reservation()) == {
        "status": "READY",
        "reason": "domain runs the image; os_type none has no guest to check",
    }
    other = reservation(image="linux-Other-12-v0", image_id=11)
    assert NodeStatus(host.context).backing_image(host.conn.lookupByName(DOMAIN)) == (
        "linux-Unit-11-v0"
    )
    assert NodeStatus(host.context).check(other)["reason"] == (
        f"domain {DOMAIN} runs image linux-Unit-11-v0, not linux-Other-12-v0"
    )


def test_the_guest_decides_once_it_answers(host, tmp_path, monkeypatch):
    """A running domain whose guest answers: its status and reason, from the guest's tags
    for this reservation; the guest's connection is closed after."""
    running(host)
    host.context.host = host.context.host.model_copy(
        update={"guest_network": "user", "guest_via_host": False}
    )
    with_guest_key(host, tmp_path)
    closed: list[bool] = []
    linux = reservation(os_type="linux")

    class Guest:
        def close(self) -> None:
            closed.append(True)

    guest = Guest()

    def guest_status(asked, asked_for):
        assert (asked, asked_for) == (guest, linux)
        return "POST_LOAD", "the guest was loaded; post_load has not run"

    monkeypatch.setattr("vclvirt.provisioning.node_status.connect_guest", lambda t, timeout: guest)
    monkeypatch.setattr(hooks, "guest_status", guest_status)
    assert NodeStatus(host.context).check(linux) == {
        "status": "POST_LOAD",
        "reason": "the guest was loaded; post_load has not run",
    }
    assert closed == [True]


@pytest.mark.parametrize("fails", ["lookupByName", "state", "XMLDesc"])
def test_libvirt_failing_while_node_status_looks_is_the_hosts_error(host, fails):
    """Not a RELOAD: libvirt failing says nothing about the domain; the error names the host."""
    running(host)
    real = host.conn.lookupByName(DOMAIN)

    class Domain:
        def name(self) -> str:
            return DOMAIN

        def state(self):
            if fails == "state":
                raise libvirt.libvirtError("state failed")
            return real.state()

        def XMLDesc(self, flags: int = 0) -> str:
            raise libvirt.libvirtError("XMLDesc failed")

    class Conn:
        def lookupByName(self, name: str):
            if fails == "lookupByName":
                raise libvirt.libvirtError("lookup failed")
            return Domain()

    host.context.connect = lambda: Conn()
    with pytest.raises(VclvirtError) as caught:
        NodeStatus(host.context).check(reservation())
    assert caught.value.host == "unit-host"
