"""Thin Celery tasks, one per step, and the chain builders."""
