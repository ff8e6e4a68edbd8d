"""One queue per hypervisor host: the single source of the queue name."""

CONTROL_QUEUE = "vclvirt.control"


def host_queue(host: str) -> str:
    return f"host.{host}"
