"""The one lease of every unit of work (store/leases.py), on SQLite and PostgreSQL, on each
workload's own table: claim, renew, fenced finish, exactly-one takeover, the database's
clock; and the migration that put jobs and bot requests under it, with rows in flight."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import MetaData, Table, func, select, text, update
from sqlmodel import col

from relay_settings import reload_settings
from store import bot, job_chunks, jobs, leases, videos
from store.db import alembic_config, engine_for, get_engine
from store.leases import Lease, LeasedRows, db_now
from store.models import BotRequestStatus, JobStatus, Video, VideoAttempt, VideoStatus
from tests.pg import create_database, drop_database

pytestmark = pytest.mark.usefixtures("database_url")


@dataclass(frozen=True)
class Workload:
    """A workload as the lease module sees it: its rows, a new unfinished row, and the
    values its holder writes when it finishes."""

    rows: LeasedRows
    new_row: Callable[[], object]
    done: dict[str, object]


def _video() -> int:
    name = os.urandom(6).hex()
    videos.import_videos([(f"/videos/{name}.mp4", f"{name}.mp4", 5.0)])
    with get_engine().connect() as connection:
        return connection.execute(
            select(col(Video.id)).where(col(Video.name) == f"{name}.mp4")
        ).scalar_one()


def _job() -> str:
    return jobs.create_job("/x/a.wav", "a.wav", work_pool="asr-cpu").id


def _request() -> str:
    return bot.create_request(
        kind="chat", prompt="p", user_id="1", channel="c", route="r", pool="bot-chat"
    ).id


WORKLOADS = {
    "video": Workload(videos.VIDEO_LEASES, _video, {"status": VideoStatus.DONE}),
    "job": Workload(jobs.JOB_LEASES, _job, {"status": JobStatus.COMPLETED}),
    "bot-request": Workload(bot.REQUEST_LEASES, _request, {"status": BotRequestStatus.COMPLETED}),
}


@pytest.fixture(params=list(WORKLOADS))
def workload(request) -> Workload:
    return WORKLOADS[request.param]


def _claim(work: Workload, key: object, owner: str, seconds: float = 60) -> Lease | None:
    with get_engine().begin() as connection:
        taken = leases.claim(connection, work.rows, work.rows.key == key, owner, seconds)
    return taken.lease if taken.rows else None


def _take_over(work: Workload, key: object, owner: str) -> Lease | None:
    with get_engine().begin() as connection:
        return leases.take_over(connection, work.rows, key, owner, 60)


def _finish(work: Workload, key: object, lease: Lease) -> bool:
    with get_engine().begin() as connection:
        return bool(leases.finish(connection, work.rows, {key: lease}, work.done))


def _renew(work: Workload, key: object, lease: Lease) -> bool:
    with get_engine().begin() as connection:
        return key in leases.renew(connection, work.rows, {key: lease}, 60)


def _stored(work: Workload, key: object):
    with get_engine().connect() as connection:
        return connection.execute(select(work.rows.table).where(work.rows.key == key)).one()


def _expire(work: Workload, key: object) -> None:
    """The holder went silent: its lease ran out a second ago, by the database's clock."""
    with get_engine().begin() as connection:
        past = db_now(connection) - timedelta(seconds=1)
        connection.execute(
            update(work.rows.table)
            .where(work.rows.key == key)
            .values({work.rows.expires_at.key: past})
        )


def test_a_live_lease_is_neither_claimed_nor_taken_over(workload):
    key = workload.new_row()
    lease = _claim(workload, key, "first")
    assert lease is not None
    assert _claim(workload, key, "second") is None
    assert _take_over(workload, key, "second") is None
    assert workload.rows.lease_of(_stored(workload, key)).token == lease.token


def test_eight_racing_for_one_expired_item_exactly_one_wins(workload):
    key = workload.new_row()
    first = _claim(workload, key, "dead")
    _expire(workload, key)
    with ThreadPoolExecutor(max_workers=8) as pool:
        taken = list(pool.map(lambda n: _take_over(workload, key, f"w{n}"), range(8)))
    winners = [lease for lease in taken if lease is not None]
    assert len(winners) == 1
    (won,) = winners
    held = workload.rows.lease_of(_stored(workload, key))
    assert (held.owner, held.token) == (won.owner, won.token) and won.token != first.token
    # Expired by nobody's clock now: nobody else takes it until the winner goes silent too.
    assert _take_over(workload, key, "late") is None


