"""`python -m vclvirt` is the `vclvirt` command."""

from vclvirt.cli import run

run()
