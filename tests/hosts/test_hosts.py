"""Relay on several hosts (network namespaces, tests/netns.py), broken on purpose.

The layout (tests/relay_hosts.py) runs each part on its own host with compose's settings and
the hosts' addresses; the scenarios wait on Relay's own /api/health/ready and /api/workers,
never on the clock. The layout is started once for the package (conftest.py). ``make
hosts-test`` runs this package alone; ``make test`` includes it.
Where hosts cannot be made (not root) it is skipped, except with CI=true: there it fails.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from typing import Any

import httpx
from psycopg.rows import dict_row

from bench.speech import clip
from flows.asr_tasks import maintenance_interval
from relay_settings import PROJECT_ROOT
from tasks.wer import word_error_rate
from tests.hosts.conftest import ASR_HOSTS, BOT_KEYS, LEASES
from tests.hosts_jobs import (
    AUTH,
    assert_nothing_running,
    chunk_rows,
    job_row,
    record_figure,
    relay_db,
    running_job,
    transcribe_runs,
    transcript,
    upload,
    watch_job,
)
from tests.netns import hosts_required
from tests.relay_hosts import API_PORT, FAKETIME, Layout

BOT_HOSTS = ["bot-1", "bot-2"]
SAMPLE = PROJECT_ROOT / "samples" / "meeting.ogg"  # 25 s: a job that proves work runs again

pytestmark = hosts_required()


def test_spread_a_10_minute_upload_runs_its_chunks_on_both_asr_hosts(layout, speech, figures):
    audio, reference = speech
    since = time.monotonic()
    job_id = upload(layout, "api-1", audio)
    final = watch_job(layout, "api-1", job_id).until_ended(300)
    assert final["status"] == "completed", final
    chunks = chunk_rows(layout, job_id)
    assert len(chunks) >= 4 and {c["status"] for c in chunks} == {"done"}, chunks
    assert {c["worker_host"] for c in chunks} == set(ASR_HOSTS), chunks
    # Read through the other API host: the same store and the same shared data folder.
    text = transcript(layout, "api-2", job_id)
    assert word_error_rate(reference, text) < 0.15
    record_figure(figures, layout, "nothing: the job's own time", since, job_id)


def test_an_asr_host_killed_mid_job_leaves_the_job_to_the_other(layout, speech, figures):
    audio, reference = speech
    job_id = upload(layout, "api-2", audio)
    watch = watch_job(layout, "api-2", job_id)
    victim = layout.net.hosts["asr-2"]

    def decoding_on_victim() -> bool:
        live = layout.census("api-1")
        dask = [w for w in live if w["kind"] == "dask-worker" and w["host"] == victim.address]
        return bool(dask and dask[0]["in_flight"]) and bool(watch.seen and watch.seen[-1] > 0)

    layout.wait(decoding_on_victim, 120, "asr-2 never decoded a chunk of the job")
    coordinator = job_row(layout, job_id)["lease_owner"]
    victim.kill()
    since = time.monotonic()
    final = watch.until_ended(300)
    assert final["status"] == "completed", (final, coordinator)
    record_figure(
        figures, layout, f"asr-2 killed (the job's coordinator: {coordinator})", since, job_id
    )
    chunks = chunk_rows(layout, job_id)
    assert {c["status"] for c in chunks} == {"done"}, chunks
    row = job_row(layout, job_id)
    # Every chunk's result recorded exactly once: the counters match the rows.
    assert row["chunks_done"] == row["chunks_total"] == len(chunks), row
    assert row["chunks_failed"] == 0
    assert watch.seen == sorted(watch.seen), f"progress moved back: {watch.seen}"
    assert word_error_rate(reference, transcript(layout, "api-1", job_id)) < 0.15

    layout.start_asr("asr-2")  # the host comes back for the next scenarios
    layout.wait_ready("api-1", ASR_HOSTS)


def test_an_api_host_dying_mid_upload_then_a_retry_on_another_gives_one_job(
    layout, speech, figures
):
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
    since = time.monotonic()
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
    with relay_db(layout) as connection:
        jobs = connection.execute(
            "SELECT id FROM transcription_job WHERE source_name = %s", (name,)
        ).fetchall()
    assert [row[0] for row in jobs] == [first.json()["job_id"]]
    final = watch_job(layout, "api-2", first.json()["job_id"]).until_ended(300)
    assert final["status"] == "completed", final
    record_figure(figures, layout, "api-1 killed mid-upload", since, first.json()["job_id"])
    layout.start_api("api-1")  # back for the next scenarios


def test_a_new_asr_host_joining_mid_run_takes_chunks(layout, figures):
    path, _ = clip(30)
    job_id = upload(layout, "api-1", path.read_bytes())
    watch = watch_job(layout, "api-1", job_id)
    layout.wait(lambda: watch.seen and watch.seen[-1] > 0, 120, "the 30-min job never started")
    since = time.monotonic()
    newcomer = layout.start_asr("asr-3")
    layout.wait_ready("api-1", [*ASR_HOSTS, "asr-3"])
    joined_at = watch.seen[-1]
    final = watch.until_ended(400)
    assert final["status"] == "completed", final
    hosts = [c["worker_host"] for c in chunk_rows(layout, job_id)]
    assert "asr-3" in hosts, f"joined at {joined_at} %, chunks by host: {hosts}"
    assert {c["status"] for c in chunk_rows(layout, job_id)} == {"done"}
    record_figure(figures, layout, "asr-3 joined mid-run", since, job_id)
    newcomer.kill()  # two ASR hosts again: the machine has two cores


def test_the_database_host_stopped_for_20_s_under_load_loses_nothing(layout, speech, figures):
    audio, _ = speech
    job_id, watch = running_job(layout, "api-1", audio)
    db = layout.net.hosts["db"]
    layout.stop_db()
    since = time.monotonic()
    threading.Event().wait(20)  # the outage itself: the scenario is 20 s without a database
    db.relaunch("postgres")
    layout.wait_db()
    final = watch.until_ended(300)
    assert final["status"] == "completed", final
    assert watch.unanswered > 0, "the API answered throughout: was the database down?"
    row = job_row(layout, job_id)
    assert row["chunks_done"] == row["chunks_total"] == len(chunk_rows(layout, job_id)), row
    assert_nothing_running(layout)
    # Each API replica's pool held connections the restart closed: its readiness probe finds
    # one, SQLAlchemy drops them all, and the replica is ready again (as a load balancer sees).
    for api in ("api-1", "api-2"):
        layout.wait_ready(api, ASR_HOSTS)
    record_figure(figures, layout, "PostgreSQL stopped 20 s", since, job_id)


def test_the_prefect_host_restarting_leaves_no_job_or_run_hanging(layout, speech, figures):
    audio, _ = speech
    job_id, watch = running_job(layout, "api-2", audio)
    prefect = layout.net.hosts["prefect"]
    prefect.kill()
    since = time.monotonic()
    prefect.relaunch("server")
    layout.wait_prefect(prefect)
    # Chunks whose task runs could not reach Prefect meanwhile are submitted again once it
    # answers (the job completed in each run since: docs/hosts.md). What the issue asks of
    # any run in flight: it ends, completed or failed with its reason, in a final state.
    final = watch.until_ended(300)
    row = job_row(layout, job_id)
    assert final["status"] == "completed" or row["error"], (final, row["error"])
    # The job's row ends inside the flow, its run's state just after it: wait for that.
    finals = ("COMPLETED", "FAILED", "CRASHED")
    why = f"flow run {row['flow_run_id']} never ended ({row['error']})"
    layout.wait(lambda: layout.flow_run_state(row["flow_run_id"]) in finals, 120, why)
    state = layout.flow_run_state(row["flow_run_id"])
    record_figure(
        figures, layout, f"Prefect server killed, restarted (run: {state})", since, job_id
    )
    # The task workers reconnected by themselves: a new job runs.
    after = upload(layout, "api-1", SAMPLE)
    assert watch_job(layout, "api-1", after).until_ended(300)["status"] == "completed"


def test_the_dask_scheduler_host_dying_loses_no_job_and_new_ones_run(layout, speech, figures):
    audio, _ = speech
    job_id, watch = running_job(layout, "api-1", audio)
    dask = layout.net.hosts["dask"]
    dask.kill()
    since = time.monotonic()
    dask.relaunch("scheduler")
    layout.wait_dask()
    # Its chunks in flight were lost with the scheduler: submitted again, they run on the
    # new one once the workers (restarted by their restart policy) join it.
    final = watch.until_ended(300)
    assert final["status"] == "completed", final
    assert {c["status"] for c in chunk_rows(layout, job_id)} == {"done"}
    assert watch.seen == sorted(watch.seen), f"progress moved back: {watch.seen}"
    record_figure(figures, layout, "Dask scheduler killed, restarted", since, job_id)
    layout.wait_ready("api-1", ASR_HOSTS)  # the workers found the new scheduler themselves
    after = upload(layout, "api-2", SAMPLE)
    assert watch_job(layout, "api-2", after).until_ended(300)["status"] == "completed"
    assert_nothing_running(layout)


def test_a_task_worker_90_s_fast_takes_no_lease_early(layout, speech, figures):
    path, _ = clip(30)  # long enough for the fast worker to start and look (below)
    fast = layout.net.hosts["asr-2"]
    fast.stop("asr-tasks")  # asr-1's task worker takes the job
    job_id, watch = running_job(layout, "api-1", path.read_bytes())
    owner = job_row(layout, job_id)["lease_owner"]
    assert owner and owner.startswith("asr-1:"), owner
    start_of_log = fast.log_size("asr-tasks")  # what this fast worker writes comes after
    layout.start_asr_tasks(fast, clock_ahead=90)
    since = time.monotonic()
    # Listed live: its heartbeats are stamped by the database's clock, not its own.
    layout.wait_ready("api-1", ASR_HOSTS)
    listed = time.monotonic()
    clock = fast.run(["date", "+%s"], {"LD_PRELOAD": FAKETIME, "FAKETIME": "+90"})
    assert int(clock) - time.time() > 80, "the fast host's clock is not ahead"
    final = watch.until_ended(400)
    assert final["status"] == "completed", final
    # Its maintenance pass (every third of the 15-s lease) ran at least once meanwhile.
    every = maintenance_interval(float(LEASES["RELAY_JOB_LEASE_SECONDS"]))
    passes = (time.monotonic() - listed) / every
    assert passes >= 2, f"the job ended {passes:.1f} maintenance intervals after the fast worker"
    # Every 15 s the fast worker looked for jobs whose lease ran out: it took none early.
    assert "lost its worker" not in fast.log("asr-tasks", since=start_of_log)
    assert transcribe_runs(layout, job_id) == 1
    row = job_row(layout, job_id)
    assert row["chunks_done"] == row["chunks_total"] == len(chunk_rows(layout, job_id)), row
    record_figure(figures, layout, "asr-2's task worker 90 s fast", since, job_id)
    # A job the fast worker coordinates itself completes too.
    layout.net.hosts["asr-1"].stop("asr-tasks")
    second, watch = running_job(layout, "api-2", speech[0])
    owner = job_row(layout, second)["lease_owner"]
    assert owner and owner.startswith("asr-2:"), owner
    assert watch.until_ended(400)["status"] == "completed"
    assert transcribe_runs(layout, second) == 1
    layout.start_asr_tasks(layout.net.hosts["asr-1"])
    fast.stop("asr-tasks")
    layout.start_asr_tasks(fast)
    layout.wait_ready("api-1", ASR_HOSTS)


def _bot_rows(layout: Layout, ids: list[str]) -> dict[str, dict[str, Any]]:
    query = "SELECT id, status, delivery_status, worker, lease_owner FROM bot_request"
    with relay_db(layout) as connection, connection.cursor(row_factory=dict_row) as cur:
        cur.execute(f"{query} WHERE id = ANY(%s)", (ids,))
        return {row["id"]: row for row in cur.fetchall()}


def test_a_bot_host_cut_off_mid_burst_leaves_every_request_answered_once(layout, figures):
    openai, discord = layout.fakes["openai"], layout.fakes["discord"]
    layout.save_key_pool("openai-main", "openai", openai.base_url, BOT_KEYS)
    for name in BOT_HOSTS:
        layout.start_bot(name)
    layout.wait_task_workers("api-1", "bot-chat", BOT_HOSTS)
    ids = []
    for number in range(60):
        hook = discord.url_for("77", "hosts-hook")
        body = {"kind": "chat", "prompt": f"question {number}", "user_id": f"{5000 + number}",
                "channel": "chat-hosts", "webhook_url": hook}  # fmt: skip
        api = layout.api_url(("api-1", "api-2")[number % 2])
        answer = layout.client.post(f"{api}/api/bot/requests", headers=AUTH, json=body)
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["request_id"])
    victim = layout.net.hosts["bot-2"]

    def held_by_victim() -> list[str]:
        rows = _bot_rows(layout, ids).values()
        owned = [r for r in rows if (r["lease_owner"] or "").startswith("bot-2:")]
        return [r["id"] for r in owned if r["status"] == "running"]

    layout.wait(held_by_victim, 120, "bot-2 never held a request")
    victim.cut()
    since = time.monotonic()
    held = held_by_victim()  # what it held as it went: it can change nothing now
    # Cut off for 4 of its 10-s leases: past a lease and a maintenance pass (every 5 s) of
    # bot-1, which then takes its requests over (25 s was not always enough).
    threading.Event().wait(40)
    victim.restore()

    def all_answered() -> bool:
        rows = _bot_rows(layout, ids).values()
        return all(r["status"] == "completed" and r["delivery_status"] == "delivered" for r in rows)

    layout.wait(all_answered, 240, "not every request was answered")
    recovered = time.monotonic() - since
    rows = _bot_rows(layout, ids)
    posted = [r.payload.get("content", "") for r in discord.requests]
    for number in range(60):  # exactly one Discord answer each, late ones fenced off
        posts = [text for text in posted if text.startswith(f"<@{5000 + number}>")]
        assert len(posts) == 1, (number, posts)
    # Each request bot-2 held was answered once (above), by bot-1 after a takeover or by
    # bot-2 itself: a re-dispatched run can reach bot-2 again once it is back.
    assert held and all(rows[i]["status"] == "completed" for i in held), (held, rows)
    taken_over = sum(rows[i]["worker"].startswith("bot-1:") for i in held)
    for key, per_minute in BOT_KEYS.items():
        assert openai.max_in_window(key) <= per_minute and openai.rejected(key) == 0, key
    figures.append(
        {
            "scenario": "test_a_bot_host_cut_off_mid_burst_leaves_every_request_answered_once",
            "broken": f"bot-2 cut off 40 s holding {len(held)} of 60 requests, "
            f"{taken_over} answered by bot-1",
            "recovered_seconds": round(recovered, 1),
            "work_lost": sum(r["delivery_status"] != "delivered" for r in rows.values()),
            "recorded_twice": len([t for t in posted if t.startswith("<@5")]) - len(ids),
        }
    )
