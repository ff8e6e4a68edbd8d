"""libvirt error classification and host queries, with real libvirt errors."""

from __future__ import annotations

import libvirt
import pytest

from vclvirt.config.inventory import HostConfig
from vclvirt.errors import HostDiskFull, HypervisorError, HypervisorUnavailable
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


# --- Each family of libvirt error, judged (the messages are libvirt 9.0's own) ------------


def libvirt_error(code: int, domain: int, message: str) -> libvirt.libvirtError:
    """A libvirtError as libvirt raises it: code, error domain, message."""
    error = libvirt.libvirtError(message)
    error.err = (code, domain, message, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return error


INTERNAL, SYSTEM = libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_SYSTEM_ERROR
RPC, QEMU, STORAGE = libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_QEMU, libvirt.VIR_FROM_STORAGE
NONE = libvirt.VIR_FROM_NONE

LOST_CONNECTION = [
    # the connection's socket or SSH session died (sshd killed, host rebooted)
    (INTERNAL, RPC, "internal error: client socket is closed"),
    (SYSTEM, RPC, "End of file while reading data: Input/output error"),
    (SYSTEM, RPC, "Cannot write data: Broken pipe"),
    (INTERNAL, RPC, "internal error: connection closed due to keepalive timeout"),
    (SYSTEM, libvirt.VIR_FROM_REMOTE, "Cannot recv data: Connection reset by peer"),
    (libvirt.VIR_ERR_LIBSSH, libvirt.VIR_FROM_LIBSSH, "libssh: channel failed to read data"),
    (INTERNAL, libvirt.VIR_FROM_LIBSSH, "internal error: libssh transport broken"),
    (libvirt.VIR_ERR_SSH, libvirt.VIR_FROM_SSH, "SSH transport error"),
    (libvirt.VIR_ERR_NO_CONNECT, NONE, "no connection driver available"),
    (libvirt.VIR_ERR_RPC, RPC, "RPC error"),
    (SYSTEM, NONE, "End of file while reading data: Input/output error"),
    # the first call after the SSH session under the connection died (libssh transport)
    (INTERNAL, NONE, "An error occurred, but the cause is unknown"),
    # the domain is busy with another job: the next attempt gets the lock
    (
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        QEMU,
        "Timed out during operation: cannot acquire state change lock "
        "(held by monitor=remoteDispatchDomainCreate)",
    ),
    (INTERNAL, QEMU, "internal error: cannot acquire state change lock"),
]


@pytest.mark.parametrize(("code", "domain", "message"), LOST_CONNECTION)
def test_a_lost_connection_or_a_busy_domain_is_transient_whatever_the_call(code, domain, message):
    """Transient even where the call judges its internal errors permanent: the call never
    reached the host, or the host was busy."""
    error = classify(
        libvirt_error(code, domain, message), "kvm1", "starting C_x", internal=HypervisorError
    )
    assert type(error) is HypervisorUnavailable
    assert error.transient


CALL_JUDGED = [
    # QEMU cannot open the disk (found at a domain start)
    (
        INTERNAL,
        QEMU,
        "internal error: qemu unexpectedly closed the monitor: qemu-system-x86_64: "
        "-blockdev {...}: Image is not in qcow2 format",
    ),
    (
        SYSTEM,
        STORAGE,
        "Cannot access storage file '/vms/C_x.qcow2' (as uid:64055, gid:64055): "
        "No such file or directory",
    ),
    # libvirt refuses the definition
    (SYSTEM, QEMU, "Cannot check QEMU binary /nonexistent/qemu: No such file or directory"),
    # qemu-img, run by a storage pool, cannot make the overlay
    (
        INTERNAL,
        NONE,
        "internal error: Child process (/usr/bin/qemu-img create -f qcow2 ...) unexpected "
        "exit status 1: qemu-img: Could not open backing file: Permission denied",
    ),
]


@pytest.mark.parametrize(("code", "domain", "message"), CALL_JUDGED)
def test_internal_and_system_errors_are_what_the_call_judges_them(code, domain, message):
    """libvirt's catch-alls: permanent by default and where the call says so (start,
    define, volume creation), transient where the call knows them to pass (destroy)."""
    raw = libvirt_error(code, domain, message)
    assert type(classify(raw, "kvm1", "starting C_x")) is HypervisorError
    assert type(classify(raw, "kvm1", "x", internal=HypervisorError)) is HypervisorError
    judged = classify(raw, "kvm1", "destroying C_x", internal=HypervisorUnavailable)
    assert type(judged) is HypervisorUnavailable


REFUSED_WHATEVER_THE_CALL = [
    (
        libvirt.VIR_ERR_XML_ERROR,
        libvirt.VIR_FROM_DOMAIN,
        "XML error: Invalid value for attribute 'bus' in element 'target': 'nosuchbus'.",
    ),
    (
        libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
        QEMU,
        "unsupported configuration: Emulator '/usr/bin/qemu-system-x86_64' does not "
        "support virt type 'xen'",
    ),
    (
        libvirt.VIR_ERR_XML_DETAIL,
        libvirt.VIR_FROM_XML,
        "(domain_definition):1: Couldn't find end of Start Tag domain line 1",
    ),
    (libvirt.VIR_ERR_OPERATION_FAILED, QEMU, "operation failed: domain is not running"),
    # a transport's own domain, but not a broken connection
    (
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_FROM_REMOTE,
        "this function is not supported by the connection driver: virDomainFoo",
    ),
]


@pytest.mark.parametrize(("code", "domain", "message"), REFUSED_WHATEVER_THE_CALL)
def test_a_refused_definition_is_permanent_whatever_the_call(code, domain, message):
    """Specific codes mean what they say: the call's judgement of catch-alls does not apply."""
    raw = libvirt_error(code, domain, message)
    assert type(classify(raw, "kvm1", "x", internal=HypervisorUnavailable)) is HypervisorError


NO_SPACE = [
    # a storage pool's qemu-img create of an overlay (libvirt 9.0, vm_path full)
    (
        INTERNAL,
        NONE,
        "internal error: Child process (/usr/bin/qemu-img create -f qcow2 -b /images/m.qcow2 "
        "-o backing_fmt=qcow2,compat=1.1 /vms/C_x.qcow2) unexpected exit status 1: "
        "qemu-img: /vms/C_x.qcow2: Could not write qcow2 header: No space left on device\n",
    ),
    # a volume allocated in full (an XML copy)
    (
        SYSTEM,
        STORAGE,
        "cannot allocate 4096 bytes in file '/xml/C_x.xml': No space left on device",
    ),
    # libvirt's own files (a definition, a snapshot)
    (
        libvirt.VIR_ERR_OPERATION_FAILED,
        QEMU,
        "operation failed: failed to write /var/lib/libvirt/qemu/x: No space left on device",
    ),
]


@pytest.mark.parametrize(("code", "domain", "message"), NO_SPACE)
def test_no_space_left_is_host_disk_full_whatever_the_call(code, domain, message):
    """ENOSPC is permanent (retrying frees no space) even where internal errors pass."""
    raw = libvirt_error(code, domain, message)
    error = classify(raw, "kvm1", "creating overlay /vms/C_x.qcow2", internal=HypervisorUnavailable)
    assert type(error) is HostDiskFull
    assert not error.transient
    assert error.code == "HOST_DISK_FULL"
    assert error.message.startswith("creating overlay /vms/C_x.qcow2: ")


def test_libvirt_errors_passes_the_calls_judgement():
    """libvirt_errors(internal=...) is classify's: a QEMU refusal inside it comes out so."""
    raw = libvirt_error(*CALL_JUDGED[0])
    with (
        pytest.raises(HypervisorUnavailable),
        libvirt_errors("kvm1", "x", internal=HypervisorUnavailable),
    ):
        raise raw
    with pytest.raises(HypervisorError), libvirt_errors("kvm1", "x"):
        raise raw
