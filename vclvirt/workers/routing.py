"""One queue per hypervisor host: the single source of the queue name."""


def host_queue(host: str) -> str:
    return f"host.{host}"
