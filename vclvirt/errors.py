"""The one error hierarchy: transient errors are retried, permanent errors fail at once.

Every error carries a stable ``code`` (shown in status records, logs and the CLI),
the host and reservation it concerns when known, and a hint saying what to do.
"""

from __future__ import annotations

from typing import Any, ClassVar


class VclvirtError(Exception):
    """Base class; never raised directly."""

    code: ClassVar[str] = "VCLVIRT_ERROR"
    transient: ClassVar[bool] = False
    default_hint: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        reservation_id: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.host = host
        self.reservation_id = reservation_id
        self.hint = hint if hint is not None else self.default_hint

    def with_context(self, *, host: str | None, reservation_id: int | None) -> VclvirtError:
        """Fill in host and reservation where the raiser did not know them."""
        self.host = self.host or host
        self.reservation_id = self.reservation_id or reservation_id
        return self

    def __str__(self) -> str:
        where = []
        if self.host:
            where.append(f"host {self.host}")
        if self.reservation_id is not None:
            where.append(f"reservation {self.reservation_id}")
        text = f"[{self.code}] {self.message}"
        if where:
            text += f" ({', '.join(where)})"
        if self.hint:
            text += f". {self.hint}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "host": self.host,
            "reservation_id": self.reservation_id,
            "hint": self.hint,
            "transient": self.transient,
        }


class TransientError(VclvirtError):
    """May succeed if tried again later (connection lost, resource busy)."""

    transient = True


class PermanentError(VclvirtError):
    """Will fail again until someone changes the request or the host."""


class InvalidInput(PermanentError):
    """A reservation, inventory entry or argument is malformed."""

    code = "INVALID_INPUT"
    default_hint = "Correct the named field and submit again"

    def __init__(self, message: str, *, field: str | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "field": self.field}


class UnknownHost(PermanentError):
    """The reservation names a host the inventory does not have."""

    code = "UNKNOWN_HOST"
    default_hint = "Add the host to the inventory file or fix the reservation's host"


class UnknownReservation(PermanentError):
    """No status record exists for the reservation (never enqueued, or expired)."""

    code = "UNKNOWN_RESERVATION"
    default_hint = "Check the reservation id (vclvirt failed lists failed ones)"


class WrongWorker(PermanentError):
    """A task reached a worker that serves another host (misrouted message)."""

    code = "WRONG_WORKER"
    default_hint = "Check the routing: each host's worker must consume only host.<name>"


class ImageNotFound(PermanentError):
    """The master image is neither on the host nor in the repository."""

    code = "IMAGE_NOT_FOUND"
    default_hint = "Put the image in the repository or the host's datastore, then retry"


class ImageExists(PermanentError):
    """A capture would overwrite an image that exists already."""

    code = "IMAGE_EXISTS"
    default_hint = "Capture as a new revision, or remove the old files first"


class ImageInvalid(PermanentError):
    """An image file exists but qemu-img does not accept it."""

    code = "IMAGE_INVALID"
    default_hint = "Check the image with 'qemu-img check' and replace it"


class HostKeyRejected(PermanentError):
    """The host's SSH key is unknown or does not match known_hosts."""

    code = "HOST_KEY_REJECTED"
    default_hint = "Verify the host key and update the known_hosts file named in the inventory"


class AuthenticationFailed(PermanentError):
    """The host refused our SSH key."""

    code = "SSH_AUTH_FAILED"
    default_hint = "Install the worker's public key in the host's authorized_keys"


class CommandFailed(PermanentError):
    """A command on the host exited non-zero."""

    code = "COMMAND_FAILED"
    default_hint = "Read the command's error output above; fix the host, then retry"


class HostDiskFull(PermanentError):
    """A filesystem of the host is full ("No space left on device"): retrying does not
    free space, so the step fails at once, naming the path and what is left there."""

    code = "HOST_DISK_FULL"
    default_hint = (
        "Free space on the host's filesystem (stale overlays in vm_path, unused masters in "
        "the datastore), then retry the reservation (vclvirt retry ID)"
    )

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        free_bytes: int | None = None,
        **context: Any,
    ) -> None:
        if path is not None and "hint" not in context:
            context["hint"] = _disk_full_hint(path, free_bytes)
        super().__init__(message, **context)
        self.path = path
        self.free_bytes = free_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "path": self.path, "free_bytes": self.free_bytes}


NO_SPACE = "no space left on device"


def says_no_space(text: str) -> bool:
    """True when an error's text reports ENOSPC, whoever wrote it (qemu-img, libvirt, a
    shell command): that is how it reaches us over every path."""
    return NO_SPACE in text.lower()


def _disk_full_hint(path: str, free_bytes: int | None) -> str:
    free = "an unknown amount" if free_bytes is None else _bytes(free_bytes)
    return (
        f"The filesystem holding {path} ran out of space; {free} free there now. Free "
        "space on it (stale overlays in vm_path, unused masters in the datastore), then "
        "retry the reservation (vclvirt retry ID)"
    )


