"""Relay's Prometheus counters and histograms, defined once, and what emits them.

Each is emitted in the process where the work finishes (the task worker that ran a job,
the API that refused a request), so a counter never goes backwards when rows are deleted;
each long-lived worker serves its own (``serve_worker_metrics``) and Prometheus adds them up.
The gauges computed from the store at scrape time are ``tasks.gauges``'.

A label value is never an id, a prompt, a user id or a secret: every one goes through a
function here that maps it onto a closed set (the registry's pools, the bot's kinds, the
providers, a key's configured name, an outcome), so the series stay few and say nothing
private. docs/ops-metrics.md lists every metric.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
    start_http_server,
)
from prometheus_client.exposition import ThreadingWSGIServer

from bot_config import KINDS
from relay_pools import load_pools

log = logging.getLogger("relay.metrics")

# ``*_created`` series double what every scrape carries, and no Relay rule reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

PROVIDERS = frozenset({"openai", "stability", "minimax"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_KEY_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")  # blocks.keys.ApiKey's names
OTHER = "other"  # any value outside the closed set
UNASSIGNED = "unassigned"  # a job recorded without a pool (started outside the API)
NO_PROVIDER = "none"  # refused before any provider was asked
UNKNOWN_PROVIDER = "unknown"  # failed before its key pool was known


class TranscriptionOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BotOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    REFUSED = "refused"


HTTP_REQUESTS = Counter(
    "http_requests",
    "API requests by route template, method and status class.",
    ("handler", "method", "status"),
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "API request duration by route template and method.",
    ("handler", "method"),
)
TRANSCRIPTIONS = Counter(
    "relay_transcriptions", "Transcription jobs ended, by pool and outcome.", ("pool", "outcome")
)
TRANSCRIBED_AUDIO = Counter(
    "relay_transcription_audio_seconds", "Audio seconds of completed transcriptions.", ("pool",)
)
REALTIME_FACTOR = Histogram(
    "relay_transcription_realtime_factor",
    "Audio seconds per wall-clock second of each completed transcription.",
    ("pool",),
    buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200),
)
BOT_REQUESTS = Counter(
    "relay_bot_requests",
    "Bot requests ended, by kind, provider and outcome.",
    ("kind", "provider", "outcome"),
)
BOT_ADDED_LATENCY = Histogram(
    "relay_bot_added_latency_seconds",
    "What Relay adds to an answered request: intake to Discord's acceptance, less the "
    "provider's time.",
    ("kind",),
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROVIDER_CALLS = Counter(
    "relay_provider_calls", "Calls made to a provider, by key name.", ("provider", "key")
)
PROVIDER_THROTTLED = Counter(
    "relay_provider_throttled", "429 answers from a provider, by key name.", ("provider", "key")
)


# -- label values --------------------------------------------------------------------------


def pool_label(pool: str | None) -> str:
    """A pool of work-pools/pools.yaml, ``unassigned``, or ``other``."""
    if not pool:
        return UNASSIGNED
    return pool if pool in load_pools() else OTHER


def kind_label(kind: str) -> str:
    return kind if kind in KINDS else OTHER


def provider_label(provider: str | None) -> str:
    if provider is None:
        return UNKNOWN_PROVIDER
    return provider if provider in PROVIDERS or provider == NO_PROVIDER else OTHER


def key_label(key: str) -> str:
    """A key's configured name (never its secret: the secret is no valid name)."""
    return key if _KEY_NAME.match(key) else OTHER


def method_label(method: str) -> str:
    """Any token is a valid HTTP method: only the standard ones become series."""
    return method if method in METHODS else OTHER


# -- emitting -----------------------------------------------------------------------------


def transcription_ended(
    pool: str | None,
    outcome: TranscriptionOutcome,
    *,
    audio_seconds: float | None = None,
    working_seconds: float | None = None,
) -> None:
    """Count a job's end; a completed one adds its audio and its real-time factor."""
    label = pool_label(pool)
    TRANSCRIPTIONS.labels(label, outcome).inc()
    if outcome is TranscriptionOutcome.COMPLETED and audio_seconds:
        TRANSCRIBED_AUDIO.labels(label).inc(audio_seconds)
        if working_seconds and working_seconds > 0:
            REALTIME_FACTOR.labels(label).observe(audio_seconds / working_seconds)


def bot_request_ended(
    kind: str, provider: str | None, outcome: BotOutcome, *, added_seconds: float | None = None
) -> None:
    """Count a request's end; an answered one adds Relay's share of its latency."""
    BOT_REQUESTS.labels(kind_label(kind), provider_label(provider), outcome).inc()
    if added_seconds is not None:
        BOT_ADDED_LATENCY.labels(kind_label(kind)).observe(max(added_seconds, 0.0))


def provider_called(provider: str, key: str) -> None:
    """Count one call made with a key, whatever its answer."""
    PROVIDER_CALLS.labels(provider_label(provider), key_label(key)).inc()


def provider_throttled(provider: str, key: str) -> None:
    """Count a 429 (rate limited) answer to a call made with a key."""
    PROVIDER_THROTTLED.labels(provider_label(provider), key_label(key)).inc()


def http_request_done(handler: str, method: str, status: str, seconds: float) -> None:
    """One API request (``handler`` is its route template, or ``none``)."""
    method = method_label(method)
    HTTP_REQUESTS.labels(handler, method, status).inc()
    HTTP_DURATION.labels(handler, method).observe(seconds)


# -- a worker's own endpoint ----------------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every 15 s would fill the worker's log."""


def serve_worker_metrics(port: int, host: str, token: str = "") -> WSGIServer | None:
    """Serve this process's metrics on ``host:port`` from a daemon thread (any path; the
    bearer ``token`` required when set). None, logged, when the port is taken: a worker
    without metrics still works, and Prometheus reports the target down."""
    try:
        if not token:
            server, _ = start_http_server(port, addr=host)
            return server
        app = _bearer_only(make_wsgi_app(REGISTRY), token)
        server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_Quiet)
    except OSError as err:
        log.error("metrics not served: %s:%d is unavailable (%s)", host, port, err)
        return None
    threading.Thread(target=server.serve_forever, name="relay-metrics", daemon=True).start()
    return server


_WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _bearer_only(app: _WsgiApp, token: str) -> _WsgiApp:
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("WWW-Authenticate", "Bearer")])
        return [b"missing or wrong bearer token\n"]

    return guarded
