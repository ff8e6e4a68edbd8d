"""libvirt connections: one per process and host, errors classified transient or permanent."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import defusedxml.ElementTree as SafeET
import libvirt

from vclvirt.config.inventory import HostConfig
from vclvirt.errors import (
    AuthenticationFailed,
    HostDiskFull,
    HostKeyRejected,
    HypervisorError,
    HypervisorUnavailable,
    VclvirtError,
    says_no_space,
)
from vclvirt.hypervisor.tunnel import PROXY, LibvirtTunnel
from vclvirt.node import fence
from vclvirt.node.transport import Transport

# libvirt prints every error to stderr by default, which breaks JSON log streams.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# The connection itself broke (whatever the call): the client's RPC layer, the remote
# driver and the SSH transports report it as an internal or system error of theirs, e.g.
# "client socket is closed", "End of file while reading data", "connection closed due
# to keepalive timeout".
_TRANSPORT_DOMAINS = {
    libvirt.VIR_FROM_RPC,
    libvirt.VIR_FROM_REMOTE,
    libvirt.VIR_FROM_LIBSSH,
    libvirt.VIR_FROM_SSH,
}
_TRANSIENT_CODES = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,  # "Timed out ...: cannot acquire state change lock"
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_LIBSSH,  # transport broke (host key and auth problems are caught first)
    libvirt.VIR_ERR_SSH,
}
_TRANSIENT_TEXTS = (
    "cannot acquire state change lock",  # older libvirt: an internal error
    "end of file while reading data",
    "keepalive timeout",
    "client socket is closed",
    # libvirt's words for a call that failed without a reason: the first call after the
    # SSH session under a qemu+libssh connection died (before the event loop noticed)
    "an error occurred, but the cause is unknown",
)
# Codes whose meaning only the call knows: libvirt's catch-alls.
_CALL_JUDGED_CODES = {libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_SYSTEM_ERROR}


def classify(
    error: libvirt.libvirtError,
    host: str,
    action: str,
    *,
    internal: type[VclvirtError] = HypervisorError,
) -> VclvirtError:
    """Map a libvirt error onto our hierarchy; the message says what we were doing.

    A lost connection is transient and a full disk permanent whatever the call. libvirt's
    catch-all internal and system errors mean what the call makes them mean (a domain
    start that QEMU refuses, a volume qemu-img cannot create): `internal` is the caller's
    judgement of them, permanent unless it says otherwise."""
    message = f"{action}: {(error.get_error_message() or str(error)).strip()}"
    text = message.lower()
    code = error.get_error_code()
    if "host key" in text or "known_hosts" in text or "known hosts" in text:
        return HostKeyRejected(message, host=host)
    if code == libvirt.VIR_ERR_AUTH_FAILED or "authentication failed" in text:
        return AuthenticationFailed(message, host=host)
    if says_no_space(text):
        return HostDiskFull(message, host=host)
    if (
        code in _TRANSIENT_CODES
        or (code in _CALL_JUDGED_CODES and error.get_error_domain() in _TRANSPORT_DOMAINS)
        or any(phrase in text for phrase in _TRANSIENT_TEXTS)
    ):
        return HypervisorUnavailable(message, host=host)
    if code in _CALL_JUDGED_CODES:
        return internal(message, host=host)
    return HypervisorError(message, host=host)


@contextmanager
def libvirt_errors(
    host: str, action: str, *, internal: type[VclvirtError] = HypervisorError
) -> Iterator[None]:
    """Turn libvirt errors raised inside the block into vclvirt errors (`internal`: see
    classify)."""
    try:
        yield
    except libvirt.libvirtError as error:
        raise classify(error, host, action, internal=internal) from None


_connections: dict[tuple[int, str], libvirt.virConnect] = {}
_lock = threading.Lock()
_event_loop_pid: int | None = None


def _ensure_event_loop() -> None:
    """Run libvirt's event loop in a thread of this process (once per process, after fork).

    Without it keepalive does nothing, and a call on a connection whose peer
    vanished waits forever; with it the call fails and the step is retried.
    """
    global _event_loop_pid
    if _event_loop_pid == os.getpid():
        return
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name="libvirt-events", daemon=True).start()
    _event_loop_pid = os.getpid()


def connect(host: HostConfig, node: Transport | None = None) -> libvirt.virConnect:
    """The process's libvirt connection to this host, reopened if it died.

    While this thread holds the host's fence for a computer (node/fence.py), the
    connection of that fence instead: carried through the fence over `node`."""
    held = fence.current(host.name) if node is not None else None
    if held is not None and node is not None and host.libvirt_through_fence:
        return _fenced_connection(host, node, held)
    key = (os.getpid(), host.name)
    with _lock:
        _ensure_event_loop()
        conn = _connections.get(key)
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
            with suppress(libvirt.libvirtError):
                conn.close()
        with libvirt_errors(host.name, f"cannot connect to libvirt at {host.address}"):
            conn = libvirt.open(host.effective_libvirt_uri)
        with suppress(libvirt.libvirtError):  # local drivers have no keepalive
            conn.setKeepAlive(5, 3)
        _connections[key] = conn
        return conn


_fenced: dict[tuple[int, str, int], tuple[libvirt.virConnect, LibvirtTunnel]] = {}
FENCED_OPEN_TIMEOUT = 30.0


def _fenced_connection(
    host: HostConfig, node: Transport, held: fence.HostFence
) -> libvirt.virConnect:
    """One connection per fencing token, through a tunnel the host's fence started. A dead
    one (the host may have killed it for a newer holder) is opened again only through the
    fence, which refuses it if so."""
    key = (os.getpid(), host.name, held.token)
    with _lock:
        _ensure_event_loop()
        found = _fenced.get(key)
        if found is not None:
            with suppress(libvirt.libvirtError):
                if found[0].isAlive():
                    return found[0]
            _close_fenced(key)
        proxy = held.wrap(PROXY)  # wrapped here: the tunnel's thread holds no fence
        tunnel = LibvirtTunnel(lambda: node.open_stream(proxy), host.name)
        # libvirt's open has no deadline of its own: a tunnel that does not answer in time
        # is closed under it, which fails the open.
        deadline = threading.Timer(FENCED_OPEN_TIMEOUT, tunnel.close)
        deadline.start()
        try:
            with libvirt_errors(host.name, f"cannot connect to libvirt on {host.address}"):
                conn = libvirt.open(tunnel.uri)
        except BaseException:
            tunnel.close()
            node.run(["true"])  # a refused fence says so here (Cancelled(Fenced))
            raise
        finally:
            deadline.cancel()
        with suppress(libvirt.libvirtError):
            conn.setKeepAlive(5, 3)
        _fenced[key] = (conn, tunnel)
        return conn


def _close_fenced(key: tuple[int, str, int]) -> None:
    conn, tunnel = _fenced.pop(key)
    with suppress(libvirt.libvirtError):
        conn.close()
    tunnel.close()


def cut_fenced(host_name: str) -> None:
    """The run lost its lease: end its tunnels now (from the lease keeper's thread), so its
    next libvirt call fails even before a newer holder's fence kills them on the host."""
    for key, (_conn, tunnel) in list(_fenced.items()):
        if key[0] == os.getpid() and key[1] == host_name:
            tunnel.close()


def release_fenced(host_name: str) -> None:
    """A run let go of the host's computer: close its fenced connections."""
    with _lock:
        for key in [k for k in _fenced if k[0] == os.getpid() and k[1] == host_name]:
            _close_fenced(key)


def forget(host: HostConfig) -> None:
    """Drop the cached connection (after the host reported it broken)."""
    with _lock:
        conn = _connections.pop((os.getpid(), host.name), None)
    if conn is not None:
        with suppress(libvirt.libvirtError):
            conn.close()


def resolve_domain_type(conn: libvirt.virConnect, configured: str, host: str) -> str:
    """`kvm` or `qemu`; `auto` picks kvm when the host's capabilities offer it."""
    if configured != "auto":
        return configured
    with libvirt_errors(host, "reading host capabilities"):
        caps = SafeET.fromstring(conn.getCapabilities())
    for domain in caps.iterfind("./guest/arch/domain"):
        if domain.get("type") == "kvm":
            return "kvm"
    return "qemu"


def network_names(conn: libvirt.virConnect, host: str) -> frozenset[str]:
    """Names of the host's libvirt networks (active or not)."""
    with libvirt_errors(host, "listing libvirt networks"):
        return frozenset(net.name() for net in conn.listAllNetworks(0))
