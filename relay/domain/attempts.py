"""Attempt records: what ``GET /v1/watches/{id}/deliveries`` lists, stored compactly.

A record is a JSON array ``[attempt, at ms, status code, error, latency ms, answer]``: about
40 bytes for a 2xx without a body, so it fits in the watch's hash next to its state (a
watch has one final event, so its id and type are the watch's own). A ``watch.ping``
attempt, not the watch's own event, adds its type and id: ``[..., answer, type, id]``.
"""

from __future__ import annotations

from typing import Any

import orjson

from relay.domain.events import iso_ms
from relay.domain.ids import event_id

PING = "watch.ping"


def record(
    attempt: int,
    at_ms: int,
    status_code: int | None,
    error: str | None,
    latency_ms: float,
    answer: str | None,
) -> bytes:
    """One attempt, as stored."""
    return orjson.dumps([attempt, at_ms, status_code, error, latency_ms, answer])


def ping_record(
    at_ms: int,
    status_code: int | None,
    error: str | None,
    latency_ms: float,
    answer: str | None,
    ping_id: str,
) -> bytes:
    """A ``watch.ping`` attempt, as stored (always attempt 1: a ping is never retried)."""
    return orjson.dumps([1, at_ms, status_code, error, latency_ms, answer, PING, ping_id])


def expand(watch_id: str, event_type: str, raw: bytes | str) -> dict[str, Any]:
    """A stored record as the API shows it."""
    fields = orjson.loads(raw)
    attempt, at_ms, code, error, latency, answer = fields[:6]
    own_id = None
    if len(fields) >= 8:  # an event of its own (watch.ping)
        event_type, own_id = fields[6], fields[7]
    return {
        "eventId": own_id or event_id(watch_id, event_type),
        "eventType": event_type,
        "attempt": attempt,
        "at": iso_ms(at_ms),
        "statusCode": code,
        "error": error,
        "latencyMs": latency,
        "responseBody": answer,
    }
