"""vclvirt: distributed VM provisioning for lab reservations on KVM hosts."""

__version__ = "0.1.0"
