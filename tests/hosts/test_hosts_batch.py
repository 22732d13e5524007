"""Batch video reprocessing on several hosts (tests/netns.py), a batch host killed mid-drain.

Two ``batch-video`` hosts join the package's layout (conftest.py) as compose runs them
(tests/relay_hosts_batch.py), the flows deployed as compose's bootstrap does. Skipped without
root, except with CI=true.
"""

from __future__ import annotations

import json
import sys
import time

from tests.hosts_jobs import AUTH
from tests.netns import hosts_required
from tests.relay_hosts_batch import (
    batch_run_command,
    claims_by_host,
    deploy,
    done_among,
    drained,
    held_by,
    start_batch_worker,
    videos_on_shared_folder,
    wait_batch_workers,
)

BATCH_HOSTS = ["batch-1", "batch-2"]

pytestmark = hosts_required()


def test_a_batch_host_dying_while_100_videos_drain_leaves_them_to_the_other(layout, figures):
    deploy(layout)  # as compose's bootstrap service does
    for name in BATCH_HOSTS:
        start_batch_worker(layout, name)
    wait_batch_workers(layout, BATCH_HOSTS)
    folder, made = videos_on_shared_folder(layout, 100)
    prefect, victim = layout.net.hosts["prefect"], layout.net.hosts["batch-2"]
    prefect.run([sys.executable, "-m", "cli", "batch", "import", str(folder)], layout.relay_env())
    run = prefect.start("batch-run", batch_run_command(), layout.relay_env())

    def both_working() -> bool:
        held, done = claims_by_host(layout)
        return all(held[name] for name in BATCH_HOSTS) and done >= 10

    layout.wait(both_working, 240, "both batch hosts never held videos with 10 done")
    victim.kill()
    killed = time.monotonic()
    lost, done_at_kill = held_by(layout, "batch-2"), claims_by_host(layout)[1]  # frozen now
    assert lost, "batch-2 held no video when it died"
    layout.wait(lambda: done_among(layout, lost) == len(lost), 120, f"{lost} never redone")
    recovered = time.monotonic() - killed
    layout.wait(lambda: run.poll() is not None, 300, "the batch never ended")
    prefect.processes.pop("batch-run")
    output = prefect.log("batch-run")
    assert run.returncode == 0, output[-3000:]
    outcome = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    assert (outcome["videos_total"], outcome["done"], outcome["left"]) == (100, 100, 0), outcome

    log = drained(layout, outcome["batch_id"])
    done = log.done_per_video()
    assert len(done) == len(made) and set(done.values()) == {1}, done  # each video done once
    assert all(a["outcome"] in ("done", "lost") for a in log.attempts), log.attempts
    for video_id in lost:  # batch-2's claim ended 'lost' when batch-1 took it and did it
        mine = [(a["worker"].split(":")[0], a["outcome"]) for a in log.attempts
                if a["video_id"] == video_id]  # fmt: skip
        assert mine == [("batch-2", "lost"), ("batch-1", "done")], (video_id, mine)
    victim_done = sum(a["outcome"] == "done" for a in log.of("batch-2"))
    assert victim_done + sum(a["outcome"] == "done" for a in log.of("batch-1")) == 100
    url = f"{layout.api_url('api-1')}/api/batches/{outcome['batch_id']}"
    seen = layout.client.get(url, headers=AUTH).json()
    assert (seen["status"], seen["done"], seen["failed"]) == ("completed", 100, 0), seen
    drain = (log.batch["finished_at"] - log.batch["created_at"]).total_seconds()
    figures.append(
        {
            "scenario": "test_a_batch_host_dying_while_100_videos_drain_leaves_them_to_the_other",
            "broken": f"batch-2 killed holding {len(lost)} videos ({done_at_kill} done)",
            "recovered_seconds": round(recovered, 1),
            "work_lost": 100 - len(done),
            "recorded_twice": sum(count > 1 for count in done.values()),
            "drain_seconds": round(drain, 1),
            "processing_span_seconds": round(log.span_seconds(), 1),
            "done_by_batch_2": victim_done,
            "video_seconds": round(log.mean_video_seconds(), 2),
        }
    )
    for name in BATCH_HOSTS:  # the batch hosts' work is done: their cores back
        layout.net.hosts[name].kill()
