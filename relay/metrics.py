"""Prometheus metrics of the API and the worker. Each process exposes its own registry:
the API its requests, the worker its polls and deliveries, both the watch counts and the
callbacks' DNS lookups and connections (the API checks callbacks and sends pings) -- so a
series is never exported, always 0, by a process that does not make it."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from relay import logs

disable_created_metrics()  # type: ignore[no-untyped-call]  # (no *_created series)
API_REGISTRY = CollectorRegistry(auto_describe=True)
REGISTRY = CollectorRegistry(auto_describe=True)  # the worker's

HTTP_REQUESTS = Counter(
    "relay_http_requests_total",
    "API requests by route, method and status.",
    ["route", "method", "status"],
    registry=API_REGISTRY,
)
HTTP_LATENCY = Histogram(
    "relay_http_request_duration_seconds",
    "API request latency.",
    ["route"],
    # (up to REQUEST_DEADLINE, 5 s: a request past it is a 503)
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=API_REGISTRY,
)
WATCHES = Gauge(
    "relay_watches", "Watches by status (sampled from Redis).", ["status"], registry=REGISTRY
)
UPSTREAM_REQUESTS = Counter(
    "relay_upstream_requests_total",
    "Requests to ScaleReach by endpoint, outcome and HTTP status.",
    ["endpoint", "outcome", "code"],
    registry=REGISTRY,
)
UPSTREAM_RATE_LIMITED = Counter(
    "relay_upstream_rate_limited_total",
    "429 answers from ScaleReach.",
    registry=REGISTRY,
)
UPSTREAM_WAIT = Counter(
    "relay_upstream_wait_seconds_total",
    "Seconds spent waiting for the shared upstream request budget or a Retry-After pause.",
    registry=REGISTRY,
)
UPSTREAM_PAUSED = Gauge(
    "relay_upstream_paused_seconds",
    "Seconds left of a 429 pause of every worker's upstream requests (sampled from Redis).",
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "relay_deliveries_total",
    "Delivery attempts by outcome (ok, retry, failed, disabled).",
    ["outcome"],
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "relay_delivery_duration_seconds",
    "Duration of one delivery attempt.",
    # (past the default RELAY_DELIVERY_TIMEOUT, 15 s, for longer ones)
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60),
    registry=REGISTRY,
)
NOTIFY_LATENCY = Histogram(
    "relay_notify_latency_seconds",
    "From the relay seeing the video final to the receiver's 2xx (first success).",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
    registry=REGISTRY,
)
CALLBACK_CONNECTIONS = Counter(
    "relay_callback_connections_opened_total",
    "TCP (or TLS) connections opened to receivers; kept-alive connections are reused.",
    registry=REGISTRY,
)
CALLBACK_RESENDS = Counter(
    "relay_callback_requests_resent_total",
    "Requests sent once more on a new connection, within their attempt, because the reused"
    " keep-alive connection they went out on closed before any byte of an answer (the"
    " server's idle timeout racing the request; a receiver that reads a request and closes"
    " without answering gets it twice, with one webhook-id).",
    registry=REGISTRY,
)
DNS_LOOKUPS = Counter(
    "relay_dns_lookups_total",
    "Callback host name resolutions by result: resolved, cached, cached_failed (a failure "
    "kept 10 s), failed, timeout, busy.",
    ["result"],
    registry=REGISTRY,
)
for _result in ("resolved", "cached", "cached_failed", "failed", "timeout", "busy"):
    DNS_LOOKUPS.labels(_result)  # (every series from the start: increase() sees the first)
CIRCUIT_OPEN = Counter(
    "relay_circuit_open_total",
    "Delivery attempts recorded as failed with 'circuit open' (their origin's circuit was open).",
    registry=REGISTRY,
)
CIRCUIT_OPENS = Counter(
    "relay_circuit_opens_total",
    "Times a callback origin's circuit opened (closed -> open) in this worker.",
    registry=REGISTRY,
)
CIRCUITS_OPEN = Gauge(
    "relay_circuits_open",
    "Callback origins whose circuit is open or half-open in this worker.",
    registry=REGISTRY,
)
ORIGIN_WAITING = Gauge(
    "relay_origin_waiting",
    "Claimed deliveries queued in this worker: waiting for a lane, or for room at an origin "
    "that has RELAY_ORIGIN_CONCURRENCY attempts in flight.",
    registry=REGISTRY,
)
LANES_STALLED = Gauge(
    "relay_lanes_stalled",
    "Attempts on the wire for over a second that no longer hold a delivery lane (another "
    "lane took their place; their origins get no new attempt until one ends): at most "
    "RELAY_DELIVERY_CONCURRENCY.",
    registry=REGISTRY,
)
DEFERRED = Counter(
    "relay_deliveries_deferred_total",
    "Deliveries made due later (not an attempt) because their origin was full and slow: "
    "claims handed back to the schedule, and a fan-out's events paced as they were made.",
    registry=REGISTRY,
)
WATCHES_PURGED = Counter(
    "relay_watches_purged_total",
    "Watches deleted by the retention sweep (final for longer than RELAY_RETENTION).",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "relay_queue_depth",
    "Members of a schedule (poll, delivery, expiry).",
    ["queue"],
    registry=REGISTRY,
)
QUEUE_DUE = Gauge(
    "relay_queue_due",
    "Members of a schedule (poll, delivery, expiry) due now or overdue and not claimed: the "
    "backlog (relay_queue_depth also counts claims and retries due hours away).",
    ["queue"],
    registry=REGISTRY,
)
REDIS_MEMORY = Gauge(
    "relay_redis_memory_bytes",
    "Redis' used_memory and its maxmemory (0: none set), read by each worker every 5 s: "
    "registrations answer 503 above RELAY_REDIS_HIGH_WATER of maxmemory, and Redis refuses "
    "writes at it -- alert well before (the container's memory is not the measure).",
    ["kind"],
    registry=REGISTRY,
)
REDIS_UP = Gauge(
    "relay_redis_up",
    "1 when this worker's last gauge round trip to Redis (every 5 s) succeeded, else 0: the "
    "gauges read from Redis keep their last values while it is 0.",
    registry=REGISTRY,
)


class _DroppedLogWrites(Collector):
    """Log writes that failed (:func:`relay.logs.dropped`), as a counter."""

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "relay_log_writes_dropped",
            "Log writes that failed and were dropped (a closed pipe to the log collector, a "
            "full disk): the process goes on without its log.",
            value=logs.dropped(),
        )


LOG_WRITES_DROPPED = _DroppedLogWrites()

# made by both: the watch counts (read from Redis), the callback checks and pings of the
# API (DNS lookups, connections) beside the worker's deliveries, and the log writes dropped
for _shared in (WATCHES, DNS_LOOKUPS, CALLBACK_CONNECTIONS, CALLBACK_RESENDS, LOG_WRITES_DROPPED):
    API_REGISTRY.register(_shared)
REGISTRY.register(LOG_WRITES_DROPPED)


def exposition(*, api: bool = False) -> bytes:
    """The worker's registry (the API's with *api*) in Prometheus text format."""
    return generate_latest(API_REGISTRY if api else REGISTRY)
