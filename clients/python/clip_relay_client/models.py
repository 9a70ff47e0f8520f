"""What the API returns, as dataclasses with snake_case attributes.

Each keeps the API's own document in ``raw`` (camelCase, as sent), for scripts that want it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

WatchStatus = Literal["watching", "delivering", "delivered", "failed", "disabled", "cancelled"]
# a watch's final event (its last event type); a delivery's event type may also be watch.ping
FinalEventType = Literal["clips.ready", "video.failed", "watch.expired"]


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp of the API (``2026-11-28T10:00:00.000Z``) as an aware datetime."""
    if not value:
        return None
    return datetime.fromisoformat(str(value))


@dataclass(frozen=True, slots=True)
class Watch:
    """A watch (``GET /v1/watches/{id}``); ``secret`` only in what ``create_watch`` returns."""

    id: str
    video_id: str
    callback_url: str
    min_score: float
    max_score: float | None
    favorited_only: bool
    sort_by: Literal["score", "duration"]
    sort_order: Literal["asc", "desc"]
    metadata: dict[str, Any]
    status: WatchStatus  # (typed as the relay sends them: the values are not checked)
    video_status: str | None
    video_progress: float | None
    last_event_type: FinalEventType | None
    created_at: datetime | None
    updated_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    secret: str | None = field(default=None, repr=False)  # (never in logs by repr)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Watch:
        """A watch from the API's document."""
        return cls(
            id=doc["id"],
            video_id=doc.get("videoId", ""),
            callback_url=doc.get("callbackUrl", ""),
            min_score=float(doc.get("minScore", 0)),  # (the relay writes 80, not 80.0)
            max_score=None if doc.get("maxScore") is None else float(doc["maxScore"]),
            favorited_only=bool(doc.get("favoritedOnly", False)),
            sort_by=doc.get("sortBy", "score"),
            sort_order=doc.get("sortOrder", "desc"),
            metadata=dict(doc.get("metadata") or {}),
            status=doc.get("status", ""),
            video_status=doc.get("videoStatus"),
            video_progress=doc.get("videoProgress"),
            last_event_type=doc.get("lastEventType"),
            created_at=parse_time(doc.get("createdAt")),
            updated_at=parse_time(doc.get("updatedAt")),
            delivered_at=parse_time(doc.get("deliveredAt")),
            last_error=doc.get("lastError"),
            secret=doc.get("secret"),
            raw=dict(doc),
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery attempt (``GET /v1/watches/{id}/deliveries``)."""

    event_id: str
    event_type: str
    attempt: int
    at: datetime | None
    status_code: int | None
    error: str | None
    latency_ms: float
    response_body: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Delivery:
        """An attempt from the API's document."""
        return cls(
            event_id=doc.get("eventId", ""),
            event_type=doc.get("eventType", ""),
            attempt=int(doc.get("attempt") or 0),
            at=parse_time(doc.get("at")),
            status_code=doc.get("statusCode"),
            error=doc.get("error"),
            latency_ms=float(doc.get("latencyMs") or 0),
            response_body=doc.get("responseBody"),
            raw=dict(doc),
        )


@dataclass(frozen=True, slots=True)
class SecretRotation:
    """A new webhook secret (``POST /v1/watches/{id}/rotate-secret``); the previous one keeps
    signing beside it until ``previous_secret_expires_at``."""

    secret: str = field(repr=False)  # (never in logs by repr)
    previous_secret_expires_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SecretRotation:
        """A rotation from the API's document."""
        return cls(
            secret=doc["secret"],
            previous_secret_expires_at=parse_time(doc.get("previousSecretExpiresAt")),
            raw=dict(doc),
        )


@dataclass(frozen=True, slots=True)
class WatchPage:
    """One page of ``GET /v1/watches``: its watches, newest first, and the cursor of the
    next page (None: this was the last)."""

    data: list[Watch]
    next_cursor: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> WatchPage:
        """A page from the API's document."""
        return cls(
            data=[Watch.from_json(w) for w in doc["data"]],
            next_cursor=doc.get("nextCursor") or None,
            raw=dict(doc),
        )
