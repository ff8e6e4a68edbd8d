"""Benchmarks of vclvirt next to its alternatives (issue #6): `python -m bench [--quick]`."""
