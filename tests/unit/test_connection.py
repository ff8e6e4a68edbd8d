"""libvirt error classification and host queries, with real libvirt errors."""

from __future__ import annotations

import libvirt
import pytest

from vclvirt.config.inventory import HostConfig
from vclvirt.errors import HypervisorError, HypervisorUnavailable
from vclvirt.hypervisor.connection import (
    classify,
    connect,
    forget,
    libvirt_errors,
    network_names,
    resolve_domain_type,
)


@pytest.fixture(scope="module")
def conn():
    """A connection to libvirt's test driver."""
    connection = libvirt.open("test:///default")
    yield connection
    connection.close()


def raised(call) -> libvirt.libvirtError:
    """The libvirtError that call() raises."""
    with pytest.raises(libvirt.libvirtError) as caught:
        call()
    return caught.value


def test_missing_domain_is_permanent(conn):
    """'Domain not found' is a permanent HypervisorError with the action in the message."""
    error = classify(raised(lambda: conn.lookupByName("nope")), "kvm1", "looking up nope")
    assert type(error) is HypervisorError
    assert not error.transient
    assert error.host == "kvm1"
    assert error.message.startswith("looking up nope: ")
    assert "not found" in error.message.lower()


def test_invalid_xml_is_permanent(conn):
    """An XML parse error from defineXML is a permanent HypervisorError."""
    error = classify(raised(lambda: conn.defineXML("<domain")), "kvm1", "defining")
    assert type(error) is HypervisorError


def test_invalid_operation_is_permanent(conn):
    """Destroying a domain that is not running is a permanent error."""
    domain = conn.defineXML(
        "<domain type='test'><name>classify_off</name><memory>524288</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    try:
        error = classify(raised(domain.destroy), "kvm1", "destroying")
    finally:
        domain.undefine()
    assert type(error) is HypervisorError


def test_connection_refused_is_transient():
    """A refused connection to libvirtd is HypervisorUnavailable (retried)."""
    error = classify(
        raised(lambda: libvirt.open("qemu+tcp://127.0.0.1:1/system")), "kvm1", "connecting"
    )
    assert type(error) is HypervisorUnavailable
    assert error.transient


def test_libvirt_errors_context_manager_converts(conn):
    """Inside libvirt_errors a libvirtError comes out as a vclvirt error, unchained."""
    with pytest.raises(HypervisorError) as caught, libvirt_errors("kvm1", "looking up"):
        conn.lookupByName("nope")
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_libvirt_errors_lets_other_exceptions_through():
    """Non-libvirt exceptions are not converted."""
    with pytest.raises(KeyError), libvirt_errors("kvm1", "x"):
        raise KeyError("k")


def test_auto_domain_type_without_kvm_is_qemu(conn):
    """`auto` resolves to qemu when capabilities offer no kvm domain type."""
    assert resolve_domain_type(conn, "auto", "kvm1") == "qemu"


@pytest.mark.parametrize("configured", ["kvm", "qemu"])
def test_configured_domain_type_is_used(conn, configured):
    """An explicit domain type is used without asking the host."""
    assert resolve_domain_type(conn, configured, "kvm1") == configured


def test_network_names(conn):
    """network_names lists the host's libvirt networks (the test driver has `default`)."""
    assert network_names(conn, "kvm1") == frozenset({"default"})


def test_connect_reuses_and_forget_drops(tmp_path):
    """connect caches one connection per host; forget closes and drops it."""
    host = HostConfig(
        name="testhost",
        address="localhost",
        key_file=tmp_path / "k",
        known_hosts=tmp_path / "kh",
        datastore_path="/var/lib/libvirt/images",
        libvirt_uri="test:///default",
    )
    first = connect(host)
    assert connect(host) is first
    forget(host)
    second = connect(host)
    assert second is not first
    assert second.getType() == "TEST"
    forget(host)
