"""Relay's multi-host layout on network-namespace hosts (tests/netns.py), started with the
settings ``infra/docker-compose.yml`` gives its services: its ``x-relay-env`` and the Prefect
server's environment, the compose service names replaced by the hosts' addresses.

| host | runs |
|---|---|
| db | its own PostgreSQL (Debian's server binaries, a fresh data folder), set up by
  ``infra/postgres-init.sql`` as compose's postgres service is |
| redis | ``redis-server``: the Prefect server's messaging |
| prefect | ``prefect server start`` on db, with Redis messaging |
| dask | the Dask scheduler |
| asr-N | a Dask worker (model preloaded) and an ``asr-cpu`` task worker |
| api-N | the API (``RELAY_TRANSCRIBE_VIA=task-worker``) |

Readiness is read from Relay itself: ``/api/health/ready`` and ``/api/workers``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from relay_settings import PROJECT_ROOT
from tests.netns import Host, Network

COMPOSE = PROJECT_ROOT / "infra" / "docker-compose.yml"
PG_INIT = PROJECT_ROOT / "infra" / "postgres-init.sql"
BIN = Path(sys.executable).parent
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"  # Debian's faketime
TOKEN = "hosts-token"
API_PORT = 8000
# What compose asks the operator for (${VAR:?...}); test values here.
REQUIRED = {"RELAY_SECRET_KEY": "hosts-secret-key-0123456789abcdef", "RELAY_API_TOKEN": TOKEN}
# Compose service names, and the host that plays each here.
SERVICE_HOSTS = {"postgres": "db", "redis": "redis", "prefect-server": "prefect",
                 "dask-scheduler": "dask"}  # fmt: skip


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _interpolate(value: str) -> str:
    """Compose's ${VAR:?msg} / ${VAR:-default} / ${VAR} with the test's values."""

    def one(found: re.Match[str]) -> str:
        name, rule = found.group(1), found.group(2) or ""
        if name in REQUIRED:
            return REQUIRED[name]
        return rule[2:] if rule.startswith(":-") else ""

    return re.sub(r"\$\{(\w+)(:[?-][^}]*)?\}", one, value)


def service_env(section: dict[str, Any], addresses: dict[str, str], data: Path) -> dict[str, str]:
    """A compose environment with its service names as the hosts' addresses and its /data
    volume as the network's shared folder."""
    env = {}
    for key, raw in section.items():
        value = _interpolate(str(raw))
        for service, host in SERVICE_HOSTS.items():
            if host in addresses:
                value = re.sub(rf"(?<=[/@]){re.escape(service)}(?=:)", addresses[host], value)
                value = value if value != service else addresses[host]
        if value == "/data" or value.startswith("/data/"):
            value = str(data) + value[len("/data") :]
        env[key] = value
    return env


