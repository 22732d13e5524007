"""Batch reprocessing end to end on the real PostgreSQL: three worker flow runs drain a
catalogue of real videos while one of them is SIGKILLed and never restarted; every video
ends done exactly once or failed with its reason. Then the same on SQLite with one worker."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.settings import PREFECT_API_URL
from sqlmodel import col, select

from api.app import create_app
from blocks.discord import DiscordDestination
from cli.main import main as relay_cli
from deployments.serve import served_flows
from flows import reprocess
from flows.pool_tasks import dispatchers
from relay_settings import reload_settings
from store.db import session_scope
from store.models import Video, VideoAttempt, VideoStatus
from tasks.wer import word_error_rate
from tests.environ import environment
from tests.fake_discord import FakeDiscord
from tests.pg import create_database, drop_database
from tests.videos import MadeVideo, make_catalogue

pytestmark = pytest.mark.usefixtures("prefect_server")
VIDEOS, CORRUPT = 200, 6
WORKER_DEPLOYMENT = "reprocess-worker/batch-video"


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> list[MadeVideo]:
    return make_catalogue(tmp_path_factory.mktemp("videos"), VIDEOS, corrupt=CORRUPT)


@pytest.fixture(scope="module")
def discord():
    with FakeDiscord(retry_after=0.2) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory, discord, prefect_server):  # noqa: ARG001
    """The job store on a fresh PostgreSQL database, seen by this process and the served
    worker processes alike; a Discord destination for the batch's closing post."""
    name, url = create_database()
    values = {
        "RELAY_DATABASE_URL": url,
        "RELAY_DATA_DIR": str(tmp_path_factory.mktemp("batch-data")),
        "RELAY_WEBHOOK_ALLOWED_HOSTS": discord.host,
        "RELAY_DISCORD_BLOCK": "batch-test-discord",
        "PREFECT_API_URL": PREFECT_API_URL.value(),
    }
    restore = ExitStack()
    restore.enter_context(environment(values))
    settings = reload_settings()
    DiscordDestination(webhook_url=discord.url_for(token="batch-secret")).save(
        "batch-test-discord", overwrite=True
    )
    yield settings
    restore.close()
    from store.db import engine_for

    engine_for(url).dispose()
    drop_database(name)


@pytest.fixture(scope="module")
def served(stack_env):  # noqa: ARG001
    """`python -m cli serve`: runs the worker flow runs, each in its own process."""
    with served_flows(WORKER_DEPLOYMENT, limit=90) as process:
        yield process


def _videos() -> dict[str, Video]:
    with session_scope() as session:
        return {Path(v.source).name: v for v in session.exec(select(Video))}


def _attempts() -> list[VideoAttempt]:
    with session_scope() as session:
        return list(session.exec(select(VideoAttempt).order_by(col(VideoAttempt.id))))


class Killer(threading.Thread):
    """SIGKILLs the process of one worker once the batch is well under way."""

    def __init__(self, after_done: int, limit: float = 400.0) -> None:
        super().__init__(daemon=True)
        self.after_done, self.limit = after_done, limit
        self.victim: str | None = None
        self.held: list[int] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while time.monotonic() < deadline and self.victim is None:
            current = _videos().values()
            held = [v for v in current if v.status == VideoStatus.CLAIMED]
            owners = {v.lease_owner for v in held}
            done = sum(v.status == VideoStatus.DONE for v in current)
            if done >= self.after_done and len(owners) >= 2:
                victim = sorted(owners)[0]
                os.kill(int(victim.split(":")[1]), signal.SIGKILL)
                self.victim = victim
                self.held = [v.id for v in held if v.lease_owner == victim]
                return
            time.sleep(0.2)


def _worker_runs(batch_id: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(like_=f"batch-{batch_id[:8]}-worker-")
            )
        )


