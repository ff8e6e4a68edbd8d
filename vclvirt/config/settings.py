"""Process settings, read from `VCLVIRT_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The longest a host command may take, and a master copy or conversion (which is also the
# longest a load waits for another load's copy). Code that has no Settings at hand (a
# transport, a driver made in a test) defaults to these; workers pass the settings.
COMMAND_TIMEOUT = 300.0
COPY_TIMEOUT = 7200.0


class Settings(BaseSettings):
    """What every vclvirt process needs to know; secrets never go in task arguments."""

    model_config = SettingsConfigDict(env_prefix="VCLVIRT_", extra="ignore")

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str | None = None
    inventory: Path | None = None
    status_ttl_days: int = Field(default=30, gt=0)
    # Recycle a pool process after this many tasks (bounds leaks); 0 never recycles, which
    # simulations on libvirt's test:/// driver need (its domains live in one process).
    max_tasks_per_child: int = Field(default=200, ge=0)

    # -- time on the host: the longest host command is a copy; everything else derives --
    ssh_connect_timeout: float = Field(default=15.0, gt=0)
    command_timeout: float = Field(default=COMMAND_TIMEOUT, gt=0)
    # A master copy or conversion (and the wait for the host-side lock another copy holds).
    copy_timeout: float = Field(default=COPY_TIMEOUT, gt=0)
    # Graceful shutdown: ACPI power button, re-sent every 10 s, destroy after this.
    power_off_timeout: float = Field(default=120.0, gt=0)

    # -- recovery (vclvirt/recovery.py) ---------------------------------------------------
    # A running operation's lease: renewed every third of this by its worker; a worker
    # that dies loses it after this long and a live worker of the host resumes the load.
    lease_ttl: float = Field(default=30.0, ge=3)
    # A worker beats this often and counts as alive for three beats.
    heartbeat_interval: float = Field(default=10.0, gt=0)
    # How often each worker looks for work to dispatch again (expired leases, due retries,
    # lost messages) and for reservations no worker can take.
    reconcile_interval: float = Field(default=2.0, gt=0)
    # A reservation whose host has no live worker fails (NO_WORKER, retryable) after this.
    no_worker_deadline: float = Field(default=900.0, gt=0)
    # A queued message not seen in the broker after this long is sent again.
    lost_message_grace: float = Field(default=30.0, gt=0)
    # Transient errors (host unreachable, libvirtd restarting, busy) are retried with
    # exponential backoff and jitter until this long after the step's first such error —
    # longer than a host reboot — then the step fails with the error's (retryable) code.
    transient_deadline: float = Field(default=900.0, gt=0)
    retry_backoff: float = Field(default=2.0, gt=0)
    retry_backoff_max: float = Field(default=30.0, gt=0)
    # A step whose worker was lost this many times fails (STEP_INTERRUPTED) instead of
    # being resumed again: a reservation that kills its worker must not kill them all.
    max_interruptions: int = Field(default=3, ge=1)

    # -- guests: how post_load and node_status log in -------------------------------------
    guest_user: str = "root"
    guest_key_file: Path | None = None
    post_load_timeout_linux: float = Field(default=600.0, gt=0)
    post_load_timeout_windows: float = Field(default=900.0, gt=0)
    node_status_timeout: float = Field(default=15.0, gt=0)
    # Executable files run in the guest, in name order, at the end of post_load.
    post_load_scripts_dir: Path | None = None

    # -- entry points -----------------------------------------------------------------------
    # HTTP API: bearer token; without one the API only binds to loopback (development).
    api_token: str | None = Field(default=None, repr=False)
    # Prometheus metrics of a worker (0: off).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # HTTP API: a request body must arrive whole within this many seconds (slow clients
    # cannot hold a connection); bodies are capped at models.MAX_DOCUMENT_BYTES.
    api_body_timeout: float = Field(default=10.0, gt=0)

    @property
    def operation_time_limit(self) -> int:
        """Celery's hard limit on one operation: the longest copy, a Windows boot and a
        shutdown, plus a margin. A backstop only: every wait inside has its own timeout."""
        boot = max(self.post_load_timeout_linux, self.post_load_timeout_windows)
        return int(self.copy_timeout + boot + self.power_off_timeout + 600)

    @property
    def visibility_timeout(self) -> int:
        """Redis hands an unacknowledged message out again after this. Correctness does not
        depend on it (a duplicate is dropped at claim); it only avoids needless duplicates."""
        return self.operation_time_limit + 600


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
