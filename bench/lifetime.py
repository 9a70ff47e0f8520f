"""Scenario 14 (lifetime, issue 14): watches pass through with a short RELAY_RETENTION while
registrations go on, and Redis returns to where it was.

One worker with ``RELAY_RETENTION`` = :data:`RETENTION_S`, the two light receivers of the
scale scenario. Warm-up: a few hundred watches through their whole life (scripts loaded, the
tenant's own keys made) and :data:`PROBES` watches of a video that stays ``processing`` (the
API probe reads them; they live through the run); then the *baseline*: Redis ``used_memory``
and its keys, without the keys that lapse by themselves within seconds (rate counters, the
upstream budget, arq's health key, the sweep lock). The API probe (``GET /v1/watches/{id}``,
20/s, sequential) runs :data:`REST_S` seconds at rest.

The flow: :data:`VIDEOS` videos x :data:`PER_VIDEO` watches, in :data:`WAVES` waves; each
wave's watches are registered (64 POSTs at a time), then its videos turn ``completed`` while
the next wave registers, so registration, fan-out, delivery and the sweep overlap. Redis is
sampled every :data:`SAMPLE_S` s (``used_memory``, ``DBSIZE``, the watches it holds). The
*tail*: from the last 2xx until every delivered watch is deleted, only the sweep (and the
probe, and idle pumps) runs: its Redis CPU (``/proc``) and commands (``INFO commandstats``),
less the same at rest, per deleted watch, and the probe's p99 in it. Then Redis is read
again after :data:`SETTLE_S` s against the baseline. Correctness: every webhook id arrived,
none twice; every flow watch deleted; the probe watches still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from common import Checks, Figure, percentile
from redisinfo import proc_cpu, redis_commandstats
from scale import (
    REGISTER_CONCURRENCY,
    WORKER_ENV,
    Probe,
    Receivers,
    callback_url,
)
from stack import Stack
from tools import create_videos, register, switch_status

RETENTION_S = 3.0
VIDEOS = 500
PER_VIDEO = 100
WAVES = 10
WARMUP = 300
PROBES = 50
REST_S = 8.0
SAMPLE_S = 0.5
SETTLE_S = 6.0  # longer than the API and worker trim idle Redis connections (5 s)
WITHIN_S = 120.0  # the flow's deliveries and deletions, at most
ENV = {**WORKER_ENV, "RELAY_RETENTION": str(RETENTION_S)}
# keys that lapse by themselves within seconds: not the relay's state
EPHEMERAL = ("cr:rl:", "cr:up:rate:", "cr:up:pause", "cr:arq:health", "cr:sweep:lock")


@dataclass
class LifetimeRun:
    """What the scenario measured."""

    watches: int = 0
    register_s: float = 0.0
    flow_s: float = 0.0  # first registration -> last flow watch deleted
    baseline_used: int = 0
    baseline_keys: int = 0
    baseline_key_bytes: int = 0  # MEMORY USAGE of those keys, summed
    peak_used: int = 0
    peak_keys: int = 0
    peak_watches: int = 0  # watches held at the memory peak (flow ones)
    bytes_per_live_watch: float = 0.0  # (peak used - baseline) / watches held then
    end_used: int = 0
    end_keys: int = 0
    end_key_bytes: int = 0
    key_growth: dict[str, int] = field(default_factory=dict)  # keys that grew, bytes
    used_vs_baseline_pct: float = 0.0
    # used_memory less the client connections' buffers (MEMORY STATS clients.normal): the
    # relay's pools open more connections under load and keep them
    data_vs_baseline_pct: float = 0.0
    baseline_memory: dict[str, int] = field(default_factory=dict)
    end_memory: dict[str, int] = field(default_factory=dict)
    keys_vs_baseline_pct: float = 0.0
    tail_s: float = 0.0
    tail_deleted: int = 0
    sweep_redis_cpu_us: float = 0.0  # per deleted watch, idle Redis CPU taken off
    sweep_redis_cmds: float = 0.0  # per deleted watch, idle commands taken off
    purged_total: int = 0  # relay_watches_purged_total of the worker
    get_p99_rest_ms: float = 0.0
    get_p99_tail_ms: float = 0.0
    get_p99_flow_ms: float = 0.0
    get_count_tail: int = 0
    delivered: int = 0
    duplicates: int = 0
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)


async def _state(stack: Stack) -> tuple[int, int, int]:
    """``used_memory``, ``DBSIZE`` and the watches Redis holds (its status counters). The
    slow log is emptied first: it is a bounded diagnostic buffer (the scale scenario, on the
    same Redis, sets it to 10,000 entries over 1 ms), not the relay's data."""
    redis = stack.redis_client()
    try:
        await redis.slowlog_reset()
        pipe = redis.pipeline(transaction=False)
        pipe.info("memory")
        pipe.dbsize()
        pipe.hgetall("cr:stats:watches")
        mem, size, counts = await pipe.execute()
    finally:
        await redis.aclose()
    return int(mem["used_memory"]), int(size), sum(int(v) for v in counts.values())


