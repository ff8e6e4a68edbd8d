"""KVM/QEMU driver: qemu-img on the host, and the driver hooks of the reference's KVM.pm."""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable
from typing import Any

import structlog

from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import COPY_TIMEOUT
from vclvirt.errors import CommandFailed, ImageInvalid
from vclvirt.hypervisor.domain_xml import DomainSpec
from vclvirt.models import Reservation
from vclvirt.node.transport import Transport, write_file

log = structlog.get_logger(__name__)

VMWARE_SERVICES = ("VClone", "vmci", "vmmouse", "vmscsi", "VMTools", "vmx_svga", "vmxnet")


def windows_registry_patch() -> str:
    """A .reg file that disables the VMware services (Start = 4) a VMware-made image carries."""
    lines = ["Windows Registry Editor Version 5.00", ""]
    for service in VMWARE_SERVICES:
        lines += [
            f"[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\{service}]",
            '"Start"=dword:00000004',
            "",
        ]
    return "\r\n".join(lines)


_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def _progress_parser(progress: Callable[[float], None]) -> Callable[[bytes], None]:
    """Feed `qemu-img convert -p` output ("(12.34/100%)") to progress as a fraction."""

    def feed(chunk: bytes) -> None:
        found = _PERCENT.findall(chunk)
        if found:
            progress(float(found[-1]) / 100)

    return feed


class KvmDriver:
    """Disk operations with qemu-img over the host transport."""

    name = "kvm"

    def __init__(
        self, host: HostConfig, node: Transport, *, copy_timeout: float = COPY_TIMEOUT
    ) -> None:
        self.host = host
        self.node = node
        self.copy_timeout = copy_timeout

    def image_info(self, path: str) -> dict[str, Any]:
        # -U: read even while a running domain holds the image's lock.
        result = self.node.run(
            ["qemu-img", "info", "-U", "--output=json", path], check=False, timeout=120
        )
        if not result.ok:
            raise ImageInvalid(
                f"qemu-img info {path} failed: {result.stderr.decode(errors='replace').strip()}",
                host=self.host.name,
            )
        info: dict[str, Any] = json.loads(result.stdout)
        return info

    def convert(
        self,
        source: str,
        destination: str,
        fmt: str,
        *,
        compat: str | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        """Write a standalone copy of source (its whole backing chain flattened).

        `compat` (e.g. "0.10", qcow2 v2 for old readers, VCL-911) is dropped when this
        qemu-img refuses it, as the reference does.
        """
        argv = ["qemu-img", "convert", "-p", "-O", fmt, source, destination]
        on_output = _progress_parser(progress) if progress else None
        if compat:
            result = self.node.run(
                [*argv[:5], "-o", f"compat={compat}", *argv[5:]],
                timeout=self.copy_timeout,
                check=False,
                on_output=on_output,
            )
            if result.ok:
                return
            if "compat" not in result.stderr.decode(errors="replace").lower():
                result.check(self.host.name)
        self.node.run(argv, timeout=self.copy_timeout, on_output=on_output)

    def verify(self, path: str, expected_format: str | None = None) -> str:
        """Raise ImageInvalid unless qemu-img reads the file as `expected_format` (when
        given) and finds it consistent; returns the format it detected."""
        info = self.image_info(path)
        detected = str(info.get("format"))
        if expected_format and detected != expected_format:
            raise ImageInvalid(
                f"{path} should be {expected_format} but qemu-img reads it as {detected}",
                host=self.host.name,
            )
        if detected in ("qcow2", "qed", "vdi", "vhdx", "vmdk"):
            result = self.node.run(["qemu-img", "check", "-U", path], check=False, timeout=600)
            if not result.ok:
                raise ImageInvalid(
                    f"qemu-img check {path} found errors: {result.text.strip()[-500:]}",
                    host=self.host.name,
                )
        return detected

    def ensure_overlay(self, master: str, master_format: str, overlay: str) -> bool:
        if self._is_overlay_of(overlay, master, master_format):
            return False
        self.create_overlay(master, master_format, overlay)
        return True

    def create_overlay(self, master: str, master_format: str, overlay: str) -> None:
        # Whatever is at the path goes first: qemu-img would write through a symlink into
        # the file it points to (a master, say). A half-created overlay is not the right
        # one for ensure_overlay, so it is recreated.
        self.node.run(
            [
                "sh",
                "-c",
                'mkdir -p -- "$(dirname -- "$1")" && rm -f -- "$1" && shift && exec "$@"',
                "sh",
                overlay,
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                master,
                "-F",
                master_format,
                overlay,
            ],
            timeout=120,
        )

    def _is_overlay_of(self, overlay: str, master: str, master_format: str) -> bool:
        try:
            info = self.image_info(overlay)
        except (ImageInvalid, CommandFailed):
            return False
        return (
            info.get("format") == "qcow2"
            and info.get("backing-filename") == master
            and info.get("backing-filename-format") == master_format
        )

    def extend_domain_xml(self, spec: DomainSpec, reservation: Reservation) -> DomainSpec:
        return spec

    def pre_define(self, reservation: Reservation, master: str, overlay: str) -> list[str]:
        """Windows images: disable the VMware services in the registry (as VCL does).

        The patch goes into the VM's own overlay on every load, never into the shared
        master, so it holds whether or not the master was just copied (VCL missed cached ones).
        """
        if not reservation.image.is_windows:
            return []
        found = self.node.run(["sh", "-c", "command -v virt-win-reg"], check=False)
        if not found.ok:
            note = "virt-win-reg is not installed on the host: Windows registry not patched"
            log.warning("windows_registry_not_patched", reason=note, overlay=overlay)
            return [note]
        reg_file = f"/tmp/{posixpath.basename(overlay)}.reg"
        write_file(self.node, reg_file, windows_registry_patch().encode())
        try:
            self.node.run(["virt-win-reg", "--merge", overlay, reg_file], timeout=600)
        finally:
            self.node.run(["rm", "-f", "--", reg_file], check=False)
        return [f"Windows registry patched in {overlay}: VMware services disabled"]