def _bytes(count: int) -> str:
    """`0 bytes`, `812.0 KiB (831488 bytes)`: the exact figure, and one a person reads."""
    if count < 1024:
        return f"{count} bytes"
    exponent = min((count.bit_length() - 1) // 10, 4)
    unit = ("KiB", "MiB", "GiB", "TiB")[exponent - 1]
    return f"{count / 1024**exponent:.1f} {unit} ({count} bytes)"


class HypervisorError(PermanentError):
    """libvirt refused an operation (invalid XML, unsupported configuration, a disk QEMU
    cannot open...)."""

    code = "LIBVIRT_ERROR"
    default_hint = "Read libvirt's message; fix the host or the image's reference XML"


class DomainMissing(PermanentError):
    """The reservation's domain is not defined on the host."""

    code = "DOMAIN_MISSING"
    default_hint = "Load the reservation first"


class DomainUnusable(PermanentError):
    """The domain is in a state the operation cannot work from (crashed, paused)."""

    code = "DOMAIN_UNUSABLE"
    default_hint = (
        "Look at the domain if you need to (virsh dump, screenshot), then reset it "
        "(vclvirt power reset) or reload the computer"
    )


class GuestAccessNotConfigured(PermanentError):
    """vclvirt has no way to log in to the guest: a configuration error, not the guest's."""

    code = "GUEST_ACCESS_NOT_CONFIGURED"
    default_hint = (
        "Set VCLVIRT_GUEST_KEY_FILE to the private key the images authorise (readable by the "
        'worker), and give the computer a private_ip or the host guest_network = "user"'
    )


class SnapshotMissing(PermanentError):
    """The domain has no snapshot of that name."""

    code = "SNAPSHOT_MISSING"
    default_hint = "List the snapshots (vclvirt snapshot list) and use one of their names"


class Superseded(PermanentError):
    """A newer reservation for the same computer took over; this one stops."""

    code = "SUPERSEDED"
    default_hint = "Nothing to do: the newer reservation owns the computer"


class NodeUnreachable(TransientError):
    """SSH connection to the host failed or dropped."""

    code = "NODE_UNREACHABLE"
    default_hint = "Check that the host is up and sshd answers; the step is retried"


class CommandTimeout(TransientError):
    """A command on the host did not finish in time."""

    code = "COMMAND_TIMEOUT"
    default_hint = "The host may be overloaded; the step is retried"


class HypervisorUnavailable(TransientError):
    """The libvirt connection failed or dropped, or libvirtd was busy (a job held the
    domain's state change lock)."""

    code = "LIBVIRT_UNAVAILABLE"
    default_hint = "Check that libvirtd runs on the host; the step is retried"


class ResourceBusy(TransientError):
    """Another operation holds the resource (computer, image) right now."""

    code = "RESOURCE_BUSY"
    default_hint = "Another reservation is working on it; the step is retried"


class VclProfileUnsupported(PermanentError):
    """A VCL VM host profile asks for something vclvirt does not do (shared disk, VMware paths)."""

    code = "VCL_PROFILE_UNSUPPORTED"
    default_hint = (
        "Give the host a KVM profile with local (dedicated) disks and qcow2 images, "
        "or leave it out with --skip-unsupported"
    )


class VclDatabaseError(PermanentError):
    """VCL's database could not be read (unreachable, refused, or not VCL's schema)."""

    code = "VCL_DATABASE_ERROR"
    default_hint = "Check --database (host, port, user, database name) and the password file"


class InternalError(PermanentError):
    """An unexpected exception: a bug in vclvirt."""

    code = "INTERNAL_ERROR"
    default_hint = "Report it with the worker log lines of this reservation"


class BrokerUnreachable(TransientError):
    """Redis (the broker and the status records) does not answer."""

    code = "BROKER_UNREACHABLE"
    default_hint = "Start Redis or fix VCLVIRT_BROKER_URL, then try again"


class GuestHostKeyChanged(PermanentError):
    """The guest answered with another SSH host key than the one pinned at first contact."""

    code = "GUEST_HOST_KEY_CHANGED"
    default_hint = (
        "Something else may answer at the guest's address: check the network before "
        "trusting it; a new load of the reservation pins the new guest's key"
    )


class NoWorker(PermanentError):
    """No live worker served the reservation's host before the deadline."""

    code = "NO_WORKER"
    default_hint = (
        "Start a worker for the host (vclvirt worker --host NAME), then retry the reservation "
        "(vclvirt retry ID)"
    )


class StepInterrupted(PermanentError):
    """A step was started several times and its worker was lost each time."""

    code = "STEP_INTERRUPTED"
    default_hint = (
        "Read the worker logs around the step's starts (a crash or an out-of-memory kill?); "
        "fix the cause, then retry the reservation"
    )


class LeaseLost(TransientError):
    """This process no longer holds the reservation's lease; another may run it now."""

    code = "LEASE_LOST"
    default_hint = "Nothing to do: recovery dispatches the operation again"


class Fenced(LeaseLost):
    """A write carried a fencing token older than the one the record or the host has seen:
    this process lost its lease or its computer, and someone newer acts now."""

    code = "FENCED"
    default_hint = "Nothing to do: the newer holder finishes the operation; this one stops"
