"""A light webhook receiver for the scale scenario, run as its own process: record, 204.

``python bench/recorder.py --port P``. Unlike ``bench/sink.py`` it verifies nothing and
keeps no bodies (the body is read and dropped): per ``POST`` it records the
``webhook-id`` header and the arrival time, so that thousands of deliveries a second cost
it little CPU and duplicates and missing events can still be counted.

- ``GET /_wait?count=N&timeout=S`` -> 200 ``{"unique", "total", "lastAt"}`` once N distinct
  webhook ids arrived, 408 (same body) after S seconds;
- ``GET /_stats`` -> ``{"unique", "total", "duplicates", "noId", "firstAt", "lastAt"}``
  (``lastAt``: Unix time of the last request that brought a new webhook id);
- ``DELETE /_events`` -> 204, everything forgotten.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Recorder:
    """Webhook ids seen (with their count) and the waiters on the distinct count."""

    seen: Counter[str] = field(default_factory=Counter)
    total: int = 0
    no_id: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    waiters: list[tuple[int, asyncio.Event]] = field(default_factory=list)

    def record(self, msg_id: str | None) -> None:
        """Count one request; wake the waiters a new id satisfies."""
        now = time.time()
        self.total += 1
        if not self.first_at:
            self.first_at = now
        if not msg_id:
            self.no_id += 1
            return
        self.seen[msg_id] += 1
        if self.seen[msg_id] == 1:
            self.last_at = now
            n = len(self.seen)
            for want, event in self.waiters:
                if n >= want:
                    event.set()

    def stats(self) -> dict[str, Any]:
        """The counters as JSON-ready values."""
        return {
            "unique": len(self.seen),
            "total": self.total,
            "duplicates": sum(1 for c in self.seen.values() if c > 1),
            "extra": self.total - self.no_id - len(self.seen),
            "noId": self.no_id,
            "firstAt": self.first_at,
            "lastAt": self.last_at,
        }


RECORDER = web.AppKey("recorder", Recorder)


async def deliver(request: web.Request) -> web.Response:
    """A webhook: read the body, record its id, 204."""
    await request.read()
    request.app[RECORDER].record(request.headers.get("webhook-id"))
    return web.Response(status=204)


async def wait(request: web.Request) -> web.Response:
    """Long-poll until ``count`` distinct webhook ids arrived."""
    rec = request.app[RECORDER]
    want = int(request.query["count"])
    timeout = float(request.query.get("timeout", "60"))
    if len(rec.seen) < want:
        event = asyncio.Event()
        entry = (want, event)
        rec.waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return web.json_response(rec.stats(), status=408)
        finally:
            with contextlib.suppress(ValueError):
                rec.waiters.remove(entry)
    return web.json_response(rec.stats())


async def stats(request: web.Request) -> web.Response:
    """The counters."""
    return web.json_response(request.app[RECORDER].stats())


async def reset(request: web.Request) -> web.Response:
    """Forget everything recorded (waiters keep waiting)."""
    rec = request.app[RECORDER]
    rec.seen.clear()
    rec.total = rec.no_id = 0
    rec.first_at = rec.last_at = 0.0
    return web.Response(status=204)


def create_app() -> web.Application:
    """The recorder application."""
    app = web.Application(client_max_size=16 * 2**20)
    app[RECORDER] = Recorder()
    app.router.add_get("/_wait", wait)
    app.router.add_get("/_stats", stats)
    app.router.add_delete("/_events", reset)
    app.router.add_post("/{tail:.*}", deliver)
    return app


def main() -> int:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="light benchmark webhook recorder")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