class Layout:
    """Relay's services on a ``Network``'s hosts, one role at a time."""

    def __init__(self, net: Network, extra_env: dict[str, str] | None = None) -> None:
        self.net = net
        self.extra_env = extra_env or {}  # the test's own settings, over compose's
        self.fakes: dict[str, Any] = {}  # the paid services' fakes, outside the hosts
        self.client = httpx.Client(timeout=30)

    @property
    def addresses(self) -> dict[str, str]:
        return {name: host.address for name, host in self.net.hosts.items()}

    def base_env(self) -> dict[str, str]:
        """This machine's environment without the test session's Relay and Prefect settings,
        plus what the image sets (infra/Dockerfile)."""
        kept = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "PREFECT_"))}
        return {
            **kept,
            "PYTHONPATH": str(PROJECT_ROOT),
            "PYTHONUNBUFFERED": "1",
            "DASK_CONFIG": str(PROJECT_ROOT / "deployments" / "dask.yaml"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DASK_LOGGING__DISTRIBUTED": "info",
        }

    def relay_env(self) -> dict[str, str]:
        """What every Relay process gets: compose's x-relay-env on these hosts."""
        section = compose()["x-relay-env"]
        mapped = service_env(section, self.addresses, self.net.data)
        return {**self.base_env(), **mapped, **self.extra_env}

    def service_env(self, name: str) -> dict[str, str]:
        """Compose service ``name``'s environment on these hosts, over the base one."""
        section = compose()["services"][name].get("environment", {})
        mapped = service_env(section, self.addresses, self.net.data)
        return {**self.base_env(), **mapped, **self.extra_env}

    def relay_database_url(self) -> str:
        """The job store's URL, as the Relay hosts have it."""
        return self.service_env("api")["RELAY_DATABASE_URL"]

    def wait(self, check: Callable[[], object], limit: float, why: str) -> None:
        """Poll ``check`` until true; past ``limit`` fail with every host's last log lines."""
        _wait(check, limit, why, *self.net.hosts.values())

    # --- the infrastructure hosts -------------------------------------------------------

    def start_db(self) -> Host:
        """PostgreSQL on its own host: a fresh cluster, password logins from the network,
        the two databases compose's init script makes."""
        host = self.net.add("db")
        data = host.folder / "pgdata"
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run(["install", "-d", "-o", "postgres", "-m", "700", str(data)], check=True)
        initdb = [
            str(binaries / "initdb"),
            "-D",
            str(data),
            *["-U", "postgres", "-A", "trust", "--no-sync"],
        ]
        subprocess.run([*as_postgres, *initdb], check=True, capture_output=True)
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all 10.231.{self.net.subnet}.0/24 scram-sha-256\n")
        settings = [f"listen_addresses={host.address}", f"unix_socket_directories={data}",
                    "fsync=off", "max_connections=300"]  # fmt: skip
        command = [str(binaries / "postgres"), "-D", str(data)]
        command += [part for value in settings for part in ("-c", value)]
        host.start("postgres", command, self.base_env(), user="postgres")
        self.wait_db()
        init = ["psql", "-h", str(data), "-v", "ON_ERROR_STOP=1", "-q", "-f", str(PG_INIT)]
        subprocess.run([*as_postgres, *init], check=True, capture_output=True)
        return host

    def stop_db(self) -> None:
        """Stop PostgreSQL as an operator restarting it would (``pg_ctl stop -m fast``)."""
        host = self.net.hosts["db"]
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        stop = [str(binaries / "pg_ctl"), "stop", "-m", "fast", "-D", str(host.folder / "pgdata")]
        subprocess.run(["runuser", "-u", "postgres", "--", *stop], check=True, capture_output=True)
        host.processes.pop("postgres").wait(timeout=30)

    def wait_db(self, limit: float = 60.0) -> None:
        host = self.net.hosts["db"]
        _wait(lambda: _pg_ready(host), limit, "PostgreSQL never accepted connections", host)

    def start_redis(self) -> Host:
        host = self.net.add("redis")
        command = ["redis-server", "--bind", host.address]
        command += ["--port", "6379", "--appendonly", "no", "--protected-mode", "no"]
        command += ["--save", ""]  # keeps nothing on disk
        host.start("redis", command, self.base_env())
        _wait(lambda: "Ready to accept" in host.log("redis"), 30, "Redis never started", host)
        return host

    def start_prefect(self) -> Host:
        """``prefect server start`` with compose's prefect-server environment."""
        host = self.net.add("prefect")
        env = self.service_env("prefect-server")
        env["PREFECT_UI_ENABLED"] = "false"  # nothing here opens it
        command = [str(BIN / "prefect"), "server", "start", "--host", host.address]
        host.start("server", [*command, "--port", "4200"], env)
        self.wait_prefect(host)
        return host

    def wait_prefect(self, host: Host, limit: float = 180.0) -> None:
        url = f"http://{host.address}:4200/api/health"
        _wait(lambda: _answers(self.client, url), limit, "the Prefect server never answered", host)

    def bootstrap(self) -> None:
        """``python -m cli bootstrap`` as compose's bootstrap service runs it (pools, limits,
        blocks), from the prefect host."""
        self.net.hosts["prefect"].run([sys.executable, "-m", "cli", "bootstrap"], self.relay_env())

    def start_dask(self) -> Host:
        host = self.net.add("dask")
        env = self.service_env("dask-scheduler")
        command = [str(BIN / "dask"), "scheduler", "--host", host.address, "--port", "8786"]
        command += ["--no-dashboard", "--dashboard-address", f"{host.address}:8787"]
        host.start("scheduler", command, env)
        self.wait_dask()
        return host

    def wait_dask(self, limit: float = 60.0) -> None:
        host = self.net.hosts["dask"]
        url = f"http://{host.address}:8787/health"
        _wait(lambda: _answers(self.client, url), limit, "the Dask scheduler never answered", host)

    # --- Relay's hosts --------------------------------------------------------------------

    def start_asr(self, name: str) -> Host:
        """A Dask worker preloading the model and an asr-cpu task worker, as compose's
        dask-worker and asr-tasks-cpu services run them."""
        host = self.net.hosts.get(name) or self.net.add(name)
        self.start_dask_worker(host)
        self.start_asr_tasks(host)
        return host

    def start_dask_worker(self, host: Host) -> None:
        env = self.service_env("dask-worker")
        worker = [str(BIN / "dask"), "worker", env["RELAY_DASK_ADDRESS"], "--host", host.address]
        worker += [
            "--nworkers",
            "1",
            "--nthreads",
            "1",
            "--no-dashboard",
            "--preload",
            "deployments.dask_preload",
        ]
        # Restarted when they exit, as compose's restart policy does: a Dask worker ends
        # itself once its scheduler is gone, and only a new one finds the next scheduler.
        host.start("dask-worker", worker, env, restart=True)

    def start_asr_tasks(self, host: Host, clock_ahead: int = 0) -> None:
        """The asr-cpu task worker; ``clock_ahead``: its clock that many seconds fast
        (Debian's libfaketime), as a host whose clock drifted."""
        env = self.service_env("asr-tasks-cpu")
        if clock_ahead:
            env["LD_PRELOAD"] = FAKETIME
            env["FAKETIME"] = f"+{clock_ahead}"
        tasks = [sys.executable, "-m", "cli", "worker", "--pool", "asr-cpu", "--limit", "8"]
        host.start("asr-tasks", tasks, env, restart=True)

    def start_bot(self, name: str) -> Host:
        """A bot-chat task worker, as compose's bot-tasks-chat service runs it."""
        host = self.net.hosts.get(name) or self.net.add(name)
        tasks = [sys.executable, "-m", "cli", "worker", "--pool", "bot-chat", "--limit", "32"]
        host.start("bot-tasks", tasks, self.service_env("bot-tasks-chat"), restart=True)
        return host

    def wait_task_workers(self, api: str, pool: str, hosts: list[str], limit: float = 180) -> None:
        """Until ``api``'s /api/workers lists a live task worker of ``pool`` on each host."""

        def listed() -> bool:
            live = [w for w in self.census(api) if not w["stale"] and w["pool"] == pool]
            return set(hosts) <= {w["host"] for w in live if w["kind"] == "task-worker"}

        self.wait(listed, limit, f"{api} never listed {pool} task workers on {hosts}")

    def save_key_pool(self, name: str, provider: str, base_url: str, keys: dict[str, int]) -> None:
        """A provider's key pool block and its Prefect limits on the prefect host's server,
        as the bootstrap saves them (each key: its accepted requests a minute)."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from blocks.keys import ApiKeyPool, limits_for
        from deployments.bootstrap import ensure_limit

        listed = [{"name": key[3:], "requests_per_minute": rpm} for key, rpm in keys.items()]
        secrets = {key[3:]: key for key in keys}
        pool = ApiKeyPool(provider=provider, base_url=base_url, timeout_seconds=5,
                          keys=listed, secrets=secrets)  # fmt: skip
        url = f"http://{self.net.hosts['prefect'].address}:4200/api"
        with temporary_settings({PREFECT_API_URL: url}):
            from prefect.client.orchestration import get_client

            pool.save(name, overwrite=True)
            with get_client(sync_client=True) as client:
                for limit in limits_for(pool):
                    ensure_limit(client, limit)

    def start_api(self, name: str) -> Host:
        host = self.net.hosts.get(name) or self.net.add(name)
        env = self.service_env("api")
        env["RELAY_API_HOST"] = host.address
        host.start("api", [sys.executable, "-m", "cli", "api"], env)
        url = self.api_url(name) + "/api/health/live"
        _wait(lambda: _answers(self.client, url), 120, f"the API on {name} never answered", host)
        return host

    def api_url(self, name: str) -> str:
        return f"http://{self.net.hosts[name].address}:{API_PORT}"

    def census(self, api: str) -> list[dict[str, Any]]:
        """``GET /api/workers`` on host ``api``: every worker Relay knows of."""
        response = self.client.get(
            self.api_url(api) + "/api/workers", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        response.raise_for_status()
        workers: list[dict[str, Any]] = response.json()["workers"]
        return workers

    def wait_ready(self, api: str, asr_hosts: list[str], limit: float = 240.0) -> None:
        """Until ``api``'s /api/health/ready is 200 and /api/workers lists, live, a task
        worker (by hostname) and a Dask worker (by address) on each of ``asr_hosts``."""

        def ready() -> bool:
            if not _answers(self.client, self.api_url(api) + "/api/health/ready"):
                return False
            live = [w for w in self.census(api) if not w["stale"]]
            tasks = {
                w["host"] for w in live if w["kind"] == "task-worker" and w["pool"] == "asr-cpu"
            }
            dask = {w["host"] for w in live if w["kind"] == "dask-worker"}
            return all(name in tasks and self.net.hosts[name].address in dask for name in asr_hosts)

        self.wait(ready, limit, f"{api} never saw {asr_hosts} ready")

    def flow_run_state(self, flow_run_id: str) -> str:
        """The state type of a flow run, from the Prefect server's REST API."""
        url = f"http://{self.net.hosts['prefect'].address}:4200/api/flow_runs/{flow_run_id}"
        response = self.client.get(url)
        response.raise_for_status()
        state: str = response.json()["state"]["type"]
        return state

    def close(self) -> None:
        self.client.close()


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _pg_ready(host: Host) -> bool:
    done = subprocess.run(["pg_isready", "-h", host.address, "-q"], check=False)
    return done.returncode == 0


def _wait(check: Callable[[], object], limit: float, why: str, *hosts: Host) -> None:
    """Poll ``check`` until true; past ``limit`` fail with the hosts' logs' last lines."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {h.name}/{name}:\n" + "\n".join(h.log(name).splitlines()[-15:])
                for h in hosts
                for name in list(h.processes)
            )
            raise TimeoutError(f"{why} within {limit:.0f} s\n{tails}")
        time.sleep(0.25)
