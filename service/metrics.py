"""Prometheus metrics, served on METRICS_PORT only (never on the public port).

One process: the app serves `/metrics` on METRICS_PORT itself. With `serve --workers N`, every worker
writes to prometheus-client's multiprocess directory (PROMETHEUS_MULTIPROC_DIR, set by the master
before the workers start) and the master alone serves the sum on METRICS_PORT: one consistent view
of the whole server, one scrape target.
"""

from __future__ import annotations

import os
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pymongo import monitoring

# Set by the `serve --workers` master for its workers: values go to files the master sums.
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
HTTP_DURATION = Histogram(
    "http_request_duration_seconds", "Time to answer an HTTP request.", ["method", "route"], buckets=_LATENCY
)
HTTP_IN_FLIGHT = Gauge("http_requests_in_flight", "HTTP requests being handled.", multiprocess_mode="livesum")
DB_COMMAND_DURATION = Histogram(
    "db_command_duration_seconds", "MongoDB command round trips, by command.", ["command"], buckets=_LATENCY
)
DB_COMMAND_FAILURES = Counter("db_command_failures_total", "MongoDB commands that failed, by command.", ["command"])
DB_UNAVAILABLE = Counter("db_unavailable_total", "Requests answered 503 because the database was unavailable.")
HASH_QUEUE = Gauge(
    "password_hash_queue_depth", "Password hashes admitted and not finished.", multiprocess_mode="livesum"
)
HASH_WAIT = Histogram("password_hash_wait_seconds", "Time a password hash waited for a thread.", buckets=_LATENCY)
HASH_TIME = Histogram("password_hash_seconds", "Time one password hash took.", buckets=_LATENCY)
HASH_SHED = Counter("password_hash_shed_total", "Requests refused (503) because hashing was saturated.")
SIGN_INS = Counter("signins_total", "Password checks at sign-in, by outcome.", ["outcome"])
TOKENS_ISSUED = Counter("tokens_issued_total", "Access tokens issued, by grant type.", ["grant_type"])
REVOCATIONS = Counter("token_revocations_total", "Tokens revoked through the revocation endpoint.")
REUSE_DETECTED = Counter("token_reuse_detected_total", "Replayed refresh tokens or codes (family revoked).", ["kind"])
AUDIT_DROPPED = Counter("audit_events_dropped_total", "Audit events that could not be stored.")
CACHE_HITS = Counter("principal_cache_hits_total", "Bearer tokens answered from the principal cache.")
CACHE_MISSES = Counter("principal_cache_misses_total", "Bearer tokens looked up in the database.")
CACHE_EVICTIONS = Counter("principal_cache_evictions_total", "Principal cache entries evicted by a change.")
MAIL_SENT = Counter("mail_sent_total", "Mail messages handed to the SMTP server (or, in development, to a file).")
MAIL_FAILED = Counter("mail_failed_total", "Mail messages given up on (out of attempts, or refused for good).")
MAIL_DEFERRED = Counter("mail_deferred_total", "Mail delivery attempts that failed and will be retried.")
BACKCHANNEL_LOGOUTS = Counter(
    "backchannel_logout_total",
    "Back-channel logout deliveries, by outcome: delivered, deferred (an attempt failed) or failed (given up).",
    ["outcome"],
)
CHANGE_STREAM_LAG = Histogram(
    "change_stream_lag_seconds", "From a write to its change event reaching this process.", buckets=_LATENCY
)


def observe_audit_event(event: str, fields: dict[str, Any]) -> None:
    """Security counters come from the audit trail, so the two always agree."""
    if event.startswith("signin."):
        SIGN_INS.labels(outcome=event.removeprefix("signin.")).inc()
    elif event == "token.issued":
        TOKENS_ISSUED.labels(grant_type=fields.get("grant_type", "unknown")).inc()
    elif event == "token.revoked":
        REVOCATIONS.inc()
    elif event.endswith("_reuse_detected"):
        REUSE_DETECTED.labels(kind=event.removeprefix("token.").removesuffix("_reuse_detected")).inc()


class CommandTimer(monitoring.CommandListener):
    """The driver's command monitoring, as a histogram by command name."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        DB_COMMAND_DURATION.labels(command=event.command_name).observe(event.duration_micros / 1e6)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        DB_COMMAND_DURATION.labels(command=event.command_name).observe(event.duration_micros / 1e6)
        DB_COMMAND_FAILURES.labels(command=event.command_name).inc()


COMMAND_TIMER = CommandTimer()


def route_of(request: web.Request) -> str:
    """The route template (`/api/v1/teams/{team_id}`), never the raw path: bounded label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class _InFlight:
    """Requests being handled. One process: a plain counter the gauge reads when scraped (no lock per
    request). Under --workers (multiprocess mode, where a gauge cannot read a function): inc/dec."""

    def __init__(self) -> None:
        self.count = 0
        self.shared = MULTIPROCESS
        if not self.shared:
            HTTP_IN_FLIGHT.set_function(lambda: self.count)

    def enter(self) -> None:
        self.count += 1
        if self.shared:
            HTTP_IN_FLIGHT.inc()

    def leave(self) -> None:
        self.count -= 1
        if self.shared:
            HTTP_IN_FLIGHT.dec()


_in_flight = _InFlight()
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The counter and histogram children of one label set, looked up once (labels() is not free)."""
    key = (method, route, status)
    found = _children.get(key)
    if found is None:
        found = _children[key] = (
            HTTP_REQUESTS.labels(method=method, route=route, status=str(status)),
            HTTP_DURATION.labels(method=method, route=route),
        )
    return found


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    _in_flight.enter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        _in_flight.leave()
        requests, duration = _series(request.method, route_of(request), status)
        requests.inc()
        duration.observe(time.perf_counter() - started)


def exposition(registry: CollectorRegistry = REGISTRY) -> web.Response:
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def serve_metrics(request: web.Request) -> web.Response:
    return exposition()
