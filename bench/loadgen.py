"""A closed-loop POST load generator, run as its own process.

``python bench/loadgen.py SPEC.json`` prints one JSON object with the results. The spec:

- ``url``, ``concurrency``; ``count`` (requests) or ``duration`` (seconds);
- ``mode``:
  - ``presigned``: POST ``bodies`` in turn, each with its ``headers_list`` entry, made
    beforehand (the plain aiohttp ceiling: no per-request work beyond the POST);
  - ``signed``: for every request, serialize one of ``events`` with orjson, sign it
    (Standard Webhooks, ``secret``) with a fresh ``webhook-id`` and POST it (the floor of
    what a deliverer must do per webhook: orjson + HMAC + one POST);
  - ``bodies``: POST ``bodies`` in turn with fixed ``headers`` (the registration load);
- ``client``: ``aiohttp`` (default: one ``ClientSession``) or ``relay`` (the relay's own
  :class:`relay.http.webhook.WebhookClient`, loopback allowed).

Every mode first sends ``concurrency`` unmeasured requests to open the connections. The
result has ``requests``, ``elapsed``, ``rps``, ``p50_ms``, ``p99_ms``, ``statuses`` and the
process CPU time per measured request (``cpu_us_per_req``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

from relay.domain.signing import secret_bytes, sign_headers
from relay.http.ssrf import CallbackPolicy
from relay.http.webhook import Target, WebhookClient, WebhookError
from relay.settings import CallbackAllow

Request = Callable[[int], tuple[bytes, dict[str, str]]]
Post = Callable[[bytes, dict[str, str]], Awaitable[int]]


def _requester(spec: dict[str, Any]) -> Request:
    """Build the function that makes request number *i*: ``(body, headers)``."""
    mode = spec["mode"]
    headers: dict[str, str] = spec.get("headers", {})
    if mode == "presigned":
        pairs = [(b.encode(), h) for b, h in zip(spec["bodies"], spec["headers_list"], strict=True)]
        return lambda i: pairs[i % len(pairs)]
    if mode == "bodies":
        bodies = [b.encode() for b in spec["bodies"]]
        return lambda i: (bodies[i % len(bodies)], headers)
    if mode == "signed":
        events: list[Any] = spec["events"]
        keys = [secret_bytes(spec["secret"])]
        run = spec.get("run", "x")

        def signed(i: int) -> tuple[bytes, dict[str, str]]:
            body = orjson.dumps(events[i % len(events)])
            h = sign_headers(keys, f"evt_base_{run}_{i}", int(time.time()), body)
            h["User-Agent"] = "clip-relay-bench/1"
            return body, h

        return signed
    raise ValueError(f"unknown mode {mode!r}")


@contextlib.asynccontextmanager
async def _poster(client: str, url: str, concurrency: int) -> AsyncIterator[Post]:
    """``post(body, headers) -> status`` through the chosen client, open while in use."""
    if client == "relay":
        allow = CallbackAllow(networks=(ipaddress.ip_network("127.0.0.0/8"),))
        hooks = WebhookClient(CallbackPolicy(allow), timeout=60.0, max_idle=concurrency)
        target = Target.of(URL(url))

        async def relay_post(body: bytes, headers: dict[str, str]) -> int:
            return (await hooks.post(target, headers.items(), body)).status

        try:
            yield relay_post
        finally:
            await hooks.close()
        return
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def aiohttp_post(body: bytes, headers: dict[str, str]) -> int:
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        yield aiohttp_post


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    url: str = spec["url"]
    concurrency: int = spec["concurrency"]
    count: int | None = spec.get("count")
    duration: float | None = spec.get("duration")
    make = _requester(spec)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    counter = itertools.count()
    async with _poster(spec.get("client", "aiohttp"), url, concurrency) as post:

        async def one(i: int, measure: bool) -> None:
            body, headers = make(i)
            t0 = time.perf_counter()
            status = await post(body, headers)
            if measure:
                latencies.append(time.perf_counter() - t0)
                statuses[status] += 1

        await asyncio.gather(*(one(-1 - i, False) for i in range(concurrency)))
        deadline = time.perf_counter() + duration if duration else None

        async def loop() -> None:
            while True:
                i = next(counter)
                if count is not None and i >= count:
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                try:
                    await one(i, True)
                except (aiohttp.ClientError, WebhookError, OSError) as exc:
                    statuses[-1] += 1
                    print(f"loadgen: {type(exc).__name__}: {exc}", file=sys.stderr)

        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        started = time.time()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
    n = len(latencies)
    latencies.sort()
    return {
        "requests": n,
        "started": started,
        "elapsed": elapsed,
        "rps": n / elapsed if elapsed else 0.0,
        "p50_ms": latencies[n // 2] * 1000 if n else None,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else None,
        "statuses": {str(k): v for k, v in statuses.items()},
        "cpu_s": cpu,
        "cpu_us_per_req": cpu / n * 1e6 if n else None,
    }


def main() -> int:
    """Run the spec given as the first argument; print the result as JSON."""
    spec = orjson.loads(Path(sys.argv[1]).read_bytes())
    result = asyncio.run(_run(spec))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
