"""Relay's gauges, computed at each scrape: a prometheus_client collector over the store
(``store.gauges``), the key pools' limits and Prefect's late runs.

Prefect is asked off the scrape's thread with a deadline (``metrics.prefect_timeout_seconds``):
when it is slow or down, the families it feeds are left out of that scrape and the rest is
served. Keys are labelled by their configured name, never their secret.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import ExitStack
from contextvars import copy_context
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from blocks.keys import ApiKeyPool
from bot_config import get_bot_config
from relay_pools import Workload, load_pools, pools_serving
from store.gauges import StoreGauges, read_gauges
from store.models import BotRequestStatus, JobStatus, VideoStatus, as_utc
from tasks.metrics import OTHER, pool_label

log = logging.getLogger("relay.metrics")

# (kind, pool, host, last_seen_at): one live worker's heartbeat, as store/workers.py keeps it.
WorkerRow = tuple[str, str, str, datetime]
T = TypeVar("T")
BLOCKS_CACHE_SECONDS = 60.0
LOG_EVERY_SECONDS = 60.0
STATES = {
    "transcription": tuple(JobStatus),
    "bot": tuple(BotRequestStatus),
    "video": tuple(VideoStatus),
}


@dataclass(frozen=True)
class QuotaKey:
    """A key as the gauges show it: its provider, name and daily quota (None: no cap)."""

    provider: str
    name: str
    per_day: int | None


@dataclass(frozen=True)
class PrefectView:
    """What Prefect said for one scrape; None where it could not say in time."""

    late_runs: dict[str, int] | None
    keys: list[QuotaKey] | None


class PrefectReader:
    """Late runs per pool (one filtered count per scrape; one per pool only when some are
    late), waited for up to ``timeout``; and the key pools' limits (blocks), reloaded in the
    background once a minute, waited for only until the first load. One request of each
    kind at a time: a Prefect that hangs is never asked twice."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="relay-metrics-prefect")
        self._late: Future[dict[str, int]] | None = None
        self._loading: Future[list[QuotaKey]] | None = None
        self._keys: list[QuotaKey] | None = None
        self._keys_at = float("-inf")  # monotonic: when the keys were last asked for
        self._client: Any = None
        self._stack = ExitStack()
        self._closed = False
        # Scrapes run in the API's thread pool, two at once when two Prometheus servers ask:
        # one at a time decides what to ask Prefect, so a hanging Prefect is asked once.
        self._lock = threading.Lock()

    def read(self, pools: tuple[str, ...], key_pools: tuple[str, ...]) -> PrefectView:
        """Prefect's answers within the timeout; ``late_runs`` None when it did not answer."""
        if self._closed:
            return PrefectView(None, self._keys)
        deadline = time.monotonic() + self.timeout
        with self._lock:
            late = self._late
            if late is None or late.done():
                late = self._late = self._submit(self._late_runs, pools)
            else:
                _log_once("prefect-busy", "metrics: Prefect has not answered an earlier scrape")
            if time.monotonic() - self._keys_at > BLOCKS_CACHE_SECONDS and (
                self._loading is None or self._loading.done()
            ):
                self._keys_at = time.monotonic()
                self._loading = self._submit(self._quota_keys, key_pools)
        counts = _result(late, deadline, "late runs")
        if self._keys is None and self._loading is not None:
            _result(self._loading, deadline, "key pools")
        return PrefectView(counts, self._keys)

    def close(self, wait: bool = False) -> None:
        """Stop the threads and close the client (the app's shutdown); ``wait`` for a
        request in flight to end."""
        self._closed = True
        self._executor.submit(self._stack.close)
        self._executor.shutdown(wait=wait)

    def _submit(self, read: Callable[[tuple[str, ...]], T], names: tuple[str, ...]) -> Future[T]:
        # The Prefect settings live in context variables: the thread gets the caller's.
        return self._executor.submit(copy_context().run, read, names)

    def _late_runs(self, pools: tuple[str, ...]) -> dict[str, int]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateName,
            WorkPoolFilter,
            WorkPoolFilterName,
        )

        if self._client is None:
            self._client = self._stack.enter_context(get_client(sync_client=True))
        late = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Late"])))
        counts = dict.fromkeys(pools, 0)
        total = self._client.count_flow_runs(flow_run_filter=late)
        if total:  # rare: only then one count per pool
            for pool in pools:
                in_pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
                counts[pool] = self._client.count_flow_runs(
                    flow_run_filter=late, work_pool_filter=in_pool
                )
            if (rest := total - sum(counts.values())) > 0:
                counts[OTHER] = rest
        return counts

    def _quota_keys(self, key_pools: tuple[str, ...]) -> list[QuotaKey]:
        keys = []
        for name in key_pools:
            try:
                # ``_sync`` is Prefect's ``async_dispatch`` switch (as tasks.quota loads it).
                block = ApiKeyPool.load(name, _sync=True)  # type: ignore[call-arg]
            except ValueError:  # not saved: the bootstrap skips a pool with no key set
                log.debug("metrics: no key pool block %r", name)
                continue
            except Exception as err:
                _log_once(f"block-{name}", f"metrics: key pool {name!r} not read: {err!r}")
                continue
            if isinstance(block, ApiKeyPool):
                keys += [QuotaKey(block.provider, k.name, k.requests_per_day) for k in block.keys]
        self._keys = keys
        return keys


