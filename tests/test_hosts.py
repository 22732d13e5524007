"""Relay on several hosts (network namespaces, tests/netns.py), broken on purpose.

The layout (tests/relay_hosts.py) runs each part on its own host with compose's settings and
the hosts' addresses; the scenarios wait on Relay's own /api/health/ready and /api/workers,
never on the clock. ``make hosts-test`` runs this module alone; ``make test`` includes it.
Where hosts cannot be made (not root) it is skipped, except with CI=true: there it fails.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest

from bench.speech import clip
from tasks.wer import word_error_rate
from tests.netns import Network, can_make_hosts
from tests.relay_hosts import API_PORT, FAKETIME, TOKEN, Layout

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ASR_HOSTS = ["asr-1", "asr-2"]
# Leases as short as the scenarios can afford (a deployment keeps the defaults): a dead
# coordinator's job is taken over within this.
LEASES = {"RELAY_JOB_LEASE_SECONDS": "15"}

_reason = can_make_hosts()
if _reason and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI=true but the multi-host tests cannot run: {_reason}")
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"no test hosts: {_reason}")


@pytest.fixture(scope="module")
def layout() -> Iterator[Layout]:
    """Every host of the transcription layout, started and ready."""
    net = Network()
    hosts = Layout(net, extra_env=LEASES)
    try:
        hosts.start_db()
        hosts.start_redis()
        hosts.start_prefect()
        hosts.bootstrap()
        hosts.start_dask()
        for name in ("api-1", "api-2"):
            hosts.start_api(name)
        for name in ASR_HOSTS:
            hosts.start_asr(name)
        hosts.wait_ready("api-1", ASR_HOSTS)
        yield hosts
    finally:
        hosts.close()
        net.close()


@pytest.fixture(scope="module")
def speech() -> tuple[bytes, str]:
    """Ten minutes of varied speech (mp3) and what it says."""
    path, reference = clip(10)
    return path.read_bytes(), reference


def _db(layout: Layout) -> psycopg.Connection[Any]:
    return psycopg.connect(layout.relay_database_url(), autocommit=True)


def _upload(layout: Layout, api: str, audio: bytes) -> str:
    response = layout.client.post(
        layout.api_url(api) + "/api/transcriptions",
        headers=AUTH,
        files={"file": ("speech.mp3", audio, "audio/mpeg")},
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


def _watch(layout: Layout, api: str, job_id: str) -> Watch:
    watch = Watch(layout, api, job_id)
    threading.Thread(target=watch.run, daemon=True).start()
    return watch


def _chunks(layout: Layout, job_id: str) -> list[dict[str, Any]]:
    with _db(layout) as connection, connection.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT index, status, worker_host, error FROM transcription_chunk"
            " WHERE job_id = %s ORDER BY index",
            (job_id,),
        )
        return cur.fetchall()


def _job_row(layout: Layout, job_id: str) -> dict[str, Any]:
    with _db(layout) as connection, connection.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM transcription_job WHERE id = %s", (job_id,))
        row = cur.fetchone()
    assert row is not None
    return row


def _transcript(layout: Layout, api: str, job_id: str) -> str:
    response = layout.client.get(
        f"{layout.api_url(api)}/api/transcriptions/{job_id}/transcript", headers=AUTH
    )
    assert response.status_code == 200, response.text
    return response.text


def test_spread_a_10_minute_upload_runs_its_chunks_on_both_asr_hosts(layout, speech):
    audio, reference = speech
    job_id = _upload(layout, "api-1", audio)
    final = _watch(layout, "api-1", job_id).until_ended(300)
    assert final["status"] == "completed", final
    chunks = _chunks(layout, job_id)
    assert len(chunks) >= 4 and {c["status"] for c in chunks} == {"done"}, chunks
    assert {c["worker_host"] for c in chunks} == set(ASR_HOSTS), chunks
    # Read through the other API host: the same store and the same shared data folder.
    text = _transcript(layout, "api-2", job_id)
    assert word_error_rate(reference, text) < 0.15


def test_an_asr_host_killed_mid_job_leaves_the_job_to_the_other(layout, speech):
    audio, reference = speech
    job_id = _upload(layout, "api-2", audio)
    watch = _watch(layout, "api-2", job_id)
    victim = layout.net.hosts["asr-2"]

    def decoding_on_victim() -> bool:
        live = layout.census("api-1")
        dask = [w for w in live if w["kind"] == "dask-worker" and w["host"] == victim.address]
        return bool(dask and dask[0]["in_flight"]) and bool(watch.seen and watch.seen[-1] > 0)

    layout.wait(decoding_on_victim, 120, "asr-2 never decoded a chunk of the job")
    coordinator = _job_row(layout, job_id)["lease_owner"]
    victim.kill()
    final = watch.until_ended(300)
    assert final["status"] == "completed", (final, coordinator)
    chunks = _chunks(layout, job_id)
    assert {c["status"] for c in chunks} == {"done"}, chunks
    row = _job_row(layout, job_id)
    # Every chunk's result recorded exactly once: the counters match the rows.
    assert row["chunks_done"] == row["chunks_total"] == len(chunks), row
    assert row["chunks_failed"] == 0
    assert watch.seen == sorted(watch.seen), f"progress moved back: {watch.seen}"
    assert word_error_rate(reference, _transcript(layout, "api-1", job_id)) < 0.15

    layout.start_asr("asr-2")  # the host comes back for the next scenarios
    layout.wait_ready("api-1", ASR_HOSTS)


def test_an_api_host_dying_mid_upload_then_a_retry_on_another_gives_one_job(layout, speech):
    audio, _ = speech
    key = f"hosts-{uuid.uuid4().hex}"
    name = f"retry-{key}.mp3"
    request = httpx.Request(
        "POST",
        layout.api_url("api-1") + "/api/transcriptions",
        headers={**AUTH, "Idempotency-Key": key},
        files={"file": (name, audio, "audio/mpeg")},
    )
    body = request.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host")
    victim = layout.net.hosts["api-1"]
    with socket.create_connection((victim.address, API_PORT), timeout=10) as upload:
        upload.sendall(f"POST /api/transcriptions HTTP/1.1\r\nHost: api-1\r\n{head}\r\n".encode())
        upload.sendall(body[: len(body) // 2])  # half the file is on its way
        victim.kill()
    retry = {**AUTH, "Idempotency-Key": key}
    first = layout.client.post(
        layout.api_url("api-2") + "/api/transcriptions",
        headers=retry,
        files={"file": (name, audio, "audio/mpeg")},
    )
    assert first.status_code == 202, first.text
    again = layout.client.post(
        layout.api_url("api-2") + "/api/transcriptions",
        headers=retry,
        files={"file": (name, audio, "audio/mpeg")},
    )
    assert again.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]
    with _db(layout) as connection:
        jobs = connection.execute(
            "SELECT id FROM transcription_job WHERE source_name = %s", (name,)
        ).fetchall()
    assert [row[0] for row in jobs] == [first.json()["job_id"]]
    final = _watch(layout, "api-2", first.json()["job_id"]).until_ended(300)
    assert final["status"] == "completed", final
    layout.start_api("api-1")  # back for the next scenarios


def test_a_new_asr_host_joining_mid_run_takes_chunks(layout):
    path, _ = clip(30)
    job_id = _upload(layout, "api-1", path.read_bytes())
    watch = _watch(layout, "api-1", job_id)
    layout.wait(lambda: watch.seen and watch.seen[-1] > 0, 120, "the 30-min job never started")
    newcomer = layout.start_asr("asr-3")
    layout.wait_ready("api-1", [*ASR_HOSTS, "asr-3"])
    joined_at = watch.seen[-1]
    final = watch.until_ended(400)
    assert final["status"] == "completed", final
    hosts = [c["worker_host"] for c in _chunks(layout, job_id)]
    assert "asr-3" in hosts, f"joined at {joined_at} %, chunks by host: {hosts}"
    assert {c["status"] for c in _chunks(layout, job_id)} == {"done"}
    newcomer.kill()  # two ASR hosts again: the machine has two cores


def _running(layout: Layout, api: str, audio: bytes) -> tuple[str, Watch]:
    """A job uploaded through ``api`` and seen decoding (its progress above 0)."""
    job_id = _upload(layout, api, audio)
    watch = _watch(layout, api, job_id)
    layout.wait(lambda: watch.seen and watch.seen[-1] > 0, 120, f"job {job_id} never started")
    return job_id, watch


def _nothing_running(layout: Layout) -> None:
    with _db(layout) as connection:
        left = connection.execute(
            "SELECT id, status FROM transcription_job WHERE status IN ('queued', 'running')"
        ).fetchall()
    assert left == [], f"jobs left unfinished: {left}"


def test_the_database_host_stopped_for_20_s_under_load_loses_nothing(layout, speech):
    audio, _ = speech
    job_id, watch = _running(layout, "api-1", audio)
    db = layout.net.hosts["db"]
    layout.stop_db()
    threading.Event().wait(20)  # the outage itself: the scenario is 20 s without a database
    db.relaunch("postgres")
    layout.wait_db()
    final = watch.until_ended(300)
    assert final["status"] == "completed", final
    assert watch.unanswered > 0, "the API answered throughout: was the database down?"
    row = _job_row(layout, job_id)
    assert row["chunks_done"] == row["chunks_total"] == len(_chunks(layout, job_id)), row
    _nothing_running(layout)
    # Each API replica's pool held connections the restart closed: its readiness probe finds
    # one, SQLAlchemy drops them all, and the replica is ready again (as a load balancer sees).
    for api in ("api-1", "api-2"):
        layout.wait_ready(api, ASR_HOSTS)


def test_the_prefect_host_restarting_leaves_no_run_hanging(layout, speech):
    audio, _ = speech
    job_id, watch = _running(layout, "api-2", audio)
    prefect = layout.net.hosts["prefect"]
    prefect.kill()
    prefect.relaunch("server")
    layout.wait_prefect(prefect)
    final = watch.until_ended(300)
    assert final["status"] == "completed" or final["error"], final
    flow_run_id = _job_row(layout, job_id)["flow_run_id"]
    state = layout.flow_run_state(flow_run_id)
    assert state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"), (flow_run_id, state)
    # The task workers reconnected by themselves: a new job runs.
    after = _upload(layout, "api-1", audio)
    assert _watch(layout, "api-1", after).until_ended(300)["status"] == "completed"


def test_the_dask_scheduler_host_dying_loses_no_job_and_new_ones_run(layout, speech):
    audio, _ = speech
    job_id, watch = _running(layout, "api-1", audio)
    dask = layout.net.hosts["dask"]
    dask.kill()
    dask.relaunch("scheduler")
    layout.wait_dask()
    # Its chunks in flight were lost with the scheduler: submitted again, they run on the
    # new one once the workers (restarted by their restart policy) join it.
    final = watch.until_ended(300)
    assert final["status"] == "completed", final
    assert {c["status"] for c in _chunks(layout, job_id)} == {"done"}
    assert watch.seen == sorted(watch.seen), f"progress moved back: {watch.seen}"
    layout.wait_ready("api-1", ASR_HOSTS)  # the workers found the new scheduler themselves
    after = _upload(layout, "api-2", audio)
    assert _watch(layout, "api-2", after).until_ended(300)["status"] == "completed"
    _nothing_running(layout)


def _transcribe_runs(layout: Layout, job_id: str) -> int:
    """How many ``transcribe`` flow runs the Prefect server has for the job."""
    prefect = f"http://{layout.net.hosts['prefect'].address}:4200/api"
    query = {"flow_runs": {"tags": {"all_": [f"relay-job:{job_id}"]}}}
    runs = layout.client.post(f"{prefect}/flow_runs/filter", json=query).json()
    flow = layout.client.get(f"{prefect}/flows/name/transcribe").json()
    return sum(1 for run in runs if run["flow_id"] == flow["id"])


def test_a_task_worker_90_s_fast_takes_no_lease_early(layout, speech):
    path, _ = clip(30)  # long enough for the fast worker's maintenance pass (every 15 s)
    fast = layout.net.hosts["asr-2"]
    fast.stop("asr-tasks")  # asr-1's task worker takes the job
    job_id, watch = _running(layout, "api-1", path.read_bytes())
    owner = _job_row(layout, job_id)["lease_owner"]
    assert owner and owner.startswith("asr-1:"), owner
    layout.start_asr_tasks(fast, clock_ahead=90)
    # Listed live: its heartbeats are stamped by the database's clock, not its own.
    layout.wait_ready("api-1", ASR_HOSTS)
    clock = fast.run(["date", "+%s"], {"LD_PRELOAD": FAKETIME, "FAKETIME": "+90"})
    assert int(clock) - time.time() > 80, "the fast host's clock is not ahead"
    final = watch.until_ended(400)
    assert final["status"] == "completed", final
    # Every 15 s the fast worker looked for jobs whose lease ran out: it took none early.
    assert "lost its worker" not in fast.log("asr-tasks")
    assert _transcribe_runs(layout, job_id) == 1
    row = _job_row(layout, job_id)
    assert row["chunks_done"] == row["chunks_total"] == len(_chunks(layout, job_id)), row
    # A job the fast worker coordinates itself completes too.
    layout.net.hosts["asr-1"].stop("asr-tasks")
    second, watch = _running(layout, "api-2", speech[0])
    owner = _job_row(layout, second)["lease_owner"]
    assert owner and owner.startswith("asr-2:"), owner
    assert watch.until_ended(400)["status"] == "completed"
    assert _transcribe_runs(layout, second) == 1
    layout.start_asr_tasks(layout.net.hosts["asr-1"])
    fast.stop("asr-tasks")
    layout.start_asr_tasks(fast)
    layout.wait_ready("api-1", ASR_HOSTS)
