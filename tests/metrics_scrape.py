"""Reading a Prometheus exposition in tests: samples by name and labels, and the checks every
scrape must pass (closed label sets, nothing private)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from bot_config import KINDS
from relay_pools import load_pools
from store.models import BotRequestStatus, JobStatus, VideoStatus
from store.workers import WorkerKind
from tasks.metrics import METHODS, PROVIDERS

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

POOLS = {*load_pools(), "unassigned", "other"}
# Every label of Relay's families and the HTTP RED ones, with the values it may take.
ALLOWED: dict[str, set[str] | re.Pattern[str]] = {
    "pool": POOLS,
    "kind": {*KINDS, "other", *WorkerKind},  # a bot request's, or a worker's
    # relay_worker_last_seen_seconds: the heartbeat's host name (a machine, never a user's)
    "host": re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$"),
    "provider": {*PROVIDERS, "none", "unknown", "other"},
    "outcome": {"completed", "failed", "cancelled", "refused"},
    "workload": {"transcription", "bot", "video"},
    "state": {*JobStatus, *BotRequestStatus, *VideoStatus},
    "method": {*METHODS, "other"},
    "status": re.compile(r"^[1-5]xx$"),
    "le": re.compile(r"^([0-9.e+-]+|\+Inf)$"),
}


def parse(text: str) -> Samples:
    """Every sample of an exposition by (name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample with exactly these labels, or None."""
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` that has (at least) these labels."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def route_templates(app: FastAPI) -> set[str]:
    """Every route template of the app (its documented operations and the docs' own)."""
    paths = {getattr(route, "path", None) for route in app.routes}
    return set(app.openapi()["paths"]) | {path for path in paths if path}


# A key's name as an operator writes it in a key pool block (never its secret: leaks()).
KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def label_problems(
    samples: Samples, handlers: set[str], keys: set[str] | re.Pattern[str] = KEY_NAME
) -> list[str]:
    """Label values of Relay's and the HTTP families outside their closed sets: route
    templates for ``handler``, the configured key names (or a key name's form) for ``key``."""
    allowed = {**ALLOWED, "handler": {*handlers, "none"}, "key": keys}
    problems = []
    for name, labels in samples:
        if not name.startswith(("relay_", "http_")):
            continue
        for label, found in labels:
            rule = allowed.get(label)
            ok = rule.match(found) if isinstance(rule, re.Pattern) else rule and found in rule
            if not ok:
                problems.append(f"{name}{{{label}={found!r}}}")
    return problems


def leaks(text: str, private: Iterable[str]) -> list[str]:
    """The private strings (ids, prompts, user ids, secrets) that appear in ``text``."""
    return [word for word in private if word and word in text]


def configured_key_names() -> set[str]:
    """The key names of every key pool block the bot's providers name, as saved in Prefect
    now (other tests of the session may have saved more keys than this module's)."""
    from blocks.keys import ApiKeyPool
    from bot_config import get_bot_config

    names: set[str] = set()
    for pool in {provider.key_pool for provider in get_bot_config().providers.values()}:
        try:
            block = ApiKeyPool.load(pool, _sync=True)  # type: ignore[call-arg]
        except ValueError:  # not saved
            continue
        if isinstance(block, ApiKeyPool):
            names |= {key.name for key in block.keys}
    return names
