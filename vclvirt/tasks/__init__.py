"""Thin Celery tasks: one per operation, each hands its message to vclvirt.runner."""
