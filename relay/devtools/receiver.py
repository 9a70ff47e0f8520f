"""``clip-relay receiver``: a Standard Webhooks receiver for demos, tests and benchmarks.

Every ``POST`` on any path is a delivery: its signature is checked against the configured
secrets (401 ``application/problem+json`` when it does not verify, and the request is not
recorded), then it is recorded and answered - ``204`` by default, or the next status of a
script set for that path (to make the relay retry, back off or disable a watch).

Control routes (loopback tooling, no authentication):

- ``GET /_events`` -> ``{"events": [...], "unique": n, "duplicates": n}``
- ``DELETE /_events`` -> 204, forgets every recorded event
- ``POST /_script`` ``{"path": "/hooks/a", "codes": [500, 200], "delay": 0, "retryAfter": null}``
  -> 204
- ``POST /_secrets`` ``{"secret": "whsec_..."}`` -> 204 (accept one more secret at run time)

Verification of one request is a few HMACs over keys decoded once, so the receiver keeps up
with a benchmark's fan-out; printing only happens when a printer is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import web

from relay.domain.signing import (
    HEADER_ID,
    HEADER_TIMESTAMP,
    WebhookVerificationError,
    secret_bytes,
    verify_keys,
)

__all__ = [
    "RECEIVER_KEY",
    "ReceivedEvent",
    "Receiver",
    "create_app",
    "format_event",
    "main",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8099
SECRETS_ENV: Final = "RECEIVER_SECRETS"
MAX_BODY: Final = 16 * 1024 * 1024
URL_SHOWN: Final = 60

PROBLEM_TYPE: Final = "application/problem+json"


@dataclass(slots=True)
class ReceivedEvent:
    """One verified delivery, as the receiver saw it."""

    webhook_id: str
    timestamp: int
    path: str
    event: dict[str, Any]
    received_at: float
    attempt_headers: dict[str, str]
    status: int = 0  # the status code the receiver answered with

    def to_json(self) -> dict[str, Any]:
        """Return the event as a JSON-ready dict (camelCase keys, as in the relay's API)."""
        return {
            "webhookId": self.webhook_id,
            "timestamp": self.timestamp,
            "path": self.path,
            "event": self.event,
            "receivedAt": self.received_at,
            "attemptHeaders": self.attempt_headers,
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    delay: float = 0.0
    retry_after: float | None = None


RawHeaders = tuple[tuple[bytes, bytes], ...]

# One recorded delivery, kept compact: a tuple of immutable scalars (and tuples of them) is
# untracked by the cyclic garbage collector after its first pass, so thousands of stored
# deliveries add nothing to the collector's work while a benchmark is running.
# (webhook_id, timestamp, path, body, received_at, raw_headers, status)
_Record = tuple[str, int, str, bytes, float, RawHeaders, int]


def _decode_headers(raw: RawHeaders) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("utf-8", "replace") for k, v in raw}


def _materialize(record: _Record, event: dict[str, Any] | None = None) -> ReceivedEvent:
    webhook_id, timestamp, path, body, received_at, raw_headers, status = record
    return ReceivedEvent(
        webhook_id=webhook_id,
        timestamp=timestamp,
        path=path,
        event=orjson.loads(body) if event is None else event,
        received_at=received_at,
        attempt_headers=_decode_headers(raw_headers),
        status=status,
    )


@dataclass(slots=True)
class _Waiter:
    count: int
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Receiver:
    """The receiver's state: secrets, recorded events, scripted answers and waiters.

    :func:`create_app` builds the aiohttp application around one instance; tests drive the
    same instance directly (``script``, ``wait_for``, ``events``).

    Deliveries are stored compactly (raw body and headers) and turned into
    :class:`ReceivedEvent` objects only when :attr:`events` is read (or at once when a printer
    is set), which keeps the sink cheap under a benchmark's load.
    """

    def __init__(
        self,
        secrets: Sequence[str] = (),
        *,
        printer: Callable[[ReceivedEvent], None] | None = None,
        verify_signatures: bool = True,
        default_status: int = 204,
    ) -> None:
        """Accept deliveries signed with any of ``secrets`` (``whsec_...``; a malformed one
        raises :class:`ValueError`). ``printer`` is called with each recorded event;
        ``verify_signatures=False`` records unsigned or badly signed deliveries too;
        ``default_status`` answers POSTs whose path has no script left."""
        _check_status(default_status)
        self.printer = printer
        self.verify_signatures = verify_signatures
        self.default_status = default_status
        self._keys: list[bytes] = []
        self._ids: set[str] = set()
        self._records: list[_Record] = []
        self._events: list[ReceivedEvent] = []  # self._records[: len(self._events)], parsed
        self._scripts: dict[str, deque[_Answer]] = {}
        self._waiters: list[_Waiter] = []
        self._anonymous = 0
        for secret in secrets:
            self.add_secret(secret)

    # --- configuration --------------------------------------------------------------------

    @property
    def has_secrets(self) -> bool:
        """Whether at least one secret is configured."""
        return bool(self._keys)

    def add_secret(self, secret: str) -> None:
        """Also accept deliveries signed with ``secret``; :class:`ValueError` if malformed."""
        key = secret_bytes(secret)
        if key not in self._keys:
            self._keys.append(key)

    def script(
        self,
        path: str,
        codes: Sequence[int],
        *,
        delay: float = 0.0,
        retry_after: float | None = None,
    ) -> None:
        """Set the next answers for POSTs on ``path`` (e.g. ``[500, 500, 200]``), replacing any
        script left for it; once they are used up, ``default_status`` answers again.

        Each scripted answer waits ``delay`` seconds first (after recording the delivery) and,
        when ``retry_after`` is given, carries a ``Retry-After`` header with it (whole seconds
        are written as an integer, fractions as a decimal, for fast test schedules).
        """
        if not path.startswith("/"):
            raise ValueError("script path must start with '/'")
        for code in codes:
            _check_status(code)
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError("delay must be a finite number >= 0")
        if retry_after is not None and not (math.isfinite(retry_after) and retry_after >= 0):
            raise ValueError("retry_after must be a finite number >= 0 or None")
        self._scripts[path] = deque(_Answer(code, delay, retry_after) for code in codes)

    def reset(self) -> None:
        """Forget every recorded event (secrets, scripts and waiters stay)."""
        self._records = []
        self._events = []
        self._ids.clear()

    # --- what arrived -----------------------------------------------------------------------

    @property
    def events(self) -> list[ReceivedEvent]:
        """Every verified delivery in arrival order, duplicates included (treat as read-only)."""
        if len(self._events) < len(self._records):
            self._events.extend(_materialize(r) for r in self._records[len(self._events) :])
        return self._events

    def events_json(self) -> bytes:
        """Return the ``GET /_events`` document, serialized (bodies are embedded as sent)."""
        materialized = len(self._events)
        events = [ev.to_json() for ev in self._events]
        for webhook_id, timestamp, path, body, received_at, raw, status in self._records[
            materialized:
        ]:
            events.append(
                {
                    "webhookId": webhook_id,
                    "timestamp": timestamp,
                    "path": path,
                    "event": orjson.Fragment(body),
                    "receivedAt": received_at,
                    "attemptHeaders": _decode_headers(raw),
                    "status": status,
                }
            )
        return orjson.dumps(
            {"events": events, "unique": len(self._ids), "duplicates": self.duplicates()}
        )

    def received(self) -> int:
        """Return how many deliveries were recorded, duplicates included."""
        return len(self._records)

    def unique_ids(self) -> set[str]:
        """Return the distinct ``webhook-id`` values recorded so far."""
        return set(self._ids)

    def duplicates(self) -> int:
        """Return how many recorded deliveries repeated an already seen ``webhook-id``."""
        return len(self._records) - len(self._ids)

    async def wait_for(self, count: int, timeout: float) -> None:  # noqa: ASYNC109 - API
        """Wait until ``count`` distinct webhook ids have arrived; :class:`TimeoutError` after
        ``timeout`` seconds otherwise."""
        if len(self._ids) >= count:
            return
        waiter = _Waiter(count)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter.done.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{len(self._ids)} of {count} unique webhooks arrived within {timeout} s"
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    # --- request handling (used by create_app) ------------------------------------------------

    def _record(self, record: _Record, event: dict[str, Any]) -> None:
        """Record one delivery (``event`` is its parsed body), wake the waiters it satisfies
        and print it if asked."""
        self._records.append(record)
        webhook_id = record[0]
        if webhook_id not in self._ids:
            self._ids.add(webhook_id)
            if self._waiters:
                unique = len(self._ids)
                for waiter in self._waiters:
                    if unique >= waiter.count:
                        waiter.done.set()
        if self.printer is not None:
            pending = self._records[len(self._events) : -1]
            self._events.extend(_materialize(r) for r in pending)
            received = _materialize(record, event)
            self._events.append(received)
            self.printer(received)

    def next_answer(self, path: str) -> _Answer | None:
        """Pop the next scripted answer for ``path``, or None when none is left."""
        queue = self._scripts.get(path)
        if not queue:
            return None
        answer = queue.popleft()
        if not queue:
            del self._scripts[path]
        return answer

    def check(self, body: bytes, headers: Mapping[str, str]) -> tuple[str, int]:
        """Verify one delivery; return its ``(webhook_id, timestamp)``.

        Raises :class:`WebhookVerificationError` when verification is on and it fails.
        """
        if self.verify_signatures:
            if not self._keys:
                raise WebhookVerificationError("the receiver has no secret configured")
            return verify_keys(body, headers, self._keys)
        msg_id = headers.get(HEADER_ID)
        if not msg_id:
            self._anonymous += 1
            msg_id = f"anonymous_{self._anonymous}"
        raw_ts = headers.get(HEADER_TIMESTAMP, "")
        timestamp = int(raw_ts) if raw_ts.isascii() and raw_ts.isdigit() else 0
        return msg_id, timestamp


RECEIVER_KEY: Final = web.AppKey("receiver", Receiver)
"""Where :func:`create_app` keeps the :class:`Receiver` in the application."""


def _check_status(code: int) -> None:
    if isinstance(code, bool) or not isinstance(code, int) or not 200 <= code <= 599:
        raise ValueError(f"status code must be an integer in 200-599, got {code!r}")


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
    except WebhookVerificationError as exc:
        return _problem(401, "Unauthorized", f"webhook verification failed: {exc}")
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _problem(400, "Bad Request", "webhook body is not valid JSON")
    if not isinstance(event, dict):
        return _problem(400, "Bad Request", "webhook body must be a JSON object")

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


# --- terminal output --------------------------------------------------------------------------


def _text(value: Any, default: str = "-") -> str:
    return default if value is None else str(value)


def _number(value: Any, suffix: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return shown + suffix


def format_event(ev: ReceivedEvent) -> str:
    """Render one delivery as readable multi-line text for a terminal: the event type,
    webhook id, watch and video ids, clip count, then one line per clip (score, title,
    duration and the first 60 characters of its download URL)."""
    event = ev.event
    data = event.get("data")
    if not isinstance(data, dict):
        data = {}
    when = datetime.fromtimestamp(ev.received_at, UTC).strftime("%H:%M:%S")
    lines = [
        f"[{when}] {_text(event.get('type'), '?')}  webhook-id={ev.webhook_id}  path={ev.path}",
        f"  watch={_text(data.get('watchId'))}  video={_text(data.get('videoId'))}"
        f"  count={_text(data.get('count'))}",
    ]
    if "error" in data or "videoStatus" in data:
        lines.append(
            f"  videoStatus={_text(data.get('videoStatus'))}  error={_text(data.get('error'))}"
        )
    clips = data.get("clips")
    if isinstance(clips, list):
        for clip in clips:
            if not isinstance(clip, dict):
                continue
            url = clip.get("downloadUrl")
            shown_url = url[:URL_SHOWN] if isinstance(url, str) else "-"
            score = _number(clip.get("score"))
            title = _text(clip.get("title"), "(untitled)")
            duration = _number(clip.get("duration"), "s")
            lines.append(f"  - score {score:>5}  {title}  ({duration})  {shown_url}")
    return "\n".join(lines)


def _print_event(ev: ReceivedEvent) -> None:
    print(format_event(ev), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``clip-relay receiver`` until interrupted: verify and print each delivery.

    ``--secret`` may be repeated; without it, the comma-separated ``RECEIVER_SECRETS``
    environment variable is used. Returns the process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="clip-relay receiver",
        description="Receive Standard Webhooks, verify their signatures and print each event.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    parser.add_argument(
        "--secret",
        action="append",
        default=None,
        help=f"accepted whsec_ secret (repeatable; default: ${SECRETS_ENV}, comma-separated)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="record and print deliveries without checking their signatures",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the events")
    args = parser.parse_args(argv)

    if args.secret is not None:
        secrets = [s.strip() for s in args.secret if s.strip()]
    else:
        secrets = [s.strip() for s in os.environ.get(SECRETS_ENV, "").split(",") if s.strip()]
    try:
        receiver = Receiver(
            secrets,
            printer=None if args.quiet else _print_event,
            verify_signatures=not args.no_verify,
        )
    except ValueError as exc:
        print(f"clip-relay receiver: {exc}", file=sys.stderr)
        return 2
    if receiver.verify_signatures and not receiver.has_secrets:
        print(
            "clip-relay receiver: no secret given; deliveries get 401 until one is added "
            "with POST /_secrets",
            file=sys.stderr,
        )
    print(f"clip-relay receiver listening on http://{args.host}:{args.port}/", flush=True)
    web.run_app(create_app(receiver), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
