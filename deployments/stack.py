"""``make stack`` / ``make stack-down``: the whole system on this machine, without Docker.

``python -m cli stack up`` starts, in the background and in this order:

1. ``prefect server start`` on PostgreSQL (database ``relay_prefect``);
2. a Dask scheduler and workers that preload the model (``deployments.dask_preload``);
3. ``make bootstrap`` (pools, queues, limits, blocks) and ``prefect deploy --all``;
4. a process worker per pool of ``work-pools/pools.yaml`` (GPU pools only where
   ``nvidia-smi`` works), for deployment runs, and a task worker per pool that serves a
   background task (``python -m cli worker --pool P``): the transcription pools' take the
   API's submissions, the bot pools' answer bot requests;
5. the API (``python -m cli api``) against that server.

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

from flows.runtime import DASK_CONFIG_FILE, SCHEDULER_SATURATION
from relay_pools import Pool, Workload, load_pools
from relay_settings import DEFAULT_STATE_DIR, PROJECT_ROOT

STACK_DIR = DEFAULT_STATE_DIR / "stack"
PIDS = STACK_DIR / "pids.json"
PG_ADMIN = os.environ.get("RELAY_STACK_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PREFECT_PORT = int(os.environ.get("RELAY_STACK_PREFECT_PORT", "4200"))
DASK_PORT = int(os.environ.get("RELAY_STACK_DASK_PORT", "8786"))
DASK_WORKERS = int(os.environ.get("RELAY_STACK_DASK_WORKERS", "2"))
# HTTP ports of the stack's processes, each its own (docs/ops-metrics.md): the Dask scheduler
# and workers serve /metrics and /health; the Prefect process workers /health
# (--with-healthcheck); the task workers /metrics. The n-th process of a kind gets base + n.
DASK_HTTP_PORT = int(os.environ.get("RELAY_STACK_DASK_HTTP_PORT", "8787"))
DASK_WORKER_HTTP_PORT = int(os.environ.get("RELAY_STACK_DASK_WORKER_HTTP_PORT", "8790"))
PROCESS_WORKER_HEALTH_PORT = int(os.environ.get("RELAY_STACK_WORKER_HEALTH_PORT", "8180"))
TASK_WORKER_METRICS_PORT = int(os.environ.get("RELAY_STACK_TASK_METRICS_PORT", "9110"))
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


def task_worker_command(pool: str, limit: int, metrics_port: int = 0) -> list[str]:
    """The command of a pool's task worker (its /metrics on ``metrics_port``; 0: none)."""
    return [sys.executable, "-m", "cli", "worker", "--pool", pool, "--limit", str(limit),
            "--metrics-port", str(metrics_port)]  # fmt: skip


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
    """The stack's Dask scheduler on 127.0.0.1:``port``, its /metrics on ``http_port``."""
    dask = str(BIN / "dask")
    return [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
            "--dashboard-address", f"127.0.0.1:{http_port}"]  # fmt: skip


def dask_workers_command(port: int, workers: int, http_port: int = 0) -> list[str]:
    """The stack's Dask workers: single-threaded processes that preload the model, serving
    /metrics on ``http_port`` (one worker per command then; 0: a free port each)."""
    dask, address = str(BIN / "dask"), f"tcp://127.0.0.1:{port}"
    return [dask, "worker", address, "--nworkers", str(workers), "--nthreads", "1",
            "--no-dashboard", "--dashboard-address", f"127.0.0.1:{http_port}",
            "--preload", "deployments.dask_preload"]  # fmt: skip


def scrape_targets() -> dict[str, list[str]]:
    """What Prometheus scrapes on the stack, by job (docs/ops-metrics.md)."""
    task_pools = [pool for pool in pools_here() if pool.task is not None]
    return {
        "relay-api": [f"127.0.0.1:{os.environ.get('RELAY_API_PORT', '8000')}"],
        "relay-task-workers": [
            f"127.0.0.1:{TASK_WORKER_METRICS_PORT + i}" for i in range(len(task_pools))
        ],
        "dask-scheduler": [f"127.0.0.1:{DASK_HTTP_PORT}"],
        "dask-workers": [f"127.0.0.1:{DASK_WORKER_HTTP_PORT + i}" for i in range(DASK_WORKERS)],
    }


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
    for index in range(DASK_WORKERS):  # one process each: its /metrics on a port of its own
        command = dask_workers_command(DASK_PORT, 1, DASK_WORKER_HTTP_PORT + index)
        start(f"dask-worker-{index}", command, env, pids)
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
    task_pools = [pool for pool in pools_here() if pool.task is not None]
    for index, pool in enumerate(task_pools):  # the order scrape_targets() lists them in
        # bot-media answers wait on slow providers: 8 at once per host is plenty here.
        limit = TASK_LIMITS.get(pool.name, pool.task.limit if pool.task else 1)
        command = task_worker_command(pool.name, limit, TASK_WORKER_METRICS_PORT + index)
        start(f"tasks-{pool.name}", command, env, pids)
    start("api", [sys.executable, "-m", "cli", "api"], env, pids)
    wait_dask_workers(DASK_WORKERS)
    for name in pids:  # a submission made before its task worker listens waits for it
        if name.startswith("tasks-"):
            wait_log(name, "Subscribing to runs of task(s)")
    port = os.environ.get("RELAY_API_PORT", "8000")
    wait_http(f"http://127.0.0.1:{port}/api/health", "the API")
    print(
        f"Relay is up: UI http://127.0.0.1:{PREFECT_PORT}, API http://127.0.0.1:{port}, "
        f"Dask tcp://127.0.0.1:{DASK_PORT} ({DASK_WORKERS} workers, model preloaded).\n"
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
