"""How a worker logs in to a guest: private IP and port 22, or a forwarded port on the host.

Both shapes come from the host's inventory entry (`guest_network`); the code
path is the same SSH transport the hosts use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from vclvirt import cancellation
from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import Settings
from vclvirt.errors import (
    GuestAccessNotConfigured,
    GuestHostKeyChanged,
    PermanentError,
    VclvirtError,
)
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.models import Reservation
from vclvirt.node.ssh import SSHTransport
from vclvirt.node.transport import Stream

# A constant script on the host: a TCP relay to the guest's SSH port (address and port are
# its arguments): netcat if the host has it, else bash's /dev/tcp.
RELAY = [
    "sh",
    "-c",
    'if command -v nc >/dev/null 2>&1; then exec nc "$1" "$2"; fi; '
    'exec bash -c \'exec 3<>"/dev/tcp/$0/$1" || exit 1; cat <&3 & exec cat >&3\' "$1" "$2"',
    "vclvirt-guest-relay",
]


class GuestUnreachable(PermanentError):
    """The guest did not answer SSH in time."""

    code = "GUEST_UNREACHABLE"
    default_hint = "Look at the domain's console (virsh console) to see why it did not boot"


@dataclass(frozen=True)
class GuestTarget:
    name: str
    address: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path | None = None  # a fresh guest's host key cannot be known in advance
    # Decides on the guest's host key instead (pinned per reservation); None accepts any.
    host_key_policy: paramiko.MissingHostKeyPolicy | None = field(default=None, compare=False)
    # Opens the byte stream SSH runs over (a relay on the host); None connects directly.
    via: Callable[[], Stream] | None = field(default=None, compare=False)


def guest_address(host: HostConfig, reservation: Reservation) -> tuple[str, int]:
    """Where the guest answers SSH; GuestAccessNotConfigured when nothing says where."""
    computer = reservation.computer
    if host.guest_network == "user":
        return "127.0.0.1", host.forwarded_ssh_port(computer.id)
    if computer.private_ip:
        return computer.private_ip, 22
    raise GuestAccessNotConfigured(
        f"computer {computer.hostname} has no private_ip, and host {host.name} reaches guests "
        'at their private IP (guest_network = "switches")',
        host=host.name,
        reservation_id=reservation.reservation_id,
        hint="Give the computer a private_ip in the reservation (VCL: computer.privateIPaddress)",
    )


def guest_key(settings: Settings) -> Path:
    """The key guests authorise; GuestAccessNotConfigured when it is unset or unreadable.
    Checked before any guest is contacted: a key that cannot be used says nothing about
    the guest."""
    key = settings.guest_key_file
    if key is None or str(key).strip() in ("", "."):
        raise GuestAccessNotConfigured(
            "no key to log in to guests: VCLVIRT_GUEST_KEY_FILE is unset"
        )
    if not key.is_file() or not os.access(key, os.R_OK):
        raise GuestAccessNotConfigured(
            f"VCLVIRT_GUEST_KEY_FILE={key} is not a file this worker can read",
            hint="Point VCLVIRT_GUEST_KEY_FILE at the private key the images authorise, "
            "readable by the worker",
        )
    return key


def guest_target(
    host: HostConfig,
    reservation: Reservation,
    settings: Settings,
    host_keys: GuestHostKeys | None = None,
) -> GuestTarget:
    """Where and how to log in to the reservation's guest; with `host_keys`, the guest's
    host key is pinned at first contact and required at every later one.

    GuestAccessNotConfigured (before any contact) when the configuration gives no way in."""
    key = guest_key(settings)
    address, port = guest_address(host, reservation)
    computer = reservation.computer
    policy = (
        host_keys.policy(reservation.reservation_id, computer.short_name) if host_keys else None
    )
    return GuestTarget(
        computer.short_name,
        address,
        port,
        settings.guest_user,
        key,
        host_key_policy=policy,
    )


def connect_guest(target: GuestTarget, *, timeout: float, interval: float = 2.0) -> SSHTransport:
    """An SSH transport to the guest once it answers; GuestUnreachable after `timeout`.
    A changed host key is not waited out: GuestHostKeyChanged at once."""
    deadline = time.monotonic() + timeout
    last_error: VclvirtError | None = None
    while True:
        cancellation.check()  # a superseded load stops waiting for its guest
        transport = SSHTransport(target, connect_timeout=min(10.0, max(1.0, timeout)))
        try:
            transport.run(["true"], timeout=30)
            return transport
        except GuestHostKeyChanged:
            transport.close()
            raise
        except VclvirtError as error:
            transport.close()
            last_error = error
        if time.monotonic() + interval >= deadline:
            raise GuestUnreachable(
                f"guest {target.name} at {target.address}:{target.port} did not answer SSH "
                f"within {timeout:g}s (last error: {last_error.message if last_error else '-'})"
            )
        time.sleep(interval)