def test_a_stale_holder_neither_renews_nor_finishes(workload):
    key = workload.new_row()
    stale = _claim(workload, key, "slow")
    _expire(workload, key)
    fresh = _take_over(workload, key, "other")
    assert fresh is not None
    before = _stored(workload, key)
    assert not _renew(workload, key, stale)
    assert not _finish(workload, key, stale)
    assert _stored(workload, key) == before  # not a column moved
    assert _renew(workload, key, fresh)
    assert _finish(workload, key, fresh)
    done = _stored(workload, key)
    assert done.status == workload.done["status"]
    assert workload.rows.lease_of(done) is None  # finished: no lease left to take over
    assert _take_over(workload, key, "third") is None
    assert not _finish(workload, key, fresh)  # finished once


def test_the_same_owner_claiming_again_fences_off_its_earlier_lease(workload):
    """The token, not the owner's name, is the fence: a worker that lost a row and took it
    back later cannot finish it with the lease of its first go."""
    key = workload.new_row()
    first = _claim(workload, key, "w")
    _expire(workload, key)
    again = _take_over(workload, key, "w")
    assert again is not None and again.owner == first.owner
    assert not _finish(workload, key, first)
    assert _finish(workload, key, again)


class _Clock:
    """This host's clock, off by ``offset`` from the true time (and the database's)."""

    def __init__(self, offset: timedelta) -> None:
        real = datetime

        class Skewed(datetime):
            @classmethod
            def now(cls, tz=None):
                return real.now(tz) + offset

            @classmethod
            def utcnow(cls):
                return real.utcnow() + offset

        self.datetime = Skewed

    def patch(self, monkeypatch) -> None:
        import store.bot
        import store.jobs
        import store.leases
        import store.models
        import store.videos

        for module in (store.bot, store.jobs, store.leases, store.models, store.videos):
            if hasattr(module, "datetime"):
                monkeypatch.setattr(module, "datetime", self.datetime)
            if hasattr(module, "utcnow"):
                monkeypatch.setattr(module, "utcnow", lambda: self.datetime.now(UTC))


def _database_clock() -> datetime:
    with get_engine().connect() as connection:
        if connection.dialect.name == "postgresql":
            return connection.execute(select(func.clock_timestamp())).scalar_one()
        stamp = connection.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar()
        return datetime.fromisoformat(stamp).replace(tzinfo=UTC)


@pytest.mark.parametrize("skew", [timedelta(hours=1), -timedelta(hours=1)])
def test_expiry_is_judged_by_the_database_clock(workload, monkeypatch, skew):
    """This worker's clock is an hour off: its leases still run for their length by the
    database's clock, a live lease is still live, and an expired one is still expired."""
    key = workload.new_row()
    _Clock(skew).patch(monkeypatch)
    lease = _claim(workload, key, "drifting", seconds=60)
    assert lease is not None
    left = (lease.expires_at - _database_clock()).total_seconds()
    assert 50 < left <= 60, left
    stored = workload.rows.lease_of(_stored(workload, key)).expires_at
    assert abs((stored - lease.expires_at).total_seconds()) < 0.01
    assert _take_over(workload, key, "other") is None  # live, whatever this host thinks
    _expire(workload, key)
    assert _take_over(workload, key, "other") is not None  # expired, whatever it thinks


def test_renewing_keeps_a_lease_live_and_reports_its_loss(workload):
    """The renewal thread moves the expiry forward until the lease is taken from it; then it
    says so (the event) and stops."""
    key = workload.new_row()
    lease = _claim(workload, key, "holder", seconds=60)
    renewed: list[bool] = []

    def renew_once() -> bool:
        renewed.append(_renew(workload, key, lease))
        return renewed[-1]

    with leases.renewing(renew_once, 0.05, "test") as lost:
        _wait(lambda: len(renewed) >= 2)
        assert not lost.is_set()
        with get_engine().begin() as connection:  # another process took it over
            connection.execute(
                update(workload.rows.table)
                .where(workload.rows.key == key)
                .values({workload.rows.token.key: "someone-else"})
            )
        assert lost.wait(10)
    assert renewed[0] and not renewed[-1]


