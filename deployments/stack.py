"""``make stack`` / ``make stack-down``: the whole system on this machine, without Docker.

``python -m cli stack up`` starts, in the background and in this order:

1. ``prefect server start`` on PostgreSQL (database ``relay_prefect``);
2. a Dask scheduler and workers that preload the model (``deployments.dask_preload``);
3. ``make bootstrap`` (pools, queues, limits, blocks) and ``prefect deploy --all``;
4. a process worker per pool of ``work-pools/pools.yaml`` (GPU pools only where
   ``nvidia-smi`` works), for deployment runs, and a task worker per pool that serves a
   background task (``python -m cli worker --pool P``): the transcription pools' take the
   API's submissions, the bot pools' answer bot requests;
5. the API (``python -m cli api``) against that server;
6. Prometheus (Debian's ``prometheus``, ``make system-deps``) scraping the API, the Dask
   scheduler and workers and the task workers, with Relay's alert rules
   (deployments/prometheus.py); its data stays in ``.relay/stack/prometheus/``.

Each runs in its own process group; their ids go to ``.relay/stack/pids.json`` and their
output to ``.relay/stack/logs/``. ``python -m cli stack down`` stops exactly those
groups and nothing else. Jobs submitted here run on the warm Dask workers: no cluster
start-up and no model loading per job.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from deployments.alert_rules import RULES_FILE
from deployments.prometheus import (
    WORKER_METRICS_PORT,
    Job,
    ScrapeJob,
    binary,
    prometheus_command,
    scrape_config,
    write_config,
)
from flows.runtime import DASK_CONFIG_FILE, SCHEDULER_SATURATION
from relay_pools import Pool, Workload, load_pools
from relay_settings import DEFAULT_STATE_DIR, PROJECT_ROOT

STACK_DIR = DEFAULT_STATE_DIR / "stack"
PIDS = STACK_DIR / "pids.json"
PG_ADMIN = os.environ.get("RELAY_STACK_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PREFECT_PORT = int(os.environ.get("RELAY_STACK_PREFECT_PORT", "4200"))
DASK_PORT = int(os.environ.get("RELAY_STACK_DASK_PORT", "8786"))
DASK_WORKERS = int(os.environ.get("RELAY_STACK_DASK_WORKERS", "2"))
PROMETHEUS_PORT = int(os.environ.get("RELAY_STACK_PROMETHEUS_PORT", "9090"))
# HTTP ports serving /metrics: the scheduler's, then one per Dask worker (base + index),
# then one per task worker (base + index).
DASK_HTTP_PORT = int(os.environ.get("RELAY_STACK_DASK_HTTP_PORT", "8787"))
TASK_METRICS_PORT = int(os.environ.get("RELAY_STACK_TASK_METRICS_PORT", "9401"))
# Prefect process workers' /health (--with-healthcheck), one port each (base + index).
PROCESS_WORKER_HEALTH_PORT = int(os.environ.get("RELAY_STACK_WORKER_HEALTH_PORT", "8180"))
TRANSCRIPTIONS_PER_HOST = 2  # process worker --limit on the asr pools
TASK_LIMITS = {"bot-media": 8}  # task worker --limit where it differs from the registry's
BIN = Path(sys.executable).parent


def stack_env() -> dict[str, str]:
    """The environment every stack process shares."""
    pg = PG_ADMIN.rsplit("/", 1)[0]
    return {
        **os.environ,
        "PREFECT_API_URL": f"http://127.0.0.1:{PREFECT_PORT}/api",
        "PREFECT_HOME": str(STACK_DIR / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": (
            pg.replace("postgresql://", "postgresql+asyncpg://") + "/relay_prefect"
        ),
        "RELAY_DATABASE_URL": os.environ.get("RELAY_DATABASE_URL", f"{pg}/relay"),
        "RELAY_DASK_ADDRESS": f"tcp://127.0.0.1:{DASK_PORT}",
        "DASK_LOGGING__DISTRIBUTED": "warning",
        # The scheduler and workers below load Relay's Dask configuration (no malloc trim).
        "DASK_CONFIG": str(DASK_CONFIG_FILE),
        "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": str(SCHEDULER_SATURATION),
        "OMP_NUM_THREADS": "1",
        # Workers ask for scheduled runs every second (Prefect's default is 10 s): a local
        # server can take it, and a submission waits 0.5 s on average instead of 5 s.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        # API submissions go to the warm transcription task workers (flows.asr_tasks).
        "RELAY_TRANSCRIBE_VIA": os.environ.get("RELAY_TRANSCRIBE_VIA", "task-worker"),
        "PYTHONPATH": str(PROJECT_ROOT),
    }


def task_worker_command(pool: str, limit: int, metrics_port: int | None = None) -> list[str]:
    """The command of a pool's task worker: its /metrics on ``metrics_port`` (0: none; None:
    RELAY_METRICS_WORKER_PORT's, as the stack sets it per worker)."""
    command = [sys.executable, "-m", "cli", "worker", "--pool", pool, "--limit", str(limit)]
    return command if metrics_port is None else [*command, "--metrics-port", str(metrics_port)]