async def _keys(stack: Stack) -> dict[str, int]:
    """Keys but the ephemeral ones, each with its ``MEMORY USAGE`` (a SCAN: run only when
    the keyspace is small)."""
    redis = stack.redis_client()
    try:
        names = [k async for k in redis.scan_iter(count=1000) if not k.startswith(EPHEMERAL)]
        pipe = redis.pipeline(transaction=False)
        for k in names:
            pipe.memory_usage(k, samples=0)
        sizes = await pipe.execute()
    finally:
        await redis.aclose()
    return {k: int(n or 0) for k, n in zip(names, sizes, strict=True)}


async def _memory(stack: Stack) -> dict[str, int]:
    """The parts of ``used_memory`` that can move (``MEMORY STATS``, ``INFO clients``)."""
    redis = stack.redis_client()
    try:
        stats = await redis.memory_stats()
        clients = await redis.info("clients")
    finally:
        await redis.aclose()
    db = stats.get("db.0", {})
    return {
        "used_memory": int(stats.get("total.allocated", 0)),
        "clients_normal": int(stats.get("clients.normal", 0)),
        "connected_clients": int(clients.get("connected_clients", 0)),
        "hashtable_main": int(db.get("overhead.hashtable.main", 0)) if db else 0,
        "hashtable_expires": int(db.get("overhead.hashtable.expires", 0)) if db else 0,
        "aof_buffer": int(stats.get("aof.buffer", 0)),
        "lua_caches": int(stats.get("lua.caches", 0)),
        "dataset": int(stats.get("dataset.bytes", 0)),
    }


async def _purged(http: aiohttp.ClientSession, stack: Stack) -> int:
    """The worker's ``relay_watches_purged_total``."""
    async with http.get(f"http://127.0.0.1:{stack.ports.metrics}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("relay_watches_purged_total "):
            return int(float(line.split()[1]))
    return 0


async def _sample(stack: Stack, run: LifetimeRun, stop: asyncio.Event) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        used, keys, held = await _state(stack)
        run.samples.append((round(time.monotonic() - t0, 2), used, keys, held))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_S)


async def _wait_held(stack: Stack, want: int, within: float, every: float) -> int:
    """Wait until Redis holds at most *want* watches (or *within* s); the reads made."""
    deadline = time.monotonic() + within
    polls = 0
    while time.monotonic() < deadline:
        polls += 1
        if (await _state(stack))[2] <= want:
            break
        await asyncio.sleep(every)
    return polls


async def _idle_rates(stack: Stack, seconds: float) -> tuple[float, float]:
    """Redis CPU s and commands per second with nothing but the probe and idle pumps."""
    pid = stack.redis.process.pid
    calls0 = sum(c for c, _ in (await redis_commandstats(stack)).values())
    cpu0 = proc_cpu(pid)
    await asyncio.sleep(seconds)
    calls = sum(c for c, _ in (await redis_commandstats(stack)).values()) - calls0
    return (proc_cpu(pid) - cpu0) / seconds, calls / seconds


async def run(stack: Stack, http: aiohttp.ClientSession, checks: Checks) -> LifetimeRun:
    """The scenario on a fresh Redis and a fresh worker."""
    out = LifetimeRun(watches=VIDEOS * PER_VIDEO)
    await asyncio.to_thread(stack.stop_worker)
    await stack.reset(http)
    receivers = Receivers.start(stack)
    try:
        await receivers.clear(http)
        await asyncio.to_thread(stack.start_worker, ENV)
        await _run(stack, http, receivers, checks, out)
    finally:
        await asyncio.to_thread(Receivers.stop, stack)
    return out


