"""Jobs on the multi-host layout (tests/relay_hosts.py), as its scenarios read them: uploads
through an API host, a job watched to its end, its rows in the job store, its Prefect runs,
and each scenario's figures."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.relay_hosts import TOKEN, Layout

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def record_figure(
    figures: list[dict[str, Any]], layout: Layout, broken: str, since: float, job_id: str
) -> None:
    """What a scenario broke, how long until its job ended (and the layout was ready again),
    what was lost (chunks failed, a job not completed) and what was recorded twice."""
    row, chunks = job_row(layout, job_id), chunk_rows(layout, job_id)
    figures.append(
        {
            "scenario": os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0],
            "broken": broken,
            "recovered_seconds": round(time.monotonic() - since, 1),
            "work_lost": row["chunks_failed"] + (row["status"] != "completed"),
            "recorded_twice": row["chunks_done"] - len(chunks),
            "runs_of_the_job": transcribe_runs(layout, job_id),
            "error": row["error"],
        }
    )


def relay_db(layout: Layout) -> psycopg.Connection[Any]:
    return psycopg.connect(layout.relay_database_url(), autocommit=True)


def upload(layout: Layout, api: str, audio: bytes | Path) -> str:
    """A job for ``audio`` (mp3 bytes, or a file) through API host ``api``; its id."""
    if isinstance(audio, Path):
        file = (audio.name, audio.read_bytes(), "application/octet-stream")
    else:
        file = ("speech.mp3", audio, "audio/mpeg")
    response = layout.client.post(
        layout.api_url(api) + "/api/transcriptions", headers=AUTH, files={"file": file}
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


@dataclass
class Watch:
    """Reads a job's status through an API host until it ends, keeping every progress seen."""

    layout: Layout
    api: str
    job_id: str
    seen: list[float] = field(default_factory=list)
    unanswered: int = 0  # reads that got no status (the store or the host away)
    final: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        url = f"{self.layout.api_url(self.api)}/api/transcriptions/{self.job_id}"
        with httpx.Client(timeout=10) as client:
            while not self.done.is_set():
                try:
                    response = client.get(url, headers=AUTH)
                except httpx.HTTPError:
                    response = None  # an API host being restarted
                if response is None or response.status_code != 200:
                    self.unanswered += 1  # its store or host away: read again
                    self.done.wait(0.2)
                    continue
                job = response.json()
                self.seen.append(job["progress_percent"])
                if job["status"] in ("completed", "failed", "cancelled"):
                    self.final = job
                    self.done.set()
                self.done.wait(0.2)

    def until_ended(self, limit: float) -> dict[str, Any]:
        assert self.done.wait(limit), (
            f"job {self.job_id} not ended in {limit:.0f} s: {self.seen[-3:]}"
        )
        return self.final


def watch_job(layout: Layout, api: str, job_id: str) -> Watch:
    watch = Watch(layout, api, job_id)
    threading.Thread(target=watch.run, daemon=True).start()
    return watch


def chunk_rows(layout: Layout, job_id: str) -> list[dict[str, Any]]:
    with (
        relay_db(layout) as connection,
        connection.cursor(row_factory=psycopg.rows.dict_row) as cur,
    ):
        cur.execute(
            "SELECT index, status, worker_host, error FROM transcription_chunk"
            " WHERE job_id = %s ORDER BY index",
            (job_id,),
        )
        return cur.fetchall()


def job_row(layout: Layout, job_id: str) -> dict[str, Any]:
    with (
        relay_db(layout) as connection,
        connection.cursor(row_factory=psycopg.rows.dict_row) as cur,
    ):
        cur.execute("SELECT * FROM transcription_job WHERE id = %s", (job_id,))
        row = cur.fetchone()
    assert row is not None
    return row


def transcript(layout: Layout, api: str, job_id: str) -> str:
    response = layout.client.get(
        f"{layout.api_url(api)}/api/transcriptions/{job_id}/transcript", headers=AUTH
    )
    assert response.status_code == 200, response.text
    return response.text


def running_job(layout: Layout, api: str, audio: bytes) -> tuple[str, Watch]:
    """A job uploaded through ``api`` and seen decoding (its progress above 0)."""
    job_id = upload(layout, api, audio)
    watch = watch_job(layout, api, job_id)
    layout.wait(lambda: watch.seen and watch.seen[-1] > 0, 120, f"job {job_id} never started")
    return job_id, watch


def assert_nothing_running(layout: Layout) -> None:
    with relay_db(layout) as connection:
        left = connection.execute(
            "SELECT id, status FROM transcription_job WHERE status IN ('queued', 'running')"
        ).fetchall()
    assert left == [], f"jobs left unfinished: {left}"


def transcribe_runs(layout: Layout, job_id: str) -> int:
    """How many ``transcribe`` flow runs the Prefect server has for the job."""
    prefect = f"http://{layout.net.hosts['prefect'].address}:4200/api"
    query = {"flow_runs": {"tags": {"all_": [f"relay-job:{job_id}"]}}}
    runs = layout.client.post(f"{prefect}/flow_runs/filter", json=query).json()
    flow = layout.client.get(f"{prefect}/flows/name/transcribe").json()
    return sum(1 for run in runs if run["flow_id"] == flow["id"])