def _result(future: Future[T], deadline: float, what: str) -> T | None:
    """The future's result by ``deadline``; None (logged) when it failed or is late."""
    try:
        return future.result(timeout=max(deadline - time.monotonic(), 0.0))
    except FutureTimeout:
        _log_once(f"{what}-slow", f"metrics: Prefect did not answer in time ({what} left out)")
    except Exception as err:
        _log_once(f"{what}-failed", f"metrics: {what} not read from Prefect: {err!r}")
    return None


class RelayGauges(Collector):
    """The gauges of docs/ops-metrics.md, fresh at every ``collect()``."""

    def __init__(
        self,
        prefect_timeout: float,
        workers: Callable[[], Iterable[WorkerRow]] | None = None,
    ) -> None:
        self.prefect = PrefectReader(prefect_timeout)
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        """Every family, read now."""
        pools = tuple(load_pools())
        key_pools = tuple(sorted({c.key_pool for c in get_bot_config().providers.values()}))
        view = self.prefect.read(pools, key_pools)
        keys = view.keys or []
        now = datetime.now(UTC)
        # A store that cannot be read leaves its families out (logged), as a silent Prefect
        # does: the scrape still carries the request counters that show the outage.
        try:
            store = read_gauges([(k.provider, k.name) for k in keys if k.per_day], now)
            rows = list(self.workers()) if self.workers is not None else None
        except Exception as err:
            _log_once("store-failed", f"metrics: the store's gauges not read: {err!r}")
        else:
            yield _work_items(store)
            yield from _queues(store, now)
            yield from _keys(store, keys, now)
            yield _batch(store)
            if rows is not None:
                yield worker_ages(rows, now)
        if view.late_runs is not None:
            late = GaugeMetricFamily(
                "relay_prefect_late_runs", "Prefect flow runs in a Late state.", labels=["pool"]
            )
            for pool, count in view.late_runs.items():
                late.add_metric([pool], count)
            yield late


def worker_ages(rows: Iterable[WorkerRow], now: datetime) -> GaugeMetricFamily:
    """``relay_worker_last_seen_seconds`` from live workers' heartbeats. Several processes
    of one kind and pool on a host are one series: the stalest, so a silent one shows."""
    ages: dict[tuple[str, str, str], float] = {}
    for kind, pool, host, last_seen_at in rows:
        seen = as_utc(last_seen_at)
        labels = (kind, pool_label(pool), host)
        ages[labels] = max(ages.get(labels, 0.0), (now - seen).total_seconds(), 0.0)
    family = GaugeMetricFamily(
        "relay_worker_last_seen_seconds",
        "Seconds since a worker's last heartbeat.",
        labels=["kind", "pool", "host"],
    )
    for labels, age in sorted(ages.items()):
        family.add_metric(list(labels), age)
    return family


