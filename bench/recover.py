"""Scenario 14 (recover): 10,000 failed watches put back by one ``POST /v1/watches/recover``.

One worker (the fan-out scenario's settings, retry schedule ``0.2``: an attempt and one
retry). 10,000 watches (``BENCH_RECOVER_WATCHES``) on one video, each with a callback on a
loopback port where nothing listens yet; the video turns ``completed``, every attempt is
refused, every watch ends ``failed``. Then a light receiver (``bench/recorder.py``) starts
on that port (the receiver "heals"), the API's ``GET /v1/watches/{id}`` is probed at rest
(:data:`scale.REST_S`), and one ``POST /v1/watches/recover {"since"}`` is sent. Measured:
the time to its 202 (and its count), the time from the request until the receiver holds
every webhook id, and the probe's p99 during that window vs at rest and vs the control: as
many watches of a new video delivered the ordinary way (a fan-out) to the same receiver,
probed alike -- on this 2-core machine the worker's deliveries take CPU from the API
whatever started them, and the control says how much of the p99 is that. Correctness: the
count is every watch, each webhook id arrives (no duplicates), every watch ends delivered.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import fanout
import scale
from common import Checks, percentile
from stack import HERE, Stack
from tools import create_videos, register, switch_status

from relay.devtools.embedded_redis import free_port
from relay.devtools.stack import wait_http

WATCHES = int(os.environ.get("BENCH_RECOVER_WATCHES", "10000"))
# the breaker opens on the refused connections; a short cooldown lets the healed receiver
# be probed at once (this scenario measures recover, not the breaker: bench/noisy.py does)
WORKER_ENV = {
    **fanout.WORKER_ENV,
    "RELAY_RETRY_SCHEDULE": "0.2",
    "RELAY_BREAKER_COOLDOWN": "0.5",
}
# the recover and its control each last ~1.3 s: 200 GETs a second give each p99 ~260
# samples (at the scale scenario's 20 a second it was the largest of ~26, a coin toss)
PROBE_HZ = 200.0
FAIL_WITHIN = 600.0  # seconds for every watch to fail
DELIVER_WITHIN = 600.0


@dataclass
class RecoverRun:
    """What the scenario measured."""

    watches: int
    register_s: float = 0.0
    fail_s: float = 0.0  # switch -> every watch failed
    accepted_s: float = 0.0  # the recover request -> its 202
    count: int = 0
    delivered_s: float = 0.0  # the recover request -> the last webhook id received
    unique: int = 0
    duplicates: int = 0
    get_p50_rest_ms: float = 0.0
    get_p99_rest_ms: float = 0.0
    get_p50_recover_ms: float = 0.0
    get_p99_recover_ms: float = 0.0
    get_count_recover: int = 0
    # the control: as many watches of a new video delivered to the same receiver, the
    # ordinary way (a fan-out), the same probe meanwhile
    ordinary_delivered_s: float = 0.0
    get_p50_ordinary_ms: float = 0.0
    get_p99_ordinary_ms: float = 0.0
    get_errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


async def _counts(stack: Stack) -> dict[str, int]:
    """The relay's status counters (what ``relay_watches`` exports)."""
    redis = stack.redis_client()
    try:
        raw = await redis.hgetall("cr:stats:watches")
    finally:
        await redis.aclose()
    return {k: int(v) for k, v in raw.items()}


