"""Settings groups of operating Relay: worker heartbeats, health checks, metrics.

Groups of the one settings object (``RELAY_WORKERS_<FIELD>``, ``settings.workers``, ...),
kept in their own module so that relay_settings.py stays readable. Nothing here reads the
environment: ``RelaySettings`` does.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _OperationsGroup(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)  # as relay_settings' groups


class WorkersSettings(_OperationsGroup):
    """Worker heartbeats (how often each long-lived worker says it is alive) and how a task
    worker stops (docs/ops-health.md)."""

    heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between two heartbeats of a task or batch worker; one silent for "
        "3 of its heartbeats is shown stale.",
    )
    forget_seconds: float = Field(
        default=86400.0,
        gt=0,
        description="A worker silent this long is removed from the list of workers.",
    )
    stop_seconds: float = Field(
        default=20.0,
        gt=0,
        description="A task worker told to stop (SIGTERM, Ctrl-C) gives its runs in flight and "
        "Prefect's unsent events this long, then exits (leases bring back what it left).",
    )


class HealthSettings(_OperationsGroup):
    """The readiness checks and the worker census of the API and the CLI."""

    timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description="How long one check (store, Prefect API, Dask scheduler) may take before "
        "it counts as failed.",
    )


class MetricsSettings(_OperationsGroup):
    """Prometheus metrics of the API and the task workers (docs/ops-metrics.md)."""

    token: SecretStr = Field(default=SecretStr(""), description="Bearer token for /metrics.")
    http: bool = Field(default=True, description="The API's per-route request metrics.")
    worker_port: int = Field(
        default=0, ge=0, le=65535, description="A task worker's /metrics port (0: none)."
    )
    worker_host: str = Field(default="127.0.0.1", description="Where it binds.")
    multiproc_dir: str = Field(
        default="", description="API processes' metric files (default .relay/metrics/api-PORT)."
    )
    prefect_timeout_seconds: float = Field(
        default=2.0, gt=0, le=30, description="A scrape's wait for Prefect before skipping it."
    )
