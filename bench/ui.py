"""Scenario ui (issue 17): the dashboard's pages with 10,000 watches of one tenant.

The tenant's watches are registered through the store (``create_watch.lua``, as the API
does), 1 % of them cancelled (a final status, so the rare filter reads the tenant's index of
that status). The API application runs in this process on a loopback port, on the stack's
Redis, so that each page's Redis round trips can be counted: every request or pipeline a
page's handler writes to a Redis connection is one (the count is kept per request through a
context variable, so the API's own background work is not counted). Server time is the
page's ``Server-Timing`` (the dashboard's own time in the process: session, Redis, render).

Pages, each asked for ``REQUESTS`` times in a row after a warm-up: the overview, the list's
first page, the list from a deep cursor (9,000 watches in), the list filtered by a status
that 1 % of the watches have, and, for information, a live-status filter that no watch
matches (a live status has no index: the creation index is read in chunks, at most 1,000
watches a page) and one watch's page.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import secrets
import time
from typing import Any

import aiohttp
from aiohttp import web
from common import Checks, Figure, percentile
from redis.asyncio.connection import AbstractConnection
from stack import Stack

from relay import constants as c
from relay import logs
from relay.api.app import create_app
from relay.domain.ids import new_watch_id
from relay.domain.listing import encode_cursor
from relay.domain.signing import generate_secret
from relay.domain.watch import SecretEntry, Watch
from relay.settings import ApiKey, Settings
from relay.store import Store
from relay.store.connection import connect

TENANT = "ui-bench"
WATCHES = int(os.environ.get("BENCH_UI_WATCHES", 10_000))
RARE_EVERY = 100  # 1 %: cancelled
DEEP = WATCHES * 9 // 10
REQUESTS = int(os.environ.get("BENCH_UI_REQUESTS", 200))
WARMUP = 20
TARGET_P99_MS = 50.0

_trips: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("trips", default=None)
_send = AbstractConnection.send_packed_command


async def _counting_send(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
    counter = _trips.get()
    if counter is not None:
        counter[0] += 1
    await _send(self, command, check_health)


@web.middleware
async def _count(request: web.Request, handler: Any) -> web.StreamResponse:
    counter = [0]
    _trips.set(counter)
    response: web.StreamResponse = await handler(request)
    response.headers["X-Redis-Round-Trips"] = str(counter[0])
    return response


async def _seed(redis_url: str, receiver: str) -> tuple[str, str]:
    """Register the watches, cancel 1 %; the id of a failed-looking one to show, and the
    cursor of the deep page."""
    redis = connect(redis_url)
    store = Store(redis)
    made: list[Watch] = []
    try:
        for start in range(0, WATCHES, 250):
            batch = []
            for i in range(start, min(start + 250, WATCHES)):
                w = Watch(
                    id=new_watch_id(),
                    tenant=TENANT,
                    video_id=f"ui-bench-{i % 100}",
                    callback_url=f"{receiver}/ui/{i}",
                    metadata={"order": i},
                )
                w.secrets = [SecretEntry(generate_secret(), 0)]
                batch.append(w)
            await asyncio.gather(*(store.watches.create(w, expire_after_s=86400) for w in batch))
            made += batch
        await asyncio.gather(*(store.watches.cancel(w) for w in made[::RARE_EVERY]))
        index = c.TENANT_INDEX_KEY.format(TENANT)
        ((member, score),) = await redis.zrevrange(index, DEEP, DEEP, withscores=True)
        return made[RARE_EVERY].id, encode_cursor(int(score), str(member))
    finally:
        await redis.aclose()


async def _sign_in(http: aiohttp.ClientSession, base: str, key: str) -> None:
    html = await (await http.get(f"{base}/ui/login")).text()
    found = re.search(r'name="csrfToken" value="([^"]+)"', html)
    assert found, "no CSRF token on the sign-in page"
    resp = await http.post(
        f"{base}/ui/login", data={"apiKey": key, "csrfToken": found.group(1)}, allow_redirects=False
    )
    assert resp.status == 303, resp.status


async def _measure(
    http: aiohttp.ClientSession, url: str, checks: Checks, rows: int | None
) -> dict[str, Any]:
    times: list[float] = []
    trips: list[int] = []
    for n in range(WARMUP + REQUESTS):
        async with http.get(url, allow_redirects=False) as resp:
            body = await resp.text()
            if n == 0:
                checks.expect(resp.status == 200, f"ui bench: {url} answered {resp.status}")
                if rows is not None:
                    got = body.count('data-testid="watch-row"')
                    checks.expect(got == rows, f"ui bench: {url} listed {got} rows, not {rows}")
            if n >= WARMUP:
                timing = resp.headers.get("Server-Timing", "app;dur=nan")
                times.append(float(timing.split("dur=")[1]))
                trips.append(int(resp.headers.get("X-Redis-Round-Trips", "-1")))
    return {
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "round_trips": max(trips),
        "round_trips_min": min(trips),
    }


async def run(
    stack: Stack, http: aiohttp.ClientSession, checks: Checks
) -> tuple[list[Figure], dict[str, Any]]:
    """Seed, serve the dashboard in-process, measure each page."""
    await stack.reset(http)
    t0 = time.monotonic()
    watch_id, deep = await _seed(stack.redis.url, stack.receiver)
    seeded_s = time.monotonic() - t0
    key = "uibench_" + secrets.token_urlsafe(18)
    settings = Settings(
        redis_url=stack.redis.url,
        api_keys=(ApiKey(TENANT, key),),
        rate_limit=1e6,
        ui_secret=secrets.token_urlsafe(24),
        log_format="json",
    )
    logs.setup("json", level=40)  # errors only: no line per request in the bench's output
    app = create_app(settings)
    app.middlewares.insert(0, _count)
    AbstractConnection.send_packed_command = _counting_send  # type: ignore[method-assign]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    rare = len(range(0, WATCHES, RARE_EVERY))
    pages = {
        "overview": ("/ui/", None, True),
        "list, first page": ("/ui/watches", 50, True),
        f"list, deep cursor ({DEEP:,} in)": (f"/ui/watches?cursor={deep}", 50, True),
        "list, status 1 % (cancelled)": ("/ui/watches?status=cancelled", min(50, rare), True),
        "list, live status none has (delivering)": ("/ui/watches?status=delivering", 0, False),
        "watch page": (f"/ui/watches/{watch_id}", None, False),
    }
    results: dict[str, dict[str, Any]] = {}
    try:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            await _sign_in(session, base, key)
            for name, (path, rows, _) in pages.items():
                results[name] = await _measure(session, base + path, checks, rows)
                r = results[name]
                print(
                    f"  {name}: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                    f"{r['round_trips']} Redis round trips",
                    flush=True,
                )
    finally:
        AbstractConnection.send_packed_command = _send  # type: ignore[method-assign]
        await runner.cleanup()
    figures: list[Figure] = []
    for name, (_, _, targeted) in pages.items():
        r = results[name]
        figures.append(
            Figure(
                f"ui_p99_ms_{name}",
                f"ui {name}: server time p99",
                "ms",
                [r["p99_ms"]],
                f"<= {TARGET_P99_MS:g} ms" if targeted else "(info)",
                (lambda v: v <= TARGET_P99_MS) if targeted else None,
                note=f"p50 {r['p50_ms']:.1f} ms; {REQUESTS} requests; {WATCHES:,} watches",
            )
        )
        figures.append(
            Figure(
                f"ui_round_trips_{name}",
                f"ui {name}: Redis round trips",
                "",
                [float(r["round_trips"])],
                "constant" if targeted else "(info)",
            )
        )
    listed = [results[n]["round_trips"] for n, (p, _, t) in pages.items() if t and "list" in n]
    checks.expect(
        max(listed) <= 5, f"ui bench: a list page took {max(listed)} Redis round trips (> 5)"
    )
    detail = {"watches": WATCHES, "seeded_s": seeded_s, "requests": REQUESTS, "pages": results}
    return figures, detail
