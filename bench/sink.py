"""The benchmark's webhook sink, run as its own process: verify, record, answer 204.

``python bench/sink.py --port P`` with the accepted secrets in ``SINK_SECRETS``
(comma-separated ``whsec_...``).

Every ``POST`` is verified with :func:`relay.domain.signing.verify_keys` (the Standard Webhooks
check ``clip-relay receiver`` does: headers, 5-minute timestamp window, HMAC-SHA256) and
answered 401 when it fails; a verified delivery is recorded as (webhook id, arrival time,
path, raw body) and answered 204. Unlike ``clip-relay receiver`` it parses the bodies only
when asked for them, and it has a long-poll, so the harness never loads it while it
measures:

- ``GET /_wait?count=N&timeout=S`` -> 200 ``{"unique": n}`` once N distinct webhook ids
  arrived, 408 after S seconds;
- ``GET /_events`` -> ``{"events": [{"webhookId", "receivedAt", "path", "status",
  "event"}], "unique", "duplicates"}`` (the same shape as the receiver's);
- ``DELETE /_events`` -> 204.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from relay.domain.signing import WebhookVerificationError, secret_bytes, verify_keys


@dataclass
class Sink:
    """Recorded deliveries and the waiters on their count."""

    keys: list[bytes]
    rows: list[tuple[str, float, str, bytes]] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    rejected: int = 0
    waiters: list[tuple[int, asyncio.Event]] = field(default_factory=list)

    def record(self, msg_id: str, path: str, body: bytes) -> None:
        """Keep one verified delivery; wake the waiters it satisfies."""
        self.rows.append((msg_id, time.time(), path, body))
        if msg_id not in self.ids:
            self.ids.add(msg_id)
            n = len(self.ids)
            for want, event in self.waiters:
                if n >= want:
                    event.set()


SINK = web.AppKey("sink", Sink)


async def deliver(request: web.Request) -> web.Response:
    """A webhook: verify it, record it, 204 (401 when it does not verify)."""
    sink = request.app[SINK]
    body = await request.read()
    try:
        msg_id, _ = verify_keys(body, request.headers, sink.keys)
    except WebhookVerificationError:
        sink.rejected += 1
        return web.Response(status=401)
    sink.record(msg_id, request.path, body)
    return web.Response(status=204)


async def wait(request: web.Request) -> web.Response:
    """Long-poll until ``count`` distinct webhook ids arrived."""
    sink = request.app[SINK]
    want = int(request.query["count"])
    timeout = float(request.query.get("timeout", "60"))
    if len(sink.ids) < want:
        event = asyncio.Event()
        entry = (want, event)
        sink.waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return web.json_response({"unique": len(sink.ids)}, status=408)
        finally:
            with contextlib.suppress(ValueError):
                sink.waiters.remove(entry)
    return web.json_response({"unique": len(sink.ids)})


async def events(request: web.Request) -> web.Response:
    """Everything recorded, bodies parsed."""
    sink = request.app[SINK]
    out = [
        {
            "webhookId": msg_id,
            "receivedAt": at,
            "path": path,
            "status": 204,
            "event": orjson.loads(body),
        }
        for msg_id, at, path, body in sink.rows
    ]
    data = {
        "events": out,
        "unique": len(sink.ids),
        "duplicates": len(sink.rows) - len(sink.ids),
        "rejected": sink.rejected,
    }
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def reset(request: web.Request) -> web.Response:
    """Forget everything recorded."""
    sink = request.app[SINK]
    sink.rows.clear()
    sink.ids.clear()
    sink.rejected = 0
    return web.Response(status=204)


def create_app(secrets: list[str]) -> web.Application:
    """The sink application accepting deliveries signed with any of *secrets*."""
    app = web.Application(client_max_size=16 * 2**20)
    app[SINK] = Sink([secret_bytes(s) for s in secrets])
    app.router.add_get("/_wait", wait)
    app.router.add_get("/_events", events)
    app.router.add_delete("/_events", reset)
    app.router.add_post("/{tail:.*}", deliver)
    return app


def main() -> int:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="benchmark webhook sink")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    secrets = [s for s in os.environ.get("SINK_SECRETS", "").split(",") if s]
    web.run_app(create_app(secrets), host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
