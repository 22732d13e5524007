"""flows/runtime.py: flow runs without Prefect's heartbeat where Relay has its own, and the
thread count that chunk plans are made for."""

from __future__ import annotations

import threading

from distributed import LocalCluster
from prefect import flow

from flows.runtime import cluster_threads, without_prefect_heartbeat


def prefect_heartbeat_threads() -> int:
    """Threads running Prefect's flow-run heartbeat loop (flow_engine._send_heartbeats)."""
    return sum(
        # Thread._args is private, read only to recognise Prefect's heartbeat thread.
        any(getattr(arg, "__name__", "") == "heartbeat_loop" for arg in thread._args)  # type: ignore[attr-defined]  # private on purpose (above)
        for thread in threading.enumerate()
    )


@flow
def count_heartbeats() -> int:
    return prefect_heartbeat_threads()


def test_flow_runs_inside_without_prefect_heartbeat_start_no_heartbeat_thread(prefect_server):  # noqa: ARG001
    # Prefect beats by default, and its heartbeat thread is what delays the end of a run (it
    # sleeps in 1 s steps and is joined): if Prefect renames it, this test says to re-measure.
    assert count_heartbeats() == 1
    with without_prefect_heartbeat():
        assert count_heartbeats() == 0
        with without_prefect_heartbeat():  # nested: still off, and back on only at the end
            assert count_heartbeats() == 0
    assert count_heartbeats() == 1


def test_chunks_are_planned_for_the_clusters_threads(relay_env):
    assert cluster_threads() == 2  # tests run LocalClusters of RELAY_DASK_WORKERS=2
    with LocalCluster(n_workers=3, threads_per_worker=1, dashboard_address=None) as cluster:
        relay_env(DASK_ADDRESS=cluster.scheduler_address)
        assert cluster_threads() == 3
    relay_env(DASK_ADDRESS="tcp://127.0.0.1:9")  # nothing there: plan for one
    assert cluster_threads() == 1
