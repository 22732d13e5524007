"""Bot benchmark: end-to-end and added latency of chat requests under the heaviest planned
load, and the most requests per second the quota path takes.

Everything is real but the paid services: a ``prefect server start`` on a fresh PostgreSQL
database (as in ``make stack``), the job store on PostgreSQL, ``python -m cli api`` and two
``python -m cli worker --pool bot-chat`` processes; a fake OpenAI answering in a fixed
300 ms and enforcing each key's requests per minute, and a fake Discord. Prints one JSON line
per figure. Run: ``make bench-bot`` or ``.venv/bin/python -m bench.bot``.

- ``chat_load``: 5 accounts x 100 messages a minute for 2 minutes, sent on a fixed schedule
  (open loop). End to end is from the POST to the answer reaching Discord; Relay's added
  latency is that minus the fake's 300 ms. Also: lost requests, keys over their quota.
- ``quota_path``: threads spending slots through ``KeyPool`` with a no-op call, for 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

from deployments.stack import wait_http

ROOT = Path(__file__).resolve().parents[1]
PREFECT_PORT, API_PORT = 4391, 8391
KEYS = {f"sk-bench-{i}": 240 for i in range(4)}  # 960 requests a minute between them
UPSTREAM_SECONDS = 0.3


def emit(**figure: object) -> None:
    print(json.dumps(figure), flush=True)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 / max in milliseconds."""
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50_ms": at(0.5), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": at(1.0)}


class Bench:
    """The processes and fakes of one run; ``stop()`` ends them all."""

    def __init__(self, work: Path) -> None:
        from tests.fake_discord import FakeDiscord
        from tests.fake_providers import FakeOpenAI
        from tests.pg import create_database

        self.work = work
        self.databases = [create_database("relay_bench_prefect"), create_database("relay_bench")]
        (_, prefect_db), (_, store_db) = self.databases
        self.openai = FakeOpenAI(keys=KEYS, latency=UPSTREAM_SECONDS).start()
        self.discord = FakeDiscord().start()
        config = yaml.safe_load((ROOT / "bot.yaml").read_text())
        config["limits"]["chat"] = {
            "cooldown_seconds": 0.3,
            "per_user_daily": 100000,
            "global_daily": 1000000,
        }
        config["providers"]["chat"]["key_pool"] = "bench-openai"
        (work / "bot.yaml").write_text(yaml.safe_dump(config))
        self.env = {
            **os.environ,
            "PREFECT_API_URL": f"http://127.0.0.1:{PREFECT_PORT}/api",
            "PREFECT_HOME": str(work / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db.replace(
                "postgresql://", "postgresql+asyncpg://"
            ),
            "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
            "RELAY_DATABASE_URL": store_db,
            "RELAY_DATA_DIR": str(work / "data"),
            "RELAY_BOT_CONFIG": str(work / "bot.yaml"),
            "RELAY_SECRET_KEY": "bench-secret",
            "RELAY_WEBHOOK_ALLOWED_HOSTS": self.discord.host,
            "RELAY_API_PORT": str(API_PORT),
            "RELAY_API_ACCESS_LOG": "false",
            "PYTHONPATH": str(ROOT),
        }
        os.environ.update(
            {k: v for k, v in self.env.items() if k.startswith(("PREFECT_", "RELAY_"))}
        )
        self.processes: list[subprocess.Popen] = []
        self.names: list[str] = []

    def start(self, chat_workers: int) -> None:
        self._spawn("prefect-server", ["prefect", "server", "start", "--port", str(PREFECT_PORT)])
        wait_http(f"http://127.0.0.1:{PREFECT_PORT}/api/health", "the Prefect server")
        self._save_key_pool()
        for index in range(chat_workers):
            self._spawn(
                f"bot-chat-{index}",
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "worker",
                    "--pool",
                    "bot-chat",
                    "--limit",
                    "64",
                ],
            )
        self._spawn("api", [sys.executable, "-m", "cli", "api"])
        wait_http(f"http://127.0.0.1:{API_PORT}/api/health", "the API")
        logs = [self.work / f"{name}.log" for name in self.names if name.startswith("bot-")]
        deadline = time.monotonic() + 120
        while not all("Subscribing to runs" in log.read_text() for log in logs):
            if time.monotonic() > deadline:
                raise SystemExit("the bot task workers did not subscribe within 120 s")
            time.sleep(0.5)
        time.sleep(2)

    def _spawn(self, name: str, command: list[str]) -> None:
        if command[0] == "prefect":
            command = [str(Path(sys.executable).parent / "prefect"), *command[1:]]
        log = (self.work / f"{name}.log").open("w")
        self.names.append(name)
        self.processes.append(
            subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        )

    def _save_key_pool(self) -> None:
        from prefect.client.orchestration import get_client

        from blocks.keys import ApiKeyPool, limits_for
        from deployments.bootstrap import ensure_limit, register_blocks

        register_blocks()
        names = {key: f"key{index}" for index, key in enumerate(KEYS)}
        pool = ApiKeyPool(
            provider="openai",
            base_url=self.openai.base_url,
            timeout_seconds=10,
            keys=[{"name": names[k], "requests_per_minute": rpm} for k, rpm in KEYS.items()],
            secrets={names[k]: k for k in KEYS},
        )
        pool.save("bench-openai", overwrite=True)
        with get_client(sync_client=True) as client:
            for limit in limits_for(pool):
                ensure_limit(client, limit)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time each process used so far (where the machine's two cores went)."""
        import psutil

        used = {}
        for process, name in zip(self.processes, self.names, strict=True):
            try:
                times = psutil.Process(process.pid).cpu_times()
                used[name] = round(times.user + times.system, 1)
            except psutil.NoSuchProcess:
                pass
        return used

    def stop(self) -> None:
        from tests.pg import drop_database

        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.openai.stop()
        self.discord.stop()
        for name, _ in self.databases:
            drop_database(name)


def chat_load(bench: Bench, accounts: int, per_minute: int, minutes: float) -> None:
    """Send the schedule, then match each answer in Discord to its request."""
    client = httpx.Client(base_url=f"http://127.0.0.1:{API_PORT}", timeout=30)
    webhook = bench.discord.url_for("77", "bench-token")
    interval = 60.0 / per_minute
    total = int(accounts * per_minute * minutes)
    sent: dict[str, float] = {}
    intake: list[float] = []
    refused: list[str] = []
    lock = threading.Lock()

    def send(index: int, at: float) -> None:
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        prompt = f"bench message {index}"
        started = time.monotonic()
        body = {
            "kind": "chat",
            "prompt": prompt,
            "user_id": str(900000 + index % accounts),
            "channel": "chat-bench",
            "webhook_url": webhook,
        }
        response = client.post("/api/bot/requests", json=body)
        with lock:
            intake.append(time.monotonic() - started)
            if response.status_code == 202:
                sent[prompt] = started
            else:
                refused.append(f"{response.status_code} {response.text[:200]}")

    begin = time.monotonic() + 1.0
    schedule = [
        (account + accounts * n, begin + n * interval + account * interval / accounts)
        for n in range(int(per_minute * minutes))
        for account in range(accounts)
    ]
    with ThreadPoolExecutor(64) as pool:
        for index, at in schedule:
            pool.submit(send, index, at)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_answers(bench)) < len(sent):
        time.sleep(0.5)
    answers = _answers(bench)
    end_to_end = [answers[p] - t for p, t in sent.items() if p in answers]
    cpu = bench.cpu_seconds()
    over = {
        k: bench.openai.max_in_window(k) for k in KEYS if bench.openai.max_in_window(k) > KEYS[k]
    }
    emit(
        figure="chat_load",
        accounts=accounts,
        messages_per_minute_each=per_minute,
        minutes=minutes,
        requests=total,
        accepted=len(sent),
        refused_at_intake=len(refused),
        answered=len(end_to_end),
        lost=len(sent) - len(end_to_end),
        end_to_end=percentiles(end_to_end),
        relay_added=percentiles([max(e - UPSTREAM_SECONDS, 0.0) for e in end_to_end]),
        intake=percentiles(intake),
        upstream_429s=sum(bench.openai.rejected(k) for k in KEYS),
        keys_over_quota=over,
        busiest_key_minute={k: bench.openai.max_in_window(k) for k in KEYS},
        key_quota_per_minute=next(iter(KEYS.values())),
        refusal_samples=refused[:3],
        cpu_seconds=cpu,
    )


