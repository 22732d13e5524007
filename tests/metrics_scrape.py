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
from tasks.metrics import METHODS, PROVIDERS

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

POOLS = {*load_pools(), "unassigned", "other"}
# Every label of Relay's families and the HTTP RED ones, with the values it may take.
ALLOWED: dict[str, set[str] | re.Pattern[str]] = {
    "pool": POOLS,
    "kind": {*KINDS, "other"},
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


def label_problems(samples: Samples, handlers: set[str], keys: set[str]) -> list[str]:
    """Label values of Relay's and the HTTP families outside their closed sets: route
    templates for ``handler``, the configured key names for ``key``."""
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
