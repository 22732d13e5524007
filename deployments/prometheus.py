"""The local stack's Prometheus: Debian's ``prometheus`` binary (``make system-deps``) with a
scrape configuration generated for the processes ``make stack`` starts and Relay's alert
rules (infra/prometheus/rules.yml). Compose and Kubernetes scrape the same four jobs
(infra/prometheus/prometheus.yml, infra/k8s/monitoring.yaml)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import yaml

# The variable that gives a task worker the port of its own /metrics (0: none). Every task
# worker on one host needs its own: the stack hands out base + index.
WORKER_METRICS_PORT = "RELAY_METRICS_WORKER_PORT"


class Job(StrEnum):
    """Prometheus' ``job`` label of each kind of Relay process (the metric catalogue)."""

    API = "relay-api"
    TASK_WORKERS = "relay-task-workers"
    DASK_SCHEDULER = "dask-scheduler"
    DASK_WORKERS = "dask-workers"


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: its targets (``host:port``) and path."""

    job: Job
    targets: tuple[str, ...]
    path: str = "/metrics"


def scrape_config(
    jobs: list[ScrapeJob], rules: Path | None = None, interval_seconds: float = 15.0
) -> dict:
    """A Prometheus configuration that scrapes ``jobs`` and evaluates ``rules``."""
    every = f"{interval_seconds:g}s"
    config: dict = {"global": {"scrape_interval": every, "evaluation_interval": every}}
    if rules is not None:
        config["rule_files"] = [str(rules)]
    config["scrape_configs"] = [
        {
            "job_name": str(job.job),
            "metrics_path": job.path,
            "static_configs": [{"targets": list(job.targets)}],
        }
        for job in jobs
    ]
    return config


def write_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def binary() -> str | None:
    """The ``prometheus`` binary, when installed."""
    return shutil.which("prometheus")


def prometheus_command(config: Path, data_dir: Path, port: int) -> list[str]:
    """Prometheus on 127.0.0.1:``port`` with its own data folder (kept for 7 days)."""
    return [
        binary() or "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        "--storage.tsdb.retention.time=7d",
        f"--web.listen-address=127.0.0.1:{port}",
        # SIGHUP or POST /-/reload picks up a changed config or rules file.
        "--web.enable-lifecycle",
    ]