async def _run(
    stack: Stack,
    http: aiohttp.ClientSession,
    receivers: Receivers,
    checks: Checks,
    out: LifetimeRun,
) -> None:
    urls = [callback_url(u) for u in receivers.urls]
    pid = stack.redis.process.pid

    # warm-up: watches through their life, and the probe's watches (they stay)
    warm_videos = await create_videos(http, stack.sim, "ltw", 4)
    bodies = [{"videoId": warm_videos[i % 3], "callbackUrl": urls[i % 2]} for i in range(WARMUP)]
    await register(http, stack.api, stack.auth, bodies, REGISTER_CONCURRENCY)
    probe_bodies = [{"videoId": warm_videos[3], "callbackUrl": urls[0]}] * PROBES
    probes = [w["id"] for w in await register(http, stack.api, stack.auth, probe_bodies, 8)]
    for v in warm_videos[:3]:
        await switch_status(http, stack.sim, v)
    expected = [len(range(k, WARMUP, 2)) for k in range(2)]
    checks.expect(await receivers.wait(http, expected, 60), "lifetime: warm-up not delivered")
    await _wait_held(stack, PROBES, 60, 0.5)
    await asyncio.sleep(SETTLE_S)
    out.baseline_used = (await _state(stack))[0]
    base_keys = await _keys(stack)
    out.baseline_keys, out.baseline_key_bytes = len(base_keys), sum(base_keys.values())
    out.baseline_memory = await _memory(stack)
    print(
        f"  lifetime baseline: {out.baseline_used:,} B, {out.baseline_keys} keys "
        f"({out.baseline_key_bytes:,} B)",
        flush=True,
    )
    await receivers.clear(http)

    rest = Probe(stack, http, probes)
    rest_task = asyncio.create_task(rest.run(asyncio.Event(), REST_S))
    idle_cpu, idle_cmds = await _idle_rates(stack, REST_S)
    await rest_task
    out.get_p99_rest_ms = percentile(rest.latencies, 99)

    # the flow: waves registered while the previous ones fan out, deliver and age out
    videos = await create_videos(http, stack.sim, "lt", VIDEOS)
    per_wave = VIDEOS // WAVES
    flow = Probe(stack, http, probes)
    stop = asyncio.Event()
    sampling = asyncio.create_task(_sample(stack, out, stop))
    probing = asyncio.create_task(flow.run(stop))
    t0 = time.monotonic()
    switches: list[asyncio.Task[float]] = []
    try:
        for w in range(WAVES):
            wave = videos[w * per_wave : (w + 1) * per_wave]
            bodies = [
                {"videoId": wave[i % per_wave], "callbackUrl": urls[i % 2]}
                for i in range(per_wave * PER_VIDEO)
            ]
            made = await register(http, stack.api, stack.auth, bodies, REGISTER_CONCURRENCY)
            checks.expect(len(made) == len(bodies), f"lifetime: wave {w} not all registered")
            switches += [asyncio.create_task(switch_status(http, stack.sim, v)) for v in wave]
        out.register_s = time.monotonic() - t0
        await asyncio.gather(*switches)
        total = out.watches
        expected = [len(range(k, total, 2)) for k in range(2)]
        arrived = await receivers.wait(http, expected, WITHIN_S)
        checks.expect(arrived, f"lifetime: not every event arrived within {WITHIN_S:.0f} s")
    finally:
        stop.set()
        await probing
    flow_lat = flow.latencies

    # the tail: only the sweep deletes what is left
    tail = Probe(stack, http, probes)
    stop = asyncio.Event()
    probing = asyncio.create_task(tail.run(stop))
    held0 = (await _state(stack))[2]
    calls0 = sum(c for c, _ in (await redis_commandstats(stack)).values())
    cpu0 = proc_cpu(pid)
    t_tail = time.monotonic()
    try:
        polls = await _wait_held(stack, PROBES, WITHIN_S, 0.1)
    finally:
        stop.set()
        await probing
        await sampling
    out.tail_s = time.monotonic() - t_tail
    cpu = proc_cpu(pid) - cpu0
    # less this loop's own reads: INFO, DBSIZE, HGETALL a poll
    calls = sum(c for c, _ in (await redis_commandstats(stack)).values()) - calls0 - 3 * polls
    out.flow_s = time.monotonic() - t0
    held = (await _state(stack))[2]
    checks.expect(held == PROBES, f"lifetime: {held - PROBES} flow watches not deleted")
    out.tail_deleted = held0 - held
    n = max(out.tail_deleted, 1)
    out.sweep_redis_cpu_us = max(cpu - idle_cpu * out.tail_s, 0.0) / n * 1e6
    out.sweep_redis_cmds = max(calls - idle_cmds * out.tail_s, 0.0) / n
    out.get_p99_tail_ms = percentile(tail.latencies, 99)
    out.get_count_tail = len(tail.latencies)
    out.get_p99_flow_ms = percentile(flow_lat, 99)
    checks.expect(
        not (flow.errors or tail.errors or rest.errors), "lifetime: a probe watch answered non-200"
    )

    await asyncio.sleep(SETTLE_S)
    out.end_used = (await _state(stack))[0]
    end_keys = await _keys(stack)
    out.end_keys, out.end_key_bytes = len(end_keys), sum(end_keys.values())
    grew = {k: n - base_keys.get(k, 0) for k, n in end_keys.items() if n != base_keys.get(k)}
    out.key_growth = dict(sorted(grew.items(), key=lambda kv: -abs(kv[1]))[:10])
    out.end_memory = await _memory(stack)
    out.used_vs_baseline_pct = (out.end_used / out.baseline_used - 1) * 100
    base_data = out.baseline_used - out.baseline_memory["clients_normal"]
    end_data = out.end_used - out.end_memory["clients_normal"]
    out.data_vs_baseline_pct = (end_data / base_data - 1) * 100
    out.keys_vs_baseline_pct = (out.end_keys / out.baseline_keys - 1) * 100
    out.purged_total = await _purged(http, stack)
    peak = max(out.samples, key=lambda s: s[1], default=(0.0, 0, 0, 0))
    out.peak_used, out.peak_keys, out.peak_watches = peak[1], peak[2], peak[3] - PROBES
    out.peak_keys = max((s[2] for s in out.samples), default=0)
    if out.peak_watches > 0:
        out.bytes_per_live_watch = (out.peak_used - out.baseline_used) / out.peak_watches
    stats = await receivers.stats(http)
    out.delivered = sum(s["unique"] for s in stats)
    out.duplicates = sum(s.get("duplicates", 0) for s in stats)
    checks.expect(out.duplicates == 0, f"lifetime: {out.duplicates} webhook ids twice")


