"""KVM/QEMU driver: qemu-img on the host, and the driver hooks of the reference's KVM.pm."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from vclvirt.config.inventory import HostConfig
from vclvirt.errors import CommandFailed, ImageInvalid
from vclvirt.hypervisor.domain_xml import DomainSpec
from vclvirt.models import Reservation
from vclvirt.node.transport import Transport

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

    def __init__(self, host: HostConfig, node: Transport, *, copy_timeout: float = 7200.0) -> None:
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
        part = f"{overlay}.part"
        self.node.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", master, "-F", master_format, part],
            timeout=120,
        )
        self.node.run(["mv", "-f", "--", part, overlay], timeout=60)
        return True

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

    def pre_define(self, reservation: Reservation, master: str) -> list[str]:
        return []
