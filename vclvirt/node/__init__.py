"""How we reach a hypervisor host: a Transport runs an argv and moves bytes."""

from vclvirt.node.transport import CommandResult, HeldProcess, Transport

__all__ = ["CommandResult", "HeldProcess", "Transport"]