def _wait(condition: Callable[[], bool], limit: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def store_before_leases(database_url, tmp_path, monkeypatch):
    """A new store of the same kind, migrated only as far as 0004 (the release before one
    lease module); the test writes rows in flight into it, then the store upgrades."""
    name = None
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'before.db'}"
    else:
        name, url = create_database()
    monkeypatch.setenv("RELAY_DATABASE_URL", url)
    reload_settings()
    engine = engine_for(url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
    yield engine
    monkeypatch.undo()
    reload_settings()
    engine.dispose()
    if name:
        drop_database(name)


def test_rows_in_flight_when_the_migration_runs_keep_working(store_before_leases):
    engine = store_before_leases
    with engine.begin() as connection:
        now = db_now(connection)
        hour_ago, minutes_ago = now - timedelta(hours=1), now - timedelta(minutes=2)
        tables = MetaData()
        job, chunk, request, video, attempt = (
            Table(name, tables, autoload_with=connection)
            for name in (
                "transcription_job",
                "transcription_chunk",
                "bot_request",
                "video",
                "video_attempt",
            )
        )
        counters: dict[str, object] = {"chunks_total": 1, "chunks_done": 0, "chunks_failed": 0}
        counters |= {"audio_seconds_done": 0.0, "created_at": hour_ago, "work_pool": "asr-cpu"}
        for key, status, heartbeat in (
            ("silent", "running", minutes_ago),  # its worker beat two minutes ago, then died
            ("alive", "running", now),
            ("queued", "queued", None),  # dispatched, its task run not started yet
        ):
            connection.execute(
                job.insert().values(
                    id=key,
                    source_name="a.wav",
                    source_path="/x/a.wav",
                    status=status,
                    dispatch_token=f"token-{key}",
                    heartbeat_at=heartbeat,
                    **counters,
                )
            )
            connection.execute(  # rows that point at the job: a rebuilt table must keep them
                chunk.insert().values(
                    job_id=key, index=0, start_seconds=0.0, end_seconds=30.0, status="done"
                )
            )
        asked: dict[str, object] = {
            "kind": "chat",
            "prompt": "p",
            "user_id": "1",
            "channel": "c",
            "route": "r",
        }
        asked |= {"pool": "bot-chat", "upstream_calls": 0, "delivery_status": "pending"}
        asked |= {"delivery_attempts": 0, "delivery_messages_sent": 0}
        for key, status, since in (
            ("answering", "running", now),
            ("dead-worker", "running", hour_ago),
            ("waiting", "queued", now),
            ("lost-run", "queued", hour_ago),
        ):
            running = status == "running"
            connection.execute(
                request.insert().values(
                    id=key,
                    status=status,
                    worker="old-host:1" if running else None,
                    created_at=hour_ago,
                    dispatched_at=since,
                    started_at=since if running else None,
                    **asked,
                )
            )
        for key, expires in (("held", now + timedelta(minutes=1)), ("dropped", minutes_ago)):
            connection.execute(
                video.insert().values(
                    source_key=key,
                    source=f"/videos/{key}.mp4",
                    name=key,
                    status="claimed",
                    attempts=1,
                    batch_id="b",
                    lease_owner="old-host:2",
                    lease_expires_at=expires,
                    imported_at=hour_ago,
                )
            )
            connection.execute(
                attempt.insert().values(
                    video_id=select(video.c.id).where(video.c.source_key == key).scalar_subquery(),
                    batch_id="b",
                    worker="old-host:2",
                    outcome="running",
                    started_at=hour_ago,
                )
            )

    get_engine()  # the new release's first use upgrades the store
    # Nothing that points at a rebuilt table was lost (SQLite rebuilds tables to alter them).
    assert [len(job_chunks.get_chunks(key)) for key in ("silent", "alive", "queued")] == [1, 1, 1]
    with get_engine().connect() as connection:
        attempts = connection.execute(select(func.count()).select_from(VideoAttempt)).scalar()
    assert attempts == 2
    assert jobs.expired("asr-cpu") == ["silent"]
    assert jobs.take_over("silent", "new-host:1", 60) is not None
    assert jobs.take_over("alive", "new-host:1", 60) is None  # its lease runs ~60 s from the beat
    # A task run the previous release dispatched still starts its job, and only that run.
    assert jobs.start_run("queued", "token-elsewhere", "new-host:1", 60) is None
    assert jobs.start_run("queued", "token-queued", "new-host:1", 60) is not None

    assert sorted(bot.expired(pool="bot-chat")) == ["dead-worker", "lost-run"]
    assert bot.take_over("dead-worker", 60) is not None
    assert bot.take_over("answering", 60) is None
    assert bot.claim_request("waiting", "new-host:1") is not None

    [taken] = videos.claim("b", "new-host:2", 5, 60, 3)
    assert (taken.name, taken.attempts) == ("dropped", 2)
    held = videos.get_video(_only_video("held"))  # live: left to its worker
    assert (held.status, held.lease_owner, held.attempts) == ("claimed", "old-host:2", 1)
    assert held.lease_token is not None


def _only_video(name: str) -> int:
    with get_engine().connect() as connection:
        return connection.execute(select(col(Video.id)).where(col(Video.name) == name)).scalar_one()
