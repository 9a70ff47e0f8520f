"""JSON in and out of the simulator: responses, control bodies, checked fields, echoed numbers.

An invalid control-API body or query parameter raises :class:`BadRequest`; the handlers answer
it with ``400 {"error": message}``.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web


class BadRequest(Exception):
    """A control-API body or a query parameter is invalid; the message goes to the client."""


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def num(x: float) -> int | float:
    """An integral float as int (so echoes read like the input: 80, not 80.0)."""
    return int(x) if x.is_integer() else x


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def get_number(body: dict[str, Any], key: str, default: float, *, minimum: float = 0.0) -> float:
    v = body.get(key, default)
    if not is_number(v) or v < minimum:
        raise BadRequest(f"{key} must be a number >= {minimum:g}")
    return float(v)


def get_str(body: dict[str, Any], key: str, default: str | None) -> str | None:
    v = body.get(key, default)
    if v is not None and not isinstance(v, str):
        raise BadRequest(f"{key} must be a string")
    return v


async def read_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body
