"""Process settings, read from `VCLVIRT_*` environment variables.

docs/settings.md is generated from this class (`python -m vclvirt.config.settings_doc`);
every field says what it is in its `description`.
"""

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

    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL of the Celery broker; it also holds the status records, "
        "leases and locks. Shown with its password masked.",
    )
    result_backend: str | None = Field(
        default=None,
        description="Celery's result backend (unset: the broker URL). vclvirt keeps no "
        "Celery results; the status record is the truth.",
    )
    inventory: Path | None = Field(
        default=None,
        description="The hosts' inventory (TOML); the CLI's `--inventory` overrides it.",
    )
    status_ttl_days: int = Field(
        default=30,
        gt=0,
        description="Days a status record is kept after its operation was last begun.",
    )
    max_tasks_per_child: int = Field(
        default=200,
        ge=0,
        description="Recycle a worker's pool process after this many tasks (bounds leaks); "
        "0 never recycles, which simulations on libvirt's test:/// driver need.",
    )

    # -- time on the host: the longest host command is a copy; everything else derives --
    ssh_connect_timeout: float = Field(
        default=15.0, gt=0, description="Seconds to open an SSH connection to a host."
    )
    command_timeout: float = Field(
        default=COMMAND_TIMEOUT, gt=0, description="Seconds a host command may take."
    )
    copy_timeout: float = Field(
        default=COPY_TIMEOUT,
        gt=0,
        description="Seconds a master copy or conversion may take, and a load waits for "
        "another load's copy; an operation's hard time limit derives from it.",
    )
    power_off_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Graceful power off: the ACPI power button, re-sent every 10 s, then "
        "destroy after this many seconds.",
    )

    # -- recovery (vclvirt/recovery.py) ---------------------------------------------------
    lease_ttl: float = Field(
        default=30.0,
        ge=3,
        description="Seconds of a running operation's lease, renewed every third of it; a "
        "dead worker's operation is resumed by a live worker of the host after this.",
    )
    heartbeat_interval: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between a worker's heartbeats; it counts as alive for three.",
    )
    reconcile_interval: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between each worker's looks for work to dispatch again "
        "(expired leases, due retries, lost messages) and for work no worker can take.",
    )
    no_worker_deadline: float = Field(
        default=900.0,
        gt=0,
        description="Seconds a reservation waits for a live worker of its host before it "
        "fails with NO_WORKER (retryable).",
    )
    lost_message_grace: float = Field(
        default=30.0,
        gt=0,
        description="Seconds after which a queued message not seen in the broker is sent again.",
    )
    transient_deadline: float = Field(
        default=900.0,
        gt=0,
        description="Transient errors (host unreachable, libvirtd restarting, busy) are "
        "retried until this many seconds after the step's first one, longer than a host "
        "reboot; then the step fails with the error's retryable code.",
    )
    retry_backoff: float = Field(
        default=2.0,
        gt=0,
        description="Seconds of backoff after a step's first transient error; it doubles "
        "with each error, and the wait is drawn at random below it (at least 1 s).",
    )
    retry_backoff_max: float = Field(
        default=30.0, gt=0, description="Seconds the retry backoff grows to at most."
    )
    max_interruptions: int = Field(
        default=3,
        ge=1,
        description="A step whose worker was lost this many times fails "
        "(STEP_INTERRUPTED) instead of being resumed: one reservation must not kill every "
        "worker.",
    )

    # -- guests: how post_load and node_status log in -------------------------------------
    guest_user: str = Field(
        default="root", description="The user post_load, node_status and capture log in as."
    )
    guest_key_file: Path | None = Field(
        default=None,
        description="Private SSH key the images authorise; without it node_status and "
        "post_load fail with GUEST_ACCESS_NOT_CONFIGURED.",
    )
    post_load_timeout_linux: float = Field(
        default=600.0,
        gt=0,
        description="Seconds a Linux guest has to boot and answer SSH in post_load.",
    )
    post_load_timeout_windows: float = Field(
        default=900.0,
        gt=0,
        description="Seconds a Windows guest has to boot and answer SSH in post_load.",
    )
    node_status_timeout: float = Field(
        default=15.0,
        gt=0,
        description="Seconds node_status waits for the guest to answer SSH.",
    )
    post_load_scripts_dir: Path | None = Field(
        default=None,
        description="Executable files run in the guest, in name order, at the end of post_load.",
    )

    # -- entry points -----------------------------------------------------------------------
    api_token: str | None = Field(
        default=None,
        repr=False,
        description="The HTTP API's bearer token, at least 32 characters; empty is none, "
        "and without one the API starts only on loopback (development).",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of a worker's Prometheus metrics; 0 is off.",
    )
    api_body_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a request body has to arrive whole at the HTTP API (bodies "
        "are capped at 64 KiB).",
    )

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