def process_worker_command(pool: str, limit: int) -> list[str]:
    """A pool's Prefect process worker, with Prefect's /health (``process_worker_env``)."""
    prefect = str(BIN / "prefect")
    return [prefect, "worker", "start", "--pool", pool, "--type", "process", "--limit",
            str(limit), "--with-healthcheck"]  # fmt: skip


def process_worker_env(env: dict[str, str], health_port: int) -> dict[str, str]:
    """Where a process worker's /health listens: 200 while it polls Prefect for runs,
    503 once it has not for 30 polls. Prefect's default (0.0.0.0:8080) would be shared."""
    return {
        **env,
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(health_port),
    }


def dask_scheduler_command(port: int, http_port: int = DASK_HTTP_PORT) -> list[str]:
    """The stack's Dask scheduler on 127.0.0.1:``port``; its HTTP server (/health,
    /metrics; no dashboard) on 127.0.0.1:``http_port``."""
    dask = str(BIN / "dask")
    return [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
            "--dashboard-address", f"127.0.0.1:{http_port}"]  # fmt: skip


def dask_workers_command(port: int, workers: int, http_port: int = 0) -> list[str]:
    """The stack's Dask workers: single-threaded processes that preload the model. Their
    HTTP server (/metrics) listens on 127.0.0.1:``http_port`` (0: any free port)."""
    dask, address = str(BIN / "dask"), f"tcp://127.0.0.1:{port}"
    return [dask, "worker", address, "--nworkers", str(workers), "--nthreads", "1",
            "--no-dashboard", "--dashboard-address", f"127.0.0.1:{http_port}",
            "--preload", "deployments.dask_preload"]  # fmt: skip


def scrape_jobs(
    api_port: int, task_ports: list[int], dask_http_port: int, dask_worker_ports: list[int]
) -> list[ScrapeJob]:
    """What the stack's Prometheus scrapes: every process that serves /metrics."""
    local = "127.0.0.1:{}".format
    return [
        ScrapeJob(Job.API, (local(api_port),)),
        ScrapeJob(Job.TASK_WORKERS, tuple(map(local, task_ports))),
        ScrapeJob(Job.DASK_SCHEDULER, (local(dask_http_port),)),
        ScrapeJob(Job.DASK_WORKERS, tuple(map(local, dask_worker_ports))),
    ]


def start_prometheus(jobs: list[ScrapeJob], env: dict[str, str], pids: dict[str, int]) -> None:
    """Prometheus over ``jobs`` with Relay's rules, unless the binary is missing."""
    if binary() is None:
        print("  prometheus: not installed (`make system-deps`), the stack runs without it")
        return
    folder = STACK_DIR / "prometheus"
    config = write_config(folder / "prometheus.yml", scrape_config(jobs, RULES_FILE))
    start("prometheus", prometheus_command(config, folder / "data", PROMETHEUS_PORT), env, pids)


def ensure_databases(names: tuple[str, ...] = ("relay_prefect", "relay")) -> None:
    """Create the stack's PostgreSQL databases if they are missing."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        for name in names:
            exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                admin.execute(f'CREATE DATABASE "{name}"')


def start(name: str, command: list[str], env: dict[str, str], pids: dict[str, int]) -> None:
    """Start one background process in its own group, logging to logs/<name>.log."""
    path = STACK_DIR / "logs" / f"{name}.log"
    _log_offsets[name] = path.stat().st_size if path.exists() else 0  # this start's lines
    log = path.open("a")
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pids[name] = process.pid
    PIDS.write_text(json.dumps(pids, indent=2))
    print(f"  {name:20} pid {process.pid}  log {log.name}")


def wait_http(url: str, what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: {what} did not answer at {url} within {limit:.0f} s")


def wait_log(name: str, text: str, limit: float = 180.0) -> None:
    """Wait until process ``name``'s log (from this start) says ``text``."""
    log = STACK_DIR / "logs" / f"{name}.log"
    offset = _log_offsets.get(name, 0)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with log.open("rb") as handle:
            handle.seek(offset)
            if text.encode() in handle.read():
                return
        time.sleep(0.5)
    raise SystemExit(f"error: {name} did not say {text!r} within {limit:.0f} s; see {log}")


_log_offsets: dict[str, int] = {}


