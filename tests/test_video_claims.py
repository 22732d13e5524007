"""The video catalogue's claims on SQLite and PostgreSQL: disjoint under concurrency, leases
that expire and are taken over, fenced completion, attempts, force, import."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from sqlmodel import col

from flows.catalogue import CatalogueError, read_sources
from store import batches, videos
from store.batches import batch_progress
from store.db import get_engine, session_scope
from store.leases import db_now
from store.models import BatchStatus, Video, VideoAttempt, VideoBatch, VideoStatus

pytestmark = pytest.mark.usefixtures("database_url")


@pytest.fixture(autouse=True)
def empty_catalogue():
    with get_engine().begin() as connection:
        for table in (VideoAttempt, Video, VideoBatch):
            connection.execute(delete(table))


def _expire_leases() -> None:
    """Every held lease ran out a second ago, by the database's clock (what waiting out a
    lease would do, without the wait)."""
    with get_engine().begin() as connection:
        gone = db_now(connection) - timedelta(seconds=1)
        connection.execute(
            update(Video).where(col(Video.lease_owner).is_not(None)).values(lease_expires_at=gone)
        )


def _import(count: int, prefix: str = "/videos/v") -> None:
    videos.import_videos((f"{prefix}{i:04d}.mp4", f"v{i}.mp4", 5.0 + i % 7) for i in range(count))


def _attempts(video_id: int | None = None) -> list[VideoAttempt]:
    with session_scope() as session:
        query = select(VideoAttempt).order_by(col(VideoAttempt.id))
        if video_id is not None:
            query = query.where(col(VideoAttempt.video_id) == video_id)
        return list(session.scalars(query))


def test_import_is_idempotent():
    assert videos.import_videos([("/a.mp4", "a.mp4", 3.0), ("/b.mp4", "b.mp4", None)]) == (2, 0)
    assert videos.import_videos([("/a.mp4", "a.mp4", 3.0), ("/c.mp4", "c.mp4", 1.0)]) == (1, 1)
    with session_scope() as session:
        assert len(session.scalars(select(Video)).all()) == 3


def test_concurrent_claims_never_hand_out_a_video_twice():
    _import(120)
    batch = batches.start_batch(workers=6)
    assert batch.videos_total == 120

    def drain(worker: str) -> list[int]:
        mine = []
        while claimed := videos.claim(batch.id, worker, 3, 60, 3):
            assert len(claimed) <= 3  # never more than asked for
            mine += [video.id for video in claimed]
        return mine

    with ThreadPoolExecutor(max_workers=6) as pool:
        shares = list(pool.map(drain, [f"w{i}" for i in range(6)]))
    everything = [video_id for share in shares for video_id in share]
    assert len(everything) == len(set(everything)) == 120
    assert sum(1 for share in shares if share) >= 2  # the work was shared, not serialised
    assert len(_attempts()) == 120


def test_longest_videos_are_claimed_first():
    videos.import_videos([("/s.mp4", "s", 2.0), ("/l.mp4", "l", 50.0), ("/m.mp4", "m", 9.0)])
    batch = batches.start_batch(1)
    assert [v.name for v in videos.claim(batch.id, "w", 3, 60, 3)] == ["l", "m", "s"]


def test_an_expired_lease_is_taken_over_and_the_old_owner_is_fenced_off():
    _import(1)
    batch = batches.start_batch(2)
    [video] = videos.claim(batch.id, "slow", 1, 60, 3)
    assert videos.claim(batch.id, "other", 1, 60, 3) == []  # the lease is live
    assert videos.renew({video.id: video.lease}, 60) == {video.id}
    _expire_leases()
    [taken] = videos.claim(batch.id, "other", 1, 60, 3)
    assert taken.id == video.id and taken.attempts == 2
    assert videos.renew({video.id: video.lease}, 60) == set()  # the slow worker learns it lost it
    assert not videos.complete(video.id, video.lease, "/late.json", "en", 5.0, 1.0)
    assert videos.complete(video.id, taken.lease, "/good.json", "en", 5.0, 1.0)
    stored = videos.get_video(video.id)
    assert (stored.status, stored.result_path, stored.lease_owner) == ("done", "/good.json", None)
    outcomes = [(a.worker, a.outcome) for a in _attempts(video.id)]
    assert outcomes == [("slow", "lost"), ("other", "done")]
    # Done is final: nothing in any batch claims it again.
    assert videos.claim(batches.start_batch(1).id, "third", 5, 60, 3) == []


def test_failures_retry_until_the_attempts_run_out():
    _import(1)
    batch = batches.start_batch(1)
    for attempt in (1, 2):
        [video] = videos.claim(batch.id, "w", 1, 60, 3)
        assert video.attempts == attempt
        retried = videos.fail(video.id, video.lease, "model crashed", False, 3, 0.1)
        assert retried == VideoStatus.PENDING
    [video] = videos.claim(batch.id, "w", 1, 60, 3)
    assert videos.fail(video.id, video.lease, "model crashed", False, 3, 0.1) == VideoStatus.FAILED
    stored = videos.get_video(video.id)
    assert stored.error == "gave up after 3 attempts; last error: model crashed"
    assert [a.outcome for a in _attempts(video.id)] == ["retry", "retry", "failed"]
    assert batches.remaining(batch.id) == 0


def test_bad_input_fails_at_once_with_its_reason():
    _import(1)
    batch = batches.start_batch(1)
    [video] = videos.claim(batch.id, "w", 1, 60, 3)
    assert videos.fail(video.id, video.lease, "v0.mp4: no audio stream", True, 3, 0.1) == "failed"
    assert videos.get_video(video.id).error == "v0.mp4: no audio stream"


def test_a_video_whose_worker_dies_every_time_is_given_up():
    _import(1)
    batch = batches.start_batch(1)
    for _ in range(2):
        videos.claim(batch.id, "dies", 1, 0.1, 2)
        time.sleep(0.2)
    assert videos.claim(batch.id, "next", 1, 60, 2) == []
    stored = videos.get_video(_only_id())
    assert stored.status == VideoStatus.FAILED and "gave up after 2 attempts" in stored.error


def _only_id() -> int:
    with session_scope() as session:
        return session.scalars(select(col(Video.id))).one()


def test_released_videos_go_back_without_spending_an_attempt():
    _import(3)
    batch = batches.start_batch(1)
    claimed = videos.claim(batch.id, "w", 3, 60, 3)
    assert videos.release({v.id: v.lease for v in claimed[1:]}) == 2
    again = videos.claim(batch.id, "x", 3, 60, 3)
    assert sorted(v.id for v in again) == sorted(v.id for v in claimed[1:])
    assert all(v.attempts == 1 for v in again)


def test_force_makes_only_the_named_video_pending_again():
    _import(3)
    batch = batches.start_batch(1)
    for video in videos.claim(batch.id, "w", 3, 60, 3):
        videos.complete(video.id, video.lease, f"/r{video.id}.json", "en", 5.0, 0.1)
    assert batches.start_batch(1).videos_total == 0  # a re-run has nothing to do
    target = _attempts()[0].video_id
    assert videos.force([target]) == 1
    rerun = batches.start_batch(1)
    assert rerun.videos_total == 1
    assert [v.id for v in videos.claim(rerun.id, "w", 3, 60, 3)] == [target]


def test_progress_counts_overall_and_per_worker():
    _import(6)
    batch = batches.start_batch(2)
    for worker in ("a", "b"):
        for video in videos.claim(batch.id, worker, 2, 60, 3):
            videos.complete(video.id, video.lease, "/r.json", "en", 5.0, 0.1)
    videos.claim(batch.id, "a", 1, 60, 3)
    progress = batch_progress(batch.id)
    assert (progress.done, progress.in_flight, progress.pending) == (4, 1, 1)
    assert progress.percent == pytest.approx(66.7, abs=0.1)
    by_worker = {w.worker: (w.done, w.in_flight) for w in progress.workers}
    assert by_worker == {"a": (2, 1), "b": (2, 0)}
    assert progress.rate_per_minute > 0 and progress.eta_seconds is not None
    assert batches.finish_batch(batch.id, BatchStatus.CANCELLED)
    assert not batches.batch_is_running(batch.id)
    assert not batches.finish_batch(batch.id, BatchStatus.COMPLETED)  # closed once


def test_a_new_batch_adopts_videos_left_by_a_dead_batch():
    _import(2)
    first = batches.start_batch(1)
    videos.claim(first.id, "gone", 2, 60, 3)
    _expire_leases()
    with get_engine().begin() as connection:  # the first batch's flow run died as well
        connection.execute(update(VideoBatch).values(status=BatchStatus.INCOMPLETE))
    second = batches.start_batch(1)
    assert second.videos_total == 2
    assert len(videos.claim(second.id, "new", 5, 60, 3)) == 2


def test_lists_name_sources_relative_to_themselves(tmp_path: Path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"x")
    (tmp_path / "clips" / "notes.txt").write_text("not media")
    (tmp_path / "list.csv").write_text("source,title\nclips/a.mp4,A\ns3://bucket/b.mp4,B\n")
    (tmp_path / "list.json").write_text(json.dumps([{"source": "clips/a.mp4"}, "/abs/c.mkv"]))
    a = str((tmp_path / "clips" / "a.mp4").resolve())
    assert read_sources(tmp_path / "clips") == [a]
    assert read_sources(tmp_path / "list.csv") == [a, "s3://bucket/b.mp4"]
    assert read_sources(tmp_path / "list.json") == [a, "/abs/c.mkv"]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CatalogueError, match=r"bad\.json: not valid JSON"):
        read_sources(tmp_path / "bad.json")
    with pytest.raises(CatalogueError, match="no such folder or list file"):
        read_sources(tmp_path / "missing")