async def _wait_counts(stack: Stack, status: str, n: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while (await _counts(stack)).get(status, 0) < n:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


async def run(stack: Stack, http: aiohttp.ClientSession, checks: Checks) -> RecoverRun:
    """The scenario, once (the worker is (re)started here)."""
    out = RecoverRun(WATCHES)
    await asyncio.to_thread(stack.stop_worker)
    await stack.reset(http)
    await asyncio.to_thread(stack.start_worker, WORKER_ENV)
    port = free_port()
    base = f"http://127.0.0.1:{port}"  # nothing listens here yet: every attempt is refused
    (video,) = await create_videos(http, stack.sim, "recover", 1)
    since = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    t0 = time.monotonic()
    bodies = [{"videoId": video, "callbackUrl": scale.callback_url(base)}] * WATCHES
    watches = await register(http, stack.api, stack.auth, bodies)
    out.register_s = time.monotonic() - t0
    ids = [w["id"] for w in watches]
    t0 = time.monotonic()
    await switch_status(http, stack.sim, video)
    failed = await _wait_counts(stack, "failed", WATCHES, FAIL_WITHIN)
    out.fail_s = time.monotonic() - t0
    checks.expect(failed, f"recover: {WATCHES} watches failed within {FAIL_WITHIN:.0f} s")
    print(f"  recover: {WATCHES} watches failed in {out.fail_s:.1f} s", flush=True)

    name = "recorder-recover"
    proc = stack.start_script(name, HERE / "recorder.py", ["--port", str(port)])
    try:
        wait_http(f"{base}/_stats", 20.0, proc)
        rest = scale.Probe(stack, http, ids, PROBE_HZ)
        await rest.run(asyncio.Event(), seconds=scale.REST_S)
        probe = scale.Probe(stack, http, ids, PROBE_HZ)
        stop = asyncio.Event()
        probing = asyncio.create_task(probe.run(stop))
        t0 = time.monotonic()
        async with http.post(
            f"{stack.api}/v1/watches/recover", json={"since": since}, headers=stack.auth
        ) as resp:
            body = await resp.json()
            out.accepted_s = time.monotonic() - t0
            checks.expect(resp.status == 202, f"recover answered {resp.status}: {body}")
        out.count = int(body.get("count", 0))
        params = {"count": str(WATCHES), "timeout": repr(DELIVER_WITHIN)}
        timeout = aiohttp.ClientTimeout(total=DELIVER_WITHIN + 10)
        async with http.get(f"{base}/_wait", params=params, timeout=timeout) as resp:
            arrived = resp.status == 200
        out.delivered_s = time.monotonic() - t0
        stop.set()
        await probing
        async with http.get(f"{base}/_stats") as resp:
            stats = await resp.json()
        ordinary = await _ordinary(stack, http, base, out)
    finally:
        stack.stop_script(name)
    out.unique, out.duplicates = int(stats["unique"]), int(stats["duplicates"])
    delivered = await _wait_counts(stack, "delivered", WATCHES, 30)
    out.statuses = await _counts(stack)
    out.get_p50_rest_ms = percentile(rest.latencies, 50)
    out.get_p99_rest_ms = percentile(rest.latencies, 99)
    out.get_p50_recover_ms = percentile(probe.latencies, 50)
    out.get_p99_recover_ms = percentile(probe.latencies, 99)
    out.get_count_recover = len(probe.latencies)
    out.get_p50_ordinary_ms = percentile(ordinary.latencies, 50)
    out.get_p99_ordinary_ms = percentile(ordinary.latencies, 99)
    out.get_errors = rest.errors + probe.errors + ordinary.errors
    checks.expect(out.count == WATCHES, f"recover: count {out.count}, expected {WATCHES}")
    checks.expect(arrived, f"recover: {out.unique} of {WATCHES} webhooks within the wait")
    checks.expect(out.duplicates == 0, f"recover: {out.duplicates} webhook ids twice")
    checks.expect(delivered, f"recover: statuses after it {out.statuses}")
    checks.expect(out.get_errors == 0, f"recover: {out.get_errors} probe GETs not 200")
    print(
        f"  recover: 202 in {out.accepted_s * 1000:.0f} ms (count {out.count}), all delivered "
        f"in {out.delivered_s:.1f} s; GET p99 {out.get_p99_recover_ms:.1f} ms vs "
        f"{out.get_p99_rest_ms:.1f} ms at rest, {out.get_p99_ordinary_ms:.1f} ms during an "
        f"ordinary delivery of as many ({out.ordinary_delivered_s:.1f} s)",
        flush=True,
    )
    return out


async def _ordinary(
    stack: Stack, http: aiohttp.ClientSession, base: str, out: RecoverRun
) -> scale.Probe:
    """The control: WATCHES watches of a new video delivered to the receiver at *base* by
    an ordinary fan-out, probed like the recover (what delivering that many costs the API
    on this machine, recover or not)."""
    (video,) = await create_videos(http, stack.sim, "recover-control", 1)
    bodies = [{"videoId": video, "callbackUrl": scale.callback_url(base)}] * WATCHES
    ids = [w["id"] for w in await register(http, stack.api, stack.auth, bodies)]
    async with http.delete(f"{base}/_events") as resp:
        resp.raise_for_status()
    probe = scale.Probe(stack, http, ids, PROBE_HZ)
    stop = asyncio.Event()
    probing = asyncio.create_task(probe.run(stop))
    t0 = time.monotonic()
    await switch_status(http, stack.sim, video)
    params = {"count": str(WATCHES), "timeout": repr(DELIVER_WITHIN)}
    timeout = aiohttp.ClientTimeout(total=DELIVER_WITHIN + 10)
    async with http.get(f"{base}/_wait", params=params, timeout=timeout) as resp:
        resp.raise_for_status()
    out.ordinary_delivered_s = time.monotonic() - t0
    stop.set()
    await probing
    return probe
