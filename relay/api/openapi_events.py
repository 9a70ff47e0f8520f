"""The parts of ``/openapi.json`` for recovery and ping, and its ``webhooks`` section: the
events the relay sends (OpenAPI 3.1), with their Standard Webhooks headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

REF = "#/components/schemas/{model}"
# RFC 3339 with a time zone, as relay.api.recovery reads it
TIME_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_TIME = {"type": "string", "format": "date-time", "pattern": TIME_PATTERN}
_ANY_OBJECT = {"type": "object", "additionalProperties": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


SCHEMAS: dict[str, Any] = {
    "RecoverRequest": {
        "type": "object",
        "properties": {
            "since": {
                **_TIME,
                "description": "Failed at or after this time (RFC 3339); not in the future"
                " (a 422 naming it).",
            },
            "until": {
                **_TIME,
                "description": "Failed before this time; default: now. Later than since (a"
                " 422 naming it otherwise).",
            },
        },
        "required": ["since"],
        "additionalProperties": False,
    },
    "RecoverResult": {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            "more": {
                "type": "boolean",
                "description": "Present (true) when the request's time ran out before the "
                "range's end: send it again, with this answer's until, to go on.",
            },
            "until": {
                **_TIME,
                "description": "With more: the end of the range this request used (the "
                "default, now, moves on; send this one).",
            },
        },
        "required": ["count"],
    },
    "PingAccepted": {
        "type": "object",
        "properties": {"watchId": {"type": "string"}},
        "required": ["watchId"],
    },
}


def paths(
    op: Callable[..., dict[str, Any]],
    problem: Callable[[str], dict[str, Any]],
    watch_id: dict[str, Any],
) -> dict[str, Any]:
    """``POST /v1/watches/recover`` and ``POST /v1/watches/{watch_id}/ping``."""
    return {
        "/v1/watches/recover": {
            "post": op(
                "Deliver again every watch that became failed in [since, until)",
                {
                    "202": _json(
                        "RecoverResult",
                        "The caller's watches that failed in the range are delivering their "
                        "last event again (same webhook-id), from the first step of the retry "
                        "schedule; count: how many. A watch already put back is skipped; "
                        "more: true when a large range needs the request again. The range "
                        "is on Redis' clock when the watch became failed; its updatedAt, "
                        "stamped when its last attempt ended, may differ by a few ms: start "
                        "the range a little before the first failure.",
                    ),
                    "400": problem("Malformed JSON."),
                    "413": problem("Body too large."),
                    "415": problem("Body is not JSON."),
                    "422": problem("Invalid since/until; `errors` names each."),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("RecoverRequest")}},
                },
            ),
        },
        "/v1/watches/{watch_id}/ping": {
            "parameters": [watch_id],
            "post": op(
                "Send the receiver one signed watch.ping event",
                {
                    "202": _json(
                        "PingAccepted",
                        "Being sent: one attempt, recorded in deliveries; the watch's status "
                        "is unchanged.",
                    ),
                    "404": problem("No such watch for this tenant."),
                    "409": problem("The watch is cancelled: nothing is sent."),
                    "429": problem(
                        "Too many requests for this API key, or too many pings in flight "
                        "(8 of this tenant, or 64 of the API process: slug pings-in-flight); "
                        "see Retry-After."
                    ),
                },
            ),
        },
    }


def _event(event_type: str, data: dict[str, Any], required: list[str], text: str) -> Any:
    return {
        "type": "object",
        "description": text,
        "properties": {
            "type": {"const": event_type},
            "timestamp": {"type": "string", "format": "date-time"},
            "data": {
                "type": "object",
                "properties": {
                    "watchId": {"type": "string"},
                    "videoId": {"type": "string"},
                    "metadata": _ANY_OBJECT,
                    **data,
                },
                "required": ["watchId", "videoId", "metadata", *required],
            },
        },
        "required": ["type", "timestamp", "data"],
    }


EVENTS: dict[str, Any] = {
    "clips.ready": _event(
        "clips.ready",
        {
            "minScore": {"type": "number"},
            "maxScore": {"type": "number"},
            "clips": {"type": "array", "items": _ANY_OBJECT},
            "count": {"type": "integer"},
        },
        ["minScore", "clips", "count"],
        "The video is completed and every clip passing the watch's filters is final, or "
        "RELAY_RENDER_TIMEOUT has passed since (clips still rendering then are left out); "
        "clips as the upstream returns them, filtered and ordered by the watch.",
    ),
    "video.failed": _event(
        "video.failed",
        {"videoStatus": {"type": "string"}, "error": {"type": "string"}},
        ["videoStatus", "error"],
        "The upstream reported failed/error/expired, or the video does not exist.",
    ),
    "watch.expired": _event(
        "watch.expired",
        {
            "videoStatus": {"type": ["string", "null"]},
            "videoProgress": {"type": ["number", "null"]},
        },
        [],
        "RELAY_WATCH_TIMEOUT passed without a final status.",
    ),
    "watch.ping": _event(
        "watch.ping",
        {},
        [],
        "Sent only on POST /v1/watches/{watch_id}/ping; never final, never retried.",
    ),
}

_HEADERS = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": "The event id (evt_...), the same on every retry: dedupe on it.",
        "schema": {"type": "string"},
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": "Unix seconds of this attempt (verify within 5 minutes).",
        "schema": {"type": "string"},
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": 'Space-separated "v1,<base64 HMAC-SHA256(key, id.timestamp.body)>".',
        "schema": {"type": "string"},
    },
]


def webhooks() -> dict[str, Any]:
    """The ``webhooks`` section: one POST per event type, to the watch's callbackUrl."""
    out: dict[str, Any] = {}
    for name, schema in EVENTS.items():
        out[name] = {
            "post": {
                "summary": f"{name} (Standard Webhooks signed)",
                "parameters": _HEADERS,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema}},
                },
                "responses": {
                    "2XX": {"description": "Delivered."},
                    "410": {"description": "Gone: the watch is disabled, no more attempts."},
                    "default": {"description": "Failed: retried on RELAY_RETRY_SCHEDULE."},
                },
            }
        }
    return out
