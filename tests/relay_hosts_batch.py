"""The batch part of Relay's multi-host layout (tests/relay_hosts.py): ``batch-N`` hosts with a
``batch-video`` Prefect process worker each, as compose's ``worker-batch-video`` runs them,
and the deployments compose's bootstrap service makes (``prefect --no-prompt deploy --all``).

Each ``batch-N`` host runs ``prefect worker start --pool batch-video --type process --limit 4
--with-healthcheck``; readiness is that worker's own healthcheck (``/health`` on 8080), as
compose's is.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tests.netns import Host
from tests.relay_hosts import BIN, Layout, _answers
from tests.videos import MadeVideo, make_catalogue

BATCH_POOL = "batch-video"
WORKER_HEALTH_PORT = 8080  # PREFECT_WORKER_WEBSERVER_PORT's default, compose's healthcheck


def deploy(layout: Layout) -> str:
    """``prefect --no-prompt deploy --all`` from the project root on the prefect host, as the
    bootstrap service runs it after ``python -m cli bootstrap``; its output."""
    command = [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"]
    return layout.net.hosts["prefect"].run(command, layout.relay_env(), timeout=300)


def start_batch_worker(layout: Layout, name: str) -> Host:
    """Host ``name`` with compose's worker-batch-video: a process worker, restarted on exit."""
    host = layout.net.hosts.get(name) or layout.net.add(name)
    env = layout.service_env("worker-batch-video")
    command = [str(BIN / "prefect"), "worker", "start", "--pool", BATCH_POOL]
    command += ["--type", "process", "--limit", "4", "--with-healthcheck"]
    host.start("batch-worker", command, env, restart=True)
    return host


def wait_batch_workers(layout: Layout, names: list[str], limit: float = 120.0) -> None:
    """Until every host of ``names`` answers its process worker's healthcheck."""

    def healthy() -> bool:
        addresses = [layout.net.hosts[name].address for name in names]
        urls = [f"http://{address}:{WORKER_HEALTH_PORT}/health" for address in addresses]
        return all(_answers(layout.client, url) for url in urls)

    layout.wait(healthy, limit, f"the batch workers of {names} never became healthy")


def videos_on_shared_folder(layout: Layout, count: int) -> tuple[Path, list[MadeVideo]]:
    """``count`` tiny videos (1-2.5 s of speech) in the shared data folder."""
    folder = layout.net.data / "incoming"
    return folder, make_catalogue(folder, count, seconds=(1.0, 2.5), seed=11)


@dataclass(frozen=True)
class Drained:
    """A batch's processing log, read from the job store."""

    batch: dict[str, Any]
    videos: list[dict[str, Any]]
    attempts: list[dict[str, Any]]

    def done_per_video(self) -> Counter[int]:
        return Counter(a["video_id"] for a in self.attempts if a["outcome"] == "done")

    def span_seconds(self) -> float:
        """From the first claim to the last video finished: the processing itself."""
        ends = [a["finished_at"] for a in self.attempts if a["finished_at"]]
        return (max(ends) - min(a["started_at"] for a in self.attempts)).total_seconds()

    def mean_video_seconds(self) -> float:
        """What one video took its worker on average (extract, transcribe, write)."""
        seconds = [a["seconds"] for a in self.attempts if a["outcome"] == "done"]
        return sum(seconds) / len(seconds)

    def of(self, host: str) -> list[dict[str, Any]]:
        """The attempts of the workers on ``host`` (a worker is ``host:pid:tag``)."""
        return [a for a in self.attempts if a["worker"].split(":")[0] == host]


def claims_by_host(layout: Layout) -> tuple[Counter[str], int]:
    """Videos held now per host (from their leases' owners), and videos done."""
    with psycopg.connect(layout.relay_database_url(), autocommit=True) as connection:
        rows = connection.execute("SELECT status, lease_owner FROM video").fetchall()
    held = Counter(owner.split(":")[0] for status, owner in rows if status == "claimed")
    return held, sum(1 for status, _ in rows if status == "done")


def held_by(layout: Layout, host: str) -> list[int]:
    """The videos whose lease a worker on ``host`` holds."""
    with psycopg.connect(layout.relay_database_url(), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT id FROM video WHERE status = 'claimed' AND lease_owner LIKE %s",
            (f"{host}:%",),
        ).fetchall()
    return [row[0] for row in rows]


def drained(layout: Layout, batch_id: str) -> Drained:
    """The batch row, its videos and their attempts."""
    dicts = psycopg.rows.dict_row
    with psycopg.connect(layout.relay_database_url(), autocommit=True, row_factory=dicts) as db:
        batch = db.execute("SELECT * FROM video_batch WHERE id = %s", (batch_id,)).fetchone()
        found = db.execute("SELECT * FROM video WHERE batch_id = %s", (batch_id,)).fetchall()
        attempts = db.execute(
            "SELECT * FROM video_attempt WHERE batch_id = %s ORDER BY id", (batch_id,)
        ).fetchall()
    assert batch is not None, f"no batch {batch_id}"
    return Drained(batch, found, attempts)


def batch_run_command() -> list[str]:
    """An operator's ``python -m cli batch run``, five worker flow runs: more than one
    worker's ``--limit 4`` takes, so both batch hosts get some whichever polls first."""
    return [sys.executable, "-m", "cli", "batch", "run", "--workers", "5"]


def done_among(layout: Layout, ids: list[int]) -> int:
    """How many of the videos ``ids`` are done."""
    with psycopg.connect(layout.relay_database_url(), autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM video WHERE id = ANY(%s) AND status = 'done'", (ids,)
        ).fetchone()
    return int(row[0]) if row else 0
