"""Scenario 3: polling at scale.

10,000 videos watched at once (one watch each, registered through the API at concurrency
64), RELAY_POLL_INTERVAL=10, the simulator answering ``processing``: 1,000 status polls/s
are scheduled. After the registration and the first poll wave have settled, consecutive
60 s windows are measured from the simulator's request log:

- achieved status polls/s in the window (against the scheduled 1,000/s);
- lateness of each poll: the gap since the previous poll of the same video minus the
  interval (p50, p99, max);
- the worker's CPU (cores) and peak RSS over the window (psutil);
- Redis ``used_memory`` grown per watched video (after registration, before the first window).

Correctness: every video is polled in every window, and every poll was answered 200.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field

import aiohttp
from common import Checks, CpuMeter, CpuSet, percentile
from stack import Stack
from tools import create_videos, register

VIDEOS = 10_000
INTERVAL = 10.0
WINDOW = 60.0
SETTLE = 15.0  # seconds after the last registration before the first window
WORKER_ENV = {"RELAY_POLL_INTERVAL": str(INTERVAL)}


@dataclass
class PollWindow:
    """One measured window."""

    rate: float  # status polls/s achieved
    late_p50: float  # seconds
    late_p99: float
    late_max: float
    cpu_cores: float
    rss_mb: float
    videos_polled: int
    bad_answers: int
    cores: dict[str, float] = field(default_factory=dict)  # per process over the window
    redis_calls_per_poll: dict[str, float] = field(default_factory=dict)


@dataclass
class PollSetup:
    """Measured once per scenario: registration of the 10,000 watches, Redis memory."""

    register_rps: float
    redis_bytes_per_video: float


async def used_memory(stack: Stack) -> int:
    """Redis ``INFO memory`` ``used_memory`` in bytes."""
    redis = stack.redis_client()
    try:
        info = await redis.info("memory")
        return int(info["used_memory"])
    finally:
        await redis.aclose()


async def setup(stack: Stack, http: aiohttp.ClientSession) -> PollSetup:
    """Create the videos, register one watch on each, let the first wave settle."""
    before = await used_memory(stack)
    videos = await create_videos(http, stack.sim, "poll", VIDEOS)
    bodies = [
        {
            "videoId": vid,
            "callbackUrl": f"{stack.receiver}/hooks/polling",
            "minScore": 50,
            "secret": stack.secret,
            "metadata": {"bench": "polling", "k": k},
        }
        for k, vid in enumerate(videos)
    ]
    t0 = time.monotonic()
    await register(http, stack.api, stack.auth, bodies)
    register_rps = VIDEOS / (time.monotonic() - t0)
    await asyncio.sleep(SETTLE)
    after = await used_memory(stack)
    return PollSetup(register_rps, (after - before) / VIDEOS)


async def window(stack: Stack, http: aiohttp.ClientSession, n: int, checks: Checks) -> PollWindow:
    """Measure one window of WINDOW seconds."""
    meter = CpuMeter(stack.worker.pid)
    cpus = CpuSet(stack.pids())
    await stack.reset_redis_stats()
    meter.start()
    cpus.start()
    t0 = time.time()
    while time.time() < t0 + WINDOW:
        await asyncio.sleep(1.0)
        meter.sample()
    t1 = time.time()
    cpu = meter.used()
    cores = cpus.cores()
    calls = await stack.redis_calls()
    log = await stack.sim_log(http, t0 - INTERVAL * 3)
    by_video: dict[str, list[float]] = defaultdict(list)
    in_window = 0
    bad = 0
    for at, path, vid, status in log:
        if path != "status":
            continue
        by_video[vid].append(at)
        if t0 <= at < t1:
            in_window += 1
            bad += status != 200
    lateness: list[float] = []
    polled = 0
    for times in by_video.values():
        times.sort()
        hit = False
        for prev, cur in itertools.pairwise(times):
            if t0 <= cur < t1:
                lateness.append(cur - prev - INTERVAL)
                hit = True
        polled += hit or any(t0 <= t < t1 for t in times[:1])
    checks.expect(polled == VIDEOS, f"polling window {n}: {polled} of {VIDEOS} videos polled")
    checks.expect(bad == 0, f"polling window {n}: {bad} polls not answered 200")
    return PollWindow(
        rate=in_window / (t1 - t0),
        late_p50=percentile(lateness, 50),
        late_p99=percentile(lateness, 99),
        late_max=max(lateness, default=float("nan")),
        cpu_cores=cpu / (t1 - t0),
        rss_mb=meter.peak_rss / 2**20,
        videos_polled=polled,
        bad_answers=bad,
        cores=cores,
        redis_calls_per_poll={
            k: round(v / max(in_window, 1), 2)
            for k, v in sorted(calls.items())
            if v >= in_window / 10
        },
    )
