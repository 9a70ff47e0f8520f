"""``GET /openapi.json``: OpenAPI 3.1 built from the same pydantic models that validate."""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from aiohttp import web
from pydantic.json_schema import models_json_schema

from relay import __version__
from relay.api import openapi_events
from relay.api.models import (
    DeliveryList,
    Health,
    Problem,
    SecretOut,
    WatchCreate,
    WatchCreated,
    WatchList,
    WatchOut,
)
from relay.constants import (
    EVENT_TYPES,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_BODY_BYTES,
    VIDEO_ID_PATTERN,
    WATCH_STATUSES,
)

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


_ERRORS = {
    "401": _problem("Missing or unknown API key."),
    "429": _problem("Too many requests for this API key; see Retry-After."),
    "503": _problem(
        "Redis is unavailable; or, for a registration or a ping, Redis' memory is above"
        " RELAY_REDIS_HIGH_WATER (see Retry-After)."
    ),
}
_WATCH_ID = {
    "name": "watch_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^wat_[a-z2-7]{24}$"},
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "security": [{"bearer": []}]}
    op.update(extra)
    op["responses"] = {**responses, **_ERRORS}
    return op


@cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    _, schemas = models_json_schema(
        [
            (WatchCreate, "validation"),
            (WatchOut, "serialization"),
            (WatchCreated, "serialization"),
            (WatchList, "serialization"),
            (DeliveryList, "serialization"),
            (SecretOut, "serialization"),
            (Problem, "serialization"),
            (Health, "serialization"),
        ],
        ref_template=REF,
        by_alias=True,
    )
    components = schemas.get("$defs", {})
    components.update(openapi_events.SCHEMAS)
    watch_404 = {"404": _problem("No such watch for this tenant.")}
    paths: dict[str, Any] = {
        "/v1/watches": {
            "post": _op(
                "Register a watch",
                {
                    "201": _json("WatchCreated", "Created; the only answer with the secret."),
                    "200": _json("WatchCreated", "Same Idempotency-Key and body as before."),
                    "400": _problem("Malformed JSON."),
                    "409": _problem(
                        "Idempotency-Key reused with another body, or the watch it made is"
                        " gone; errors names the header."
                    ),
                    "413": _problem(f"Body larger than {MAX_BODY_BYTES} bytes."),
                    "415": _problem("Body is not JSON."),
                    "422": _problem("Invalid fields; `errors` names each."),
                    "429": _problem(
                        "Too many requests for this API key, or the tenant holds "
                        "RELAY_TENANT_MAX_WATCHES live watches, or ten times that in all (final "
                        "ones too, kept for RELAY_RETENTION); see Retry-After."
                    ),
                    "503": _problem(
                        "Redis unavailable, or above RELAY_REDIS_HIGH_WATER of its maxmemory; "
                        "see Retry-After."
                    ),
                },
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": (
                            "One key (several headers are a 422): a retry with the same key"
                            " and body gets the watch it made (200), for 24 h."
                        ),
                        "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
                    }
                ],
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("WatchCreate")}},
                },
            ),
            "get": _op(
                "List watches, newest first (by creation; a final status without videoId:"
                " newest to reach it)",
                {
                    "200": _json("WatchList", "A page of watches."),
                    "422": _problem("Invalid query parameter."),
                },
                parameters=[
                    {
                        "name": "videoId",
                        "in": "query",
                        "schema": {"type": "string", "pattern": VIDEO_ID_PATTERN},
                    },
                    {"name": "status", "in": "query", "schema": {"enum": list(WATCH_STATUSES)}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "The nextCursor of the page before, with the same"
                        " videoId and status (another listing's cursor is a 422 naming it).",
                        "schema": {"type": "string", "minLength": 1},
                    },
                ],
            ),
        },
        "/v1/watches/{watch_id}": {
            "parameters": [_WATCH_ID],
            "get": _op("Get a watch", {"200": _json("WatchOut", "The watch."), **watch_404}),
            "delete": _op("Cancel a watch", {"204": {"description": "Cancelled."}, **watch_404}),
        },
        "/v1/watches/{watch_id}/deliveries": {
            "parameters": [_WATCH_ID],
            "get": _op(
                "The delivery attempts of a watch (the last 200, and the last 200 pings)",
                {"200": _json("DeliveryList", "Attempts, oldest first."), **watch_404},
            ),
        },
        "/v1/watches/{watch_id}/redeliver": {
            "parameters": [_WATCH_ID],
            "post": _op(
                "Send the last event again (same webhook-id)",
                {
                    "202": _json("WatchOut", "A new attempt series is scheduled."),
                    "409": _problem("The watch has no final event to send again."),
                    **watch_404,
                },
            ),
        },
        "/v1/watches/{watch_id}/rotate-secret": {
            "parameters": [_WATCH_ID],
            "post": _op(
                "Rotate the signing secret",
                {
                    "200": _json("SecretOut", "The new secret."),
                    "409": _problem("The watch is cancelled: nothing is signed for it again."),
                    **watch_404,
                },
            ),
        },
        **openapi_events.paths(_op, _problem, _WATCH_ID),
        "/healthz": {
            "get": {"summary": "Liveness", "responses": {"200": _json("Health", "Alive.")}}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness",
                "responses": {
                    "200": _json("Health", "Ready."),
                    "503": _json("Health", "Redis unreachable or draining."),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "clip-relay",
            "version": __version__,
            "description": "Registration API of clip-relay. Events sent to callbacks: "
            + ", ".join(EVENT_TYPES)
            + " (Standard Webhooks signatures). A query parameter or a body a route does not"
            " take is a 422 naming it (an empty body or {} is no body).",
        },
        "paths": paths,
        "webhooks": openapi_events.webhooks(),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def handler(request: web.Request) -> web.Response:
    """Serve the document."""
    return web.Response(body=orjson.dumps(document()), content_type="application/json")