def _work_items(store: StoreGauges) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "relay_work_items", "Rows of each workload by state.", labels=["workload", "state"]
    )
    for workload, states in STATES.items():
        for state in states:
            family.add_metric([workload, state], store.work_items.get((workload, state), 0))
    return family


def _queues(store: StoreGauges, now: datetime) -> Iterator[GaugeMetricFamily]:
    depth = GaugeMetricFamily("relay_queue_depth", "Units queued per pool.", labels=["pool"])
    oldest = GaugeMetricFamily(
        "relay_queue_oldest_age_seconds",
        "Age of a pool's oldest queued unit (0: none queued).",
        labels=["pool"],
    )
    audio = GaugeMetricFamily(
        "relay_queued_audio_seconds",
        "Audio seconds still to transcribe in a pool's queued and running jobs.",
        labels=["pool"],
    )
    queues: dict[str, tuple[int, datetime | None, float]] = {}
    for stored, queue in store.queues.items():
        pool = pool_label(stored)
        queued, since, seconds = queues.get(pool, (0, None, 0.0))
        if queue.oldest_queued_at and (since is None or queue.oldest_queued_at < since):
            since = queue.oldest_queued_at
        queues[pool] = (queued + queue.queued, since, seconds + queue.audio_seconds)
    asr = pools_serving(Workload.TRANSCRIPTION)
    for pool in (*asr, *pools_serving(Workload.BOT)):
        queued, since, seconds = queues.pop(pool, (0, None, 0.0))
        depth.add_metric([pool], queued)
        oldest.add_metric([pool], max((now - since).total_seconds(), 0.0) if since else 0.0)
        if pool in asr:
            audio.add_metric([pool], seconds)
    for pool in pools_serving(Workload.BATCH):  # the catalogue's waiting videos
        depth.add_metric([pool], store.work_items.get(("video", VideoStatus.PENDING), 0))
    for pool, (queued, _, _) in sorted(queues.items()):  # unassigned or other
        depth.add_metric([pool], queued)
    yield from (depth, oldest, audio)


def _keys(store: StoreGauges, keys: list[QuotaKey], now: datetime) -> Iterator[GaugeMetricFamily]:
    resting = GaugeMetricFamily(
        "relay_api_key_resting",
        "1 while a key rests after a 429, 401 or 5xx.",
        labels=["provider", "key"],
    )
    quota = GaugeMetricFamily(
        "relay_api_key_daily_quota", "A key's calls per UTC day.", labels=["provider", "key"]
    )
    left = GaugeMetricFamily(
        "relay_api_key_daily_quota_left",
        "A key's calls left today.",
        labels=["provider", "key"],
    )
    known = {(k.provider, k.name) for k in keys} | set(store.key_rests)
    for provider, name in sorted(known):
        until = store.key_rests.get((provider, name))
        resting.add_metric([provider, name], 1 if until and until > now else 0)
    for key in keys:
        if key.per_day:
            used = store.key_used_today.get((key.provider, key.name), 0)
            quota.add_metric([key.provider, key.name], key.per_day)
            left.add_metric([key.provider, key.name], max(key.per_day - used, 0))
    yield from (resting, quota, left)


def _batch(store: StoreGauges) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "relay_batch_videos", "Videos of the newest batch by state.", labels=["state"]
    )
    counts = store.latest_batch
    pending = counts.get(VideoStatus.PENDING, 0) + counts.get(VideoStatus.CLAIMED, 0)
    family.add_metric(["done"], counts.get(VideoStatus.DONE, 0))
    family.add_metric(["failed"], counts.get(VideoStatus.FAILED, 0))
    family.add_metric(["pending"], pending)
    return family


_logged: dict[str, float] = {}


def _log_once(reason: str, message: str) -> None:
    """A warning at most once a minute per reason: Prometheus scrapes every few seconds."""
    now = time.monotonic()
    if now - _logged.get(reason, float("-inf")) >= LOG_EVERY_SECONDS:
        _logged[reason] = now
        log.warning(message)
