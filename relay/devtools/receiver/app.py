"""The receiver's aiohttp application: every ``POST`` is a delivery, ``/_...`` are controls.

A delivery's signature is checked (400 ``application/problem+json`` when it does not verify,
and it is not recorded), then it is recorded and answered -- ``204`` by default, or the next
status of the script set for its path.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import orjson
from aiohttp import web

from relay.devtools.receiver.recorder import Receiver
from relay.domain.signing import WebhookVerificationError

MAX_BODY: Final = 16 * 1024 * 1024
PROBLEM_TYPE: Final = "application/problem+json"
RECEIVER_KEY: Final = web.AppKey("receiver", Receiver)
"""Where :func:`create_app` keeps the :class:`Receiver` in the application."""


def _problem(status: int, title: str, detail: str) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return web.Response(status=status, body=orjson.dumps(body), content_type=PROBLEM_TYPE)


def _format_seconds(value: float) -> str:
    """``7`` for whole seconds, ``0.25`` for fractions (to the microsecond)."""
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(reason="body is not valid JSON") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(reason="body must be a JSON object")
    return data


async def _handle_delivery(request: web.Request) -> web.StreamResponse:
    receiver = request.app[RECEIVER_KEY]
    body = await request.read()
    try:
        webhook_id, timestamp = receiver.check(body, request.headers)
        event = orjson.loads(body)
    except WebhookVerificationError as exc:
        why = f"webhook verification failed: {exc}"
    except orjson.JSONDecodeError:
        why = "webhook body is not valid JSON"
    else:
        why = "" if isinstance(event, dict) else "webhook body must be a JSON object"
    if why:  # (400, as the README tells receivers to answer)
        receiver.reject(request.path, why)
        return _problem(400, "Bad Request", why)

    path = request.path
    answer = receiver.next_answer(path)
    status = receiver.default_status if answer is None else answer.status
    record = (webhook_id, timestamp, path, body, time.time(), request.raw_headers, status)
    receiver._record(record, event)
    if answer is None:
        return web.Response(status=status)
    if answer.delay:
        await asyncio.sleep(answer.delay)
    headers = {}
    if answer.retry_after is not None:
        headers["Retry-After"] = _format_seconds(answer.retry_after)
    text = None if status == 204 else f"scripted {status}"
    return web.Response(status=status, text=text, headers=headers)


async def _handle_events(request: web.Request) -> web.Response:
    body = request.app[RECEIVER_KEY].events_json()
    return web.Response(body=body, content_type="application/json")


async def _handle_reset(request: web.Request) -> web.Response:
    request.app[RECEIVER_KEY].reset()
    return web.Response(status=204)


async def _handle_script(request: web.Request) -> web.Response:
    receiver = request.app[RECEIVER_KEY]
    try:
        data = await _json_object(request)
    except web.HTTPBadRequest as exc:
        return _problem(400, "Bad Request", exc.reason)
    path = data.get("path")
    codes = data.get("codes")
    delay = data.get("delay") or 0
    retry_after = data.get("retryAfter")
    if not isinstance(path, str):
        return _problem(400, "Bad Request", "path must be a string")
    if not isinstance(codes, list):
        return _problem(400, "Bad Request", "codes must be a list of status codes")
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        return _problem(400, "Bad Request", "delay must be a number")
    if retry_after is not None and (
        isinstance(retry_after, bool) or not isinstance(retry_after, int | float)
    ):
        return _problem(400, "Bad Request", "retryAfter must be a number or null")
    try:
        receiver.script(
            path,
            codes,
            delay=float(delay),
            retry_after=None if retry_after is None else float(retry_after),
        )
    except ValueError as exc:
        return _problem(400, "Bad Request", str(exc))
    return web.Response(status=204)


async def _handle_secrets(request: web.Request) -> web.Response:
    receiver = request.app[RECEIVER_KEY]
    try:
        data = await _json_object(request)
    except web.HTTPBadRequest as exc:
        return _problem(400, "Bad Request", exc.reason)
    secret = data.get("secret")
    if not isinstance(secret, str):
        return _problem(400, "Bad Request", "secret must be a string")
    try:
        receiver.add_secret(secret)
    except ValueError as exc:
        return _problem(400, "Bad Request", str(exc))
    return web.Response(status=204)


def create_app(receiver: Receiver) -> web.Application:
    """Build the receiver's aiohttp application around ``receiver`` (kept under
    :data:`RECEIVER_KEY`): the control routes under ``/_`` and a POST catch-all."""
    app = web.Application(client_max_size=MAX_BODY)
    app[RECEIVER_KEY] = receiver
    app.router.add_get("/_events", _handle_events)
    app.router.add_delete("/_events", _handle_reset)
    app.router.add_post("/_script", _handle_script)
    app.router.add_post("/_secrets", _handle_secrets)
    app.router.add_post("/{tail:.*}", _handle_delivery)
    return app