def detail(r: LifetimeRun) -> dict[str, Any]:
    """The run for results.json (the samples thinned to one in four)."""
    d = {k: v for k, v in vars(r).items() if k != "samples"}
    d["samples_t_used_keys_watches"] = r.samples[::4]
    d["retention_s"] = RETENTION_S
    d["videos_x_watches"] = f"{VIDEOS} x {PER_VIDEO} in {WAVES} waves"
    return d


def figures(r: LifetimeRun) -> list[Figure]:
    """The scenario's rows of the results table (one run)."""
    return [
        Figure(
            "lifetime_used_memory_vs_baseline_pct",
            "14 lifetime Redis used_memory after, vs baseline",
            "%",
            [r.used_vs_baseline_pct],
            "<= 5 %",
            lambda v: abs(v) <= 5,
        ),
        Figure(
            "lifetime_used_memory_less_clients_vs_baseline_pct",
            "14 lifetime Redis used_memory less client buffers after, vs baseline",
            "%",
            [r.data_vs_baseline_pct],
            "<= 5 %",
            lambda v: abs(v) <= 5,
        ),
        Figure(
            "lifetime_keys_vs_baseline_pct",
            "14 lifetime Redis keys after, vs baseline",
            "%",
            [r.keys_vs_baseline_pct],
            "<= 5 %",
            lambda v: abs(v) <= 5,
        ),
        Figure(
            "lifetime_bytes_per_live_watch",
            "14 lifetime Redis bytes per live watch (at the peak)",
            "B",
            [r.bytes_per_live_watch],
            "(info)",
        ),
        Figure(
            "lifetime_sweep_redis_cpu_us_per_watch",
            "14 lifetime sweep Redis CPU per deleted watch",
            "us",
            [r.sweep_redis_cpu_us],
            "(info)",
        ),
        Figure(
            "lifetime_sweep_redis_cmds_per_watch",
            "14 lifetime sweep Redis commands per deleted watch",
            "1",
            [r.sweep_redis_cmds],
            "(info)",
        ),
        Figure(
            "lifetime_api_get_p99_ms",
            "14 lifetime API GET p99 during sweeps",
            "ms",
            [r.get_p99_tail_ms],
            "unchanged within noise (<= 1.5x)",
            lambda v: v <= 1.5,
            baseline=[r.get_p99_rest_ms],
            baseline_label="at rest",
            target_on_ratio=True,
        ),
    ]
