"""Worker heartbeats in the store, on SQLite and PostgreSQL: upsert, stale, retire, prune."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from store import workers
from store.db import get_engine
from store.leases import db_now
from store.workers import WorkerKind

pytestmark = pytest.mark.usefixtures("database_url")


@pytest.fixture(autouse=True)
def empty_table():
    with get_engine().begin() as connection:
        connection.execute(workers.TABLE.delete())


def _only(me: workers.Identity) -> workers.Worker:
    (found,) = [w for w in workers.list_workers() if w.id == me.id]
    return found


def test_the_first_beat_registers_and_the_next_ones_update():
    me = workers.identity(WorkerKind.TASK_WORKER, "bot-chat", heartbeat_seconds=30)
    workers.beat(me, in_flight=2)
    first = _only(me)
    assert (first.kind, first.pool, first.in_flight) == (WorkerKind.TASK_WORKER, "bot-chat", 2)
    assert (first.host, first.pid) == (socket.gethostname(), os.getpid())
    assert first.started_at == first.last_seen_at and first.started_at.tzinfo is not None
    assert not first.stale and first.seconds_since_seen < 30
    workers.beat(me, in_flight=0)
    second = _only(me)
    assert second.started_at == first.started_at  # kept: the worker did not restart
    assert second.last_seen_at > first.last_seen_at and second.in_flight == 0
    assert len(workers.list_workers()) == 1  # upserted, not added


def test_a_worker_silent_for_three_heartbeats_is_stale():
    quick = workers.identity(WorkerKind.TASK_WORKER, "asr-cpu", heartbeat_seconds=0.1)
    slow = workers.identity(WorkerKind.BATCH_WORKER, "batch-video", heartbeat_seconds=60)
    workers.beat(quick)
    workers.beat(slow)
    assert not _only(quick).stale
    deadline = time.monotonic() + 10
    while not _only(quick).stale:
        assert time.monotonic() < deadline, _only(quick)
        time.sleep(0.05)
    assert _only(quick).seconds_since_seen > 3 * 0.1
    assert not _only(slow).stale  # judged by its own heartbeat interval
    workers.beat(quick)
    assert not _only(quick).stale  # beating again makes it live again


def test_a_clean_exit_retires_the_worker():
    me = workers.identity(WorkerKind.TASK_WORKER, "bot-media", heartbeat_seconds=10)
    other = workers.identity(WorkerKind.TASK_WORKER, "bot-media", heartbeat_seconds=10)
    workers.beat(me)
    workers.beat(other)
    assert workers.retire(me)
    assert [w.id for w in workers.list_workers()] == [other.id]
    assert not workers.retire(me)


def test_rows_silent_for_longer_than_forget_are_pruned():
    gone = workers.identity(WorkerKind.TASK_WORKER, "asr-cpu", heartbeat_seconds=10)
    alive = workers.identity(WorkerKind.TASK_WORKER, "asr-cpu", heartbeat_seconds=10)
    workers.beat(gone)
    workers.beat(alive)
    with get_engine().begin() as connection:
        long_ago = db_now(connection) - timedelta(days=2)
        connection.execute(
            update(workers.TABLE).where(workers.TABLE.c.id == gone.id).values(last_seen_at=long_ago)
        )
    assert _only(gone).stale and _only(gone).seconds_since_seen > 86400
    assert workers.prune(86400) == 1
    assert [w.id for w in workers.list_workers()] == [alive.id]


def test_heartbeating_beats_from_a_thread_with_the_work_in_flight_and_retires():
    busy = [0]
    with workers.heartbeating(
        WorkerKind.TASK_WORKER, "bot-chat", lambda: busy[0], every=0.05
    ) as me:
        deadline = time.monotonic() + 10
        while not [w for w in workers.list_workers() if w.id == me.id]:
            assert time.monotonic() < deadline, "never registered"
            time.sleep(0.02)
        busy[0] = 3
        while _only(me).in_flight != 3:
            assert time.monotonic() < deadline, _only(me)
            time.sleep(0.02)
        first_seen = _only(me).last_seen_at
        while _only(me).last_seen_at == first_seen:
            assert time.monotonic() < deadline, "it beat once only"
            time.sleep(0.02)
        assert not _only(me).stale
    assert workers.list_workers() == []


def test_a_heartbeat_that_fails_never_stops_the_worker(monkeypatch):
    calls = []

    def broken(_me, in_flight=0):
        calls.append(in_flight)
        raise ConnectionError("store unreachable")

    monkeypatch.setattr(workers, "beat", broken)
    with workers.heartbeating(WorkerKind.BATCH_WORKER, "batch-video", every=0.02):
        deadline = time.monotonic() + 10
        while len(calls) < 3:  # it went on beating after the failures
            assert time.monotonic() < deadline
            time.sleep(0.02)