@pytest.mark.usefixtures("served")
def test_three_workers_drain_the_catalogue_though_one_is_killed(catalogue, discord, stack_env):
    folder = catalogue[0].path.parent
    assert relay_cli(["batch", "import", str(folder)]) == 0
    assert relay_cli(["batch", "import", str(folder)]) == 0  # idempotent
    assert len(_videos()) == VIDEOS

    killer = Killer(after_done=40)
    killer.start()
    state = reprocess.reprocess_videos(
        workers=3, claim_size=2, lease_seconds=8, poll_seconds=1, return_state=True
    )
    killer.join(timeout=5)

    assert state.is_completed(), state.message
    outcome = state.result()
    assert isinstance(outcome, reprocess.BatchOutcome)
    assert (outcome.videos_total, outcome.failed, outcome.left) == (VIDEOS, CORRUPT, 0)
    assert killer.victim and killer.held, "no worker was killed mid-batch"

    # Every video ended done, or failed with the reason its corruption calls for.
    stored = _videos()
    for made in catalogue:
        video = stored[made.path.name]
        if made.corrupt:
            assert video.status == VideoStatus.FAILED and made.corrupt in video.error
        else:
            assert video.status == VideoStatus.DONE, (made.path.name, video.error)
            assert Path(video.result_path).is_file()
    texts = [
        (m.text, (Path(stored[m.path.name].result_path).with_suffix(".txt")).read_text())
        for m in catalogue
        if not m.corrupt
    ]
    assert sum(word_error_rate(ref, hyp) for ref, hyp in texts) / len(texts) <= 0.25

    # The processing log: one 'done' per video, and nothing started on a finished video.
    attempts = _attempts()
    by_id = {v.id: v for v in stored.values()}
    done_counts = Counter(a.video_id for a in attempts if a.outcome == "done")
    assert all(count == 1 for count in done_counts.values())
    assert len(done_counts) == VIDEOS - CORRUPT
    for attempt in attempts:
        finished = by_id[attempt.video_id].finished_at
        assert attempt.started_at <= finished, f"video {attempt.video_id} was processed again"
    # What the killed worker held was taken over by the others and finished by them.
    for video_id in killer.held:
        mine = [a for a in attempts if a.video_id == video_id and a.worker == killer.victim]
        assert [a.outcome for a in mine] == ["lost"]
        assert by_id[video_id].status == VideoStatus.DONE
    assert all(a.outcome != "running" for a in attempts)

    # Prefect saw the worker crash and nothing restarted it: still three worker runs.
    deadline = time.monotonic() + 30  # the runner reports the crash once it reaps the process
    while (runs := _worker_runs(outcome.batch_id)) and time.monotonic() < deadline:
        if all(r.state_type.value in reprocess.FINAL_RUN_STATES for r in runs):
            break
        time.sleep(1)
    assert sorted(r.state_type.value for r in runs) == ["COMPLETED", "COMPLETED", "CRASHED"]

    # The batch is announced on Discord, and the API reports it per worker.
    [post] = [r for r in discord.requests if "Video batch" in r.payload["embeds"][0]["title"]]
    embed = post.payload["embeds"][0]
    assert embed["title"] == f"Video batch completed: {VIDEOS} videos"
    assert f"{VIDEOS - CORRUPT} done, {CORRUPT} failed" in embed["description"]
    with TestClient(create_app(stack_env, dispatchers())) as client:
        body = client.get(f"/api/batches/{outcome.batch_id}").json()
        assert client.get("/api/batches/nope").status_code == 404
    assert (body["status"], body["done"], body["failed"]) == ("completed", VIDEOS - CORRUPT, 6)
    assert len(body["workers"]) == 3 and body["percent"] == 100.0
    assert {w["worker"] for w in body["workers"]} >= {killer.victim}


@pytest.mark.usefixtures("served")
def test_a_rerun_does_nothing_and_force_redoes_only_that_video(catalogue):
    before = len(_attempts())
    rerun = reprocess.reprocess_videos(workers=2, poll_seconds=1)
    assert isinstance(rerun, reprocess.BatchOutcome)
    assert (rerun.videos_total, rerun.done) == (0, 0)
    assert len(_attempts()) == before

    target = _videos()[catalogue[0].path.name]
    forced = reprocess.reprocess_videos(workers=1, force_ids=[target.id], poll_seconds=1)
    assert isinstance(forced, reprocess.BatchOutcome)
    assert (forced.videos_total, forced.done) == (1, 1)
    new = _attempts()[before:]
    assert [(a.video_id, a.outcome) for a in new] == [(target.id, "done")]


def test_one_worker_on_sqlite_in_the_flow_run_itself(catalogue, relay_env, tmp_path):
    # No worker deployment here: the batch flow runs its single worker in-process.
    relay_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'relay.db'}",
        DATA_DIR=str(tmp_path / "data"),
        BATCH_WORKER_DEPLOYMENT="reprocess-worker/not-deployed",
    )
    chosen = catalogue[:12]  # includes corrupt ones (index 1 is the first)
    listing = tmp_path / "videos.csv"
    listing.write_text("source\n" + "".join(f"{m.path}\n" for m in chosen))
    assert relay_cli(["batch", "import", str(listing)]) == 0

    outcome = reprocess.reprocess_videos(workers=1, poll_seconds=0.5)
    assert isinstance(outcome, reprocess.BatchOutcome)

    broken = sum(1 for m in chosen if m.corrupt)
    assert broken >= 1
    assert (outcome.videos_total, outcome.done, outcome.failed) == (12, 12 - broken, broken)
    assert Counter(a.outcome for a in _attempts()) == {"done": 12 - broken, "failed": broken}
    again = reprocess.reprocess_videos(workers=1, poll_seconds=0.5)
    assert isinstance(again, reprocess.BatchOutcome)
    assert again.videos_total == 0 and len(_attempts()) == 12
