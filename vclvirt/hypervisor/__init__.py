"""libvirt connections, domain operations, the domain XML builder and hypervisor drivers."""