def wait_dask_workers(count: int, limit: float = 180.0) -> None:
    from distributed import Client

    with Client(f"tcp://127.0.0.1:{DASK_PORT}", timeout=limit) as client:
        client.wait_for_workers(count, timeout=limit)


def pools_here() -> list[Pool]:
    """The registry's pools this machine serves: GPU pools only where a GPU is present."""
    has_gpu = shutil.which("nvidia-smi") is not None
    return [pool for pool in load_pools().values() if has_gpu or not pool.gpu]


def up() -> int:
    """Start the stack (refuses when one is already running)."""
    if running():
        print("the stack is already running; `make stack-down` first", file=sys.stderr)
        return 1
    (STACK_DIR / "logs").mkdir(parents=True, exist_ok=True)
    env = stack_env()
    ensure_databases()
    pids: dict[str, int] = {}
    print("starting Relay's local stack:")
    start(
        "prefect-server",
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(PREFECT_PORT),
        ],
        env,
        pids,
    )
    start("dask-scheduler", dask_scheduler_command(DASK_PORT), env, pids)
    # One process per worker: each serves /metrics on a port Prometheus knows.
    dask_worker_ports = [DASK_HTTP_PORT + 1 + i for i in range(DASK_WORKERS)]
    for i, http_port in enumerate(dask_worker_ports):
        start(f"dask-worker-{i}", dask_workers_command(DASK_PORT, 1, http_port), env, pids)
    wait_http(f"http://127.0.0.1:{PREFECT_PORT}/api/health", "the Prefect server")
    subprocess.run(
        [sys.executable, "-m", "cli", "bootstrap"], cwd=PROJECT_ROOT, env=env, check=True
    )
    subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for index, pool in enumerate(pools_here()):
        limit = TRANSCRIPTIONS_PER_HOST if pool.workload is Workload.TRANSCRIPTION else 4
        worker_env = process_worker_env(env, PROCESS_WORKER_HEALTH_PORT + index)
        start(f"worker-{pool.name}", process_worker_command(pool.name, limit), worker_env, pids)
    task_ports: list[int] = []
    for pool in pools_here():
        if pool.task is None:
            continue
        # bot-media answers wait on slow providers: 8 at once per host is plenty here.
        limit = TASK_LIMITS.get(pool.name, pool.task.limit)
        task_ports.append(TASK_METRICS_PORT + len(task_ports))
        worker_env = {**env, WORKER_METRICS_PORT: str(task_ports[-1])}
        start(f"tasks-{pool.name}", task_worker_command(pool.name, limit), worker_env, pids)
    start("api", [sys.executable, "-m", "cli", "api"], env, pids)
    api_port = int(os.environ.get("RELAY_API_PORT", "8000"))
    jobs = scrape_jobs(api_port, task_ports, DASK_HTTP_PORT, dask_worker_ports)
    start_prometheus(jobs, env, pids)
    wait_dask_workers(DASK_WORKERS)
    for name in pids:  # a submission made before its task worker listens waits for it
        if name.startswith("tasks-"):
            wait_log(name, "Subscribing to runs of task(s)")
    wait_http(f"http://127.0.0.1:{api_port}/api/health", "the API")
    if "prometheus" in pids:
        wait_http(f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready", "Prometheus")
    print(
        f"Relay is up: UI http://127.0.0.1:{PREFECT_PORT}, API http://127.0.0.1:{api_port}, "
        f"Dask tcp://127.0.0.1:{DASK_PORT} ({DASK_WORKERS} workers, model preloaded), "
        f"Prometheus http://127.0.0.1:{PROMETHEUS_PORT}.\n"
        "Try: prefect deployment run 'transcribe/asr-cpu' --param source=$PWD/samples/meeting.ogg"
    )
    return 0


def running() -> dict[str, int]:
    """The stack's processes that are still alive."""
    if not PIDS.exists():
        return {}
    alive = {}
    for name, pid in json.loads(PIDS.read_text()).items():
        try:
            os.killpg(pid, 0)
            alive[name] = pid
        except ProcessLookupError:
            pass
    return alive


def down() -> int:
    """Stop exactly the process groups `up` started: workers first, the server last."""
    alive = running()
    for name, pid in reversed(list(alive.items())):
        os.killpg(pid, signal.SIGTERM)
        print(f"  stopping {name} (pid {pid})")
    deadline = time.monotonic() + 30
    while running() and time.monotonic() < deadline:
        time.sleep(0.5)
    for name, pid in running().items():
        os.killpg(pid, signal.SIGKILL)
        print(f"  killed {name} (pid {pid})")
    PIDS.unlink(missing_ok=True)
    print("Relay's local stack is stopped." if alive else "Relay's local stack was not running.")
    return 0
