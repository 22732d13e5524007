"""Every Dask worker Relay starts runs without Dask's MALLOC_TRIM_THRESHOLD_ (it more than
doubles faster-whisper's decode time), with glibc's huge pages for large allocations (a
tenth off a batched decode) and Dask's thread caps: the per-run LocalCluster, the task
worker's warm cluster, and `dask worker` as `make stack` starts it."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
from distributed import Client
from prefect import flow, task

from deployments.stack import dask_scheduler_command, dask_workers_command, stack_env
from flows.runtime import chunk_task_runner

TRIM = "MALLOC_TRIM_THRESHOLD_"
TUNABLES = "GLIBC_TUNABLES"


def worker_environment() -> dict[str, str | None]:
    """What a worker process sees of the variables Dask's nanny sets before spawning it."""
    names = (TRIM, TUNABLES, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    return {name: os.environ.get(name) for name in names}


def assert_fixed(environments: dict[str, dict[str, str | None]]) -> None:
    assert environments, "no worker answered"
    for worker, seen in environments.items():
        assert seen[TRIM] is None, f"{worker} runs with {TRIM}={seen[TRIM]}"
        assert seen[TUNABLES] == "glibc.malloc.hugetlb=1", worker
        # Dask's other pre-spawn variables stay: numpy and CTranslate2 keep their thread caps.
        assert seen["MKL_NUM_THREADS"] == "1", worker
        assert seen["OPENBLAS_NUM_THREADS"] == "1", worker
        assert seen["OMP_NUM_THREADS"], worker


@pytest.fixture(autouse=True)
def _nothing_inherited(monkeypatch):
    # A worker inherits its parent's environment: the test proves nothing if the parent has
    # them. (A nanny sets its pre-spawn variables in its own process, and a LocalCluster's
    # nannies run in this one: each test starts without what the last one's left.)
    assert TRIM not in os.environ, f"the test process itself has {TRIM}"
    monkeypatch.setenv(TUNABLES, "")  # recorded, so what a nanny sets here is undone after
    monkeypatch.delenv(TUNABLES)


@task
def environment_in_worker() -> dict[str, str | None]:
    return worker_environment()


def test_the_per_run_local_cluster_runs_without_malloc_trim(prefect_server):  # noqa: ARG001
    @flow
    def probe() -> dict[str, dict[str, str | None]]:
        futures = [environment_in_worker.submit() for _ in range(2)]
        return {f"task {i}": future.result() for i, future in enumerate(futures)}

    assert_fixed(probe.with_options(task_runner=chunk_task_runner(2))())


def test_the_task_workers_warm_cluster_runs_without_malloc_trim(prefect_server, relay_env):  # noqa: ARG001
    from flows.asr_tasks import warm_local_cluster

    # warm_local_cluster exports its address into the settings: relay_env reloads them after
    # the test, so no later test is pointed at this closed cluster.
    relay_env(DASK_ADDRESS="")
    cluster = warm_local_cluster(1)
    try:
        with Client(cluster) as client:
            assert_fixed(client.run(worker_environment))
    finally:
        cluster.close()


def test_dask_worker_as_make_stack_starts_it_runs_without_malloc_trim(state_dir, tmp_path):
    port = free_port()
    env = {
        **stack_env(),
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        "RELAY_DATA_DIR": str(state_dir / "data"),
    }
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for command in (dask_scheduler_command(port), dask_workers_command(port, 1))
    ]
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            assert_fixed(client.run(worker_environment))
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
