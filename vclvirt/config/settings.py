"""Process settings, read from `VCLVIRT_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """What every vclvirt process needs to know; secrets never go in task arguments."""

    model_config = SettingsConfigDict(env_prefix="VCLVIRT_", extra="ignore")

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str | None = None
    inventory: Path | None = None
    # Longest a single step may run before Celery kills it (hard limit).
    step_time_limit: int = Field(default=7200, gt=0)
    # Must exceed step_time_limit plus the longest retry countdown, or Redis
    # redelivers a still-running step (celery-practice.md §1.3).
    visibility_timeout: int | None = Field(default=None, gt=0)
    # kombu's sweep that restores unacked messages of dead workers (seconds).
    unacked_restore_interval: float = Field(default=10.0, gt=0)
    unacked_restore_throttle: int = Field(default=10, ge=1)
    max_retries: int = Field(default=5, ge=0)
    retry_backoff: float = Field(default=2.0, gt=0)
    retry_backoff_max: float = Field(default=120.0, gt=0)
    status_ttl_days: int = Field(default=30, gt=0)
    # Recycle a pool process after this many tasks (bounds leaks); 0 never recycles, which
    # simulations on libvirt's test:/// driver need (its domains live in one process).
    max_tasks_per_child: int = Field(default=200, ge=0)
    ssh_connect_timeout: float = Field(default=15.0, gt=0)
    command_timeout: float = Field(default=300.0, gt=0)
    copy_timeout: float = Field(default=7200.0, gt=0)
    # Guests: how post_load and node_status log in.
    guest_user: str = "root"
    guest_key_file: Path | None = None
    post_load_timeout_linux: float = Field(default=600.0, gt=0)
    post_load_timeout_windows: float = Field(default=900.0, gt=0)
    node_status_timeout: float = Field(default=15.0, gt=0)
    # Executable files run in the guest, in name order, at the end of post_load.
    post_load_scripts_dir: Path | None = None
    # HTTP API: bearer token; without one the API only binds to loopback (development).
    api_token: str | None = Field(default=None, repr=False)
    # Prometheus metrics of a worker (0: off).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Graceful shutdown: ACPI power button, re-sent every 10 s, destroy after this.
    power_off_timeout: float = Field(default=120.0, gt=0)
    # HTTP API: a request body must arrive whole within this many seconds (slow clients
    # cannot hold a connection); bodies are capped at models.MAX_DOCUMENT_BYTES.
    api_body_timeout: float = Field(default=10.0, gt=0)

    @property
    def effective_visibility_timeout(self) -> int:
        if self.visibility_timeout is not None:
            return self.visibility_timeout
        return self.step_time_limit + int(self.retry_backoff_max) + 600


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