def _answers(bench: Bench) -> dict[str, float]:
    """prompt -> when its answer reached Discord."""
    found = {}
    for request in list(bench.discord.requests):
        content = request.payload.get("content", "")
        if request.behaviour == "ok" and "Echo: bench message" in content:
            found[content.split("Echo: ", 1)[1].strip()] = request.received_at
    return found


def quota_path(seconds: float, threads: int) -> None:
    """Slots spent per second through ``KeyPool`` (no upstream call) by one process."""
    from tasks.quota import key_pool

    pool = key_pool("bench-openai")
    for key in pool.block.keys:  # a generous quota, so the path itself is what is measured
        key.requests_per_minute = 100000
    from prefect.client.orchestration import get_client

    from blocks.keys import limits_for
    from deployments.bootstrap import ensure_limit

    with get_client(sync_client=True) as client:
        for limit in limits_for(pool.block):
            ensure_limit(client, limit)
    stop = time.monotonic() + seconds
    timings: list[float] = []
    lock = threading.Lock()

    def spend() -> None:
        while time.monotonic() < stop:
            started = time.monotonic()
            pool.call(lambda secret: secret, time.monotonic() + 10)
            with lock:
                timings.append(time.monotonic() - started)

    workers = [threading.Thread(target=spend) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    emit(
        figure="quota_path",
        threads=threads,
        seconds=seconds,
        slots_per_second=round(len(timings) / seconds, 1),
        per_slot=percentiles(timings),
        median_ms=round(1000 * statistics.median(timings), 2) if timings else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bot", description=__doc__)
    parser.add_argument("--accounts", type=int, default=5)
    parser.add_argument("--per-minute", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--chat-workers", type=int, default=2)
    parser.add_argument("--only", choices=["load", "quota"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-bench-bot-") as folder:
        bench = Bench(Path(folder))
        try:
            bench.start(args.chat_workers)
            if args.only in (None, "load"):
                chat_load(bench, args.accounts, args.per_minute, args.minutes)
            if args.only in (None, "quota"):
                quota_path(15.0, 8)
        finally:
            bench.stop()


if __name__ == "__main__":
    main()
