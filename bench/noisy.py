"""Scenario 15 (noisy neighbours): a healthy receiver beside a slow and a dead one.

One worker (default settings but a 0.05 s poll interval, so both videos are seen final in
the same poll: RELAY_DELIVERY_CONCURRENCY 128, RELAY_ORIGIN_CONCURRENCY 16,
RELAY_DELIVERY_TIMEOUT 15, the breaker at 10 failures / 30 s). Two videos; on each, 5,000
watches to an origin that answers after 10 s, then 500 to a black-holed one (accepts,
reads, never answers), then 500 to the healthy receiver sink, registered last. Both videos
turn ``completed`` together. ``BENCH_NOISY_REPS`` (7) pairs of runs, each on a fresh
worker: the 1,000 healthy watches alone (the baseline), then beside the bad ones. Measured:

- the healthy deliveries' lateness after ``completed`` (the simulator's switch time to the
  sink's arrival time): p50, p99, max;
- the healthy throughput, 1,000 / (last healthy arrival - first clips fetch of the videos,
  from the simulator's log: the poll interval's share of the lateness left out), as a ratio
  to the baseline's (medians of the repetitions);
- the bad origins' attempts per second (requests that reached them, counted by
  ``bench/bad_origins.py``) over the ``WINDOW_S`` after the first noisy run's switch, and
  the connections made.

Correctness: every healthy watch got its one event (verified by the sink), none twice.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from common import PROFILER, Checks, Figure, percentile
from stack import HERE, Stack
from tools import create_videos, register, switch_status

from relay.devtools.embedded_redis import free_port
from relay.devtools.stack import wait_http

VIDEOS = 2
SLOW, HOLE, HEALTHY = 10_000, 1_000, 1_000  # watches, spread evenly over the videos
SLOW_DELAY_S = 10.0
WINDOW_S = 20.0  # the bad origins' attempts are counted over this long after the switch
REPS = int(os.environ.get("BENCH_NOISY_REPS", "7"))  # pairs of runs (baseline, noisy)
WORKER_ENV = {"RELAY_POLL_INTERVAL": "0.05"}


@dataclass
class NoisyRun:
    """What the runs measured (one entry per repetition; the bad origins' attempts over
    the first repetition's window)."""

    p50_s: list[float] = field(default_factory=list)
    p99_s: list[float] = field(default_factory=list)
    max_s: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)  # healthy/s, clips fetched -> last arrival
    base_rate: list[float] = field(default_factory=list)  # the same with no bad origin
    base_p99_s: list[float] = field(default_factory=list)
    slow_attempts_per_s: float = 0.0
    hole_attempts_per_s: float = 0.0
    slow_connections: int = 0
    hole_connections: int = 0
    register_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


async def _healthy_run(
    stack: Stack, http: aiohttp.ClientSession, tag: str, bad: tuple[str, str] | None, checks: Checks
) -> tuple[list[float], float, float]:
    """Register (bad ones first, healthy last), switch the videos, wait for the healthy
    events; their lateness after the switch, the switch time, and their rate from the
    first clips fetch to the last arrival."""
    videos = await create_videos(http, stack.sim, f"noisy{tag}", VIDEOS)
    healthy_url = f"{stack.receiver}/hooks/noisy"
    bodies: list[dict[str, Any]] = []
    for video in videos:
        if bad is not None:
            bodies += [
                {"videoId": video, "callbackUrl": f"{bad[0]}/slow", "secret": stack.secret}
            ] * (SLOW // VIDEOS)
            bodies += [
                {"videoId": video, "callbackUrl": f"{bad[1]}/hole", "secret": stack.secret}
            ] * (HOLE // VIDEOS)
        bodies += [{"videoId": video, "callbackUrl": healthy_url, "secret": stack.secret}] * (
            HEALTHY // VIDEOS
        )
    await register(http, stack.api, stack.auth, bodies)
    await asyncio.sleep(1.5)  # polled as processing at least once more
    await stack.clear_events(http)
    switched = [await switch_status(http, stack.sim, v) for v in videos]
    t_switch = min(switched)
    arrived = await stack.wait_events(http, HEALTHY, within=120)
    checks.expect(arrived, f"noisy {tag}: not every healthy event arrived within 120 s")
    record = await stack.events(http)
    events: list[dict[str, Any]] = record["events"]
    checks.expect(
        len({e["event"]["data"]["watchId"] for e in events}) == HEALTHY,
        f"noisy {tag}: {len(events)} healthy events, expected {HEALTHY}",
    )
    checks.expect(record.get("duplicates", 0) == 0, f"noisy {tag}: duplicate healthy events")
    log = await stack.sim_log(http, t_switch - 1)
    fetched = [a for a, p, v, s in log if v in videos and p == "clips" and s == 200]
    last = max((e["receivedAt"] for e in events), default=t_switch)
    rate = len(events) / max(last - min(fetched, default=t_switch), 1e-6)
    return [e["receivedAt"] - t_switch for e in events], t_switch, rate


async def run(stack: Stack, http: aiohttp.ClientSession, checks: Checks) -> NoisyRun:
    """REPS times: the baseline (no bad origin), then the noisy run, each on a fresh
    worker (pairs side by side: this machine's noise moves both alike)."""
    out = NoisyRun()
    slow_port, hole_port = free_port(), free_port()
    proc = stack.start_script(
        "bad-origins",
        HERE / "bad_origins.py",
        ["--slow-port", str(slow_port), "--hole-port", str(hole_port), "--delay", "10"],
    )
    slow, hole = f"http://127.0.0.1:{slow_port}", f"http://127.0.0.1:{hole_port}"
    try:
        wait_http(f"{slow}/_stats", 20.0, proc)
        for rep in range(REPS):
            await _fresh_worker(stack, http)
            late, _, rate = await _healthy_run(stack, http, "base", None, checks)
            out.base_rate.append(rate)
            out.base_p99_s.append(percentile(late, 99))
            await _fresh_worker(stack, http)
            t0 = time.monotonic()
            before = await _stats(http, slow)
            with PROFILER.window(f"noisy-{rep}", {"worker": stack.worker.pid}):
                late, t_switch, rate = await _healthy_run(stack, http, "bad", (slow, hole), checks)
            out.rate.append(rate)
            out.p50_s.append(percentile(late, 50))
            out.p99_s.append(percentile(late, 99))
            out.max_s.append(max(late, default=float("nan")))
            print(
                f"  noisy run {rep}: healthy {rate:,.0f}/s (alone {out.base_rate[-1]:,.0f}/s), "
                f"p99 {out.p99_s[-1]:.2f} s",
                flush=True,
            )
            if rep:
                continue
            out.register_s = time.monotonic() - t0
            at_last = await _stats(http, slow)
            await asyncio.sleep(max(0.0, t_switch + WINDOW_S - time.time()))
            after = await _stats(http, slow)
            for kind in ("slow", "hole"):
                requests = after[kind]["requests"] - before[kind]["requests"]
                setattr(out, f"{kind}_attempts_per_s", requests / WINDOW_S)
                conns = after[kind]["connections"] - before[kind]["connections"]
                setattr(out, f"{kind}_connections", conns)
            out.extra = {"bad_at_last_healthy": at_last, "bad_at_window_end": after}
    finally:
        await asyncio.to_thread(stack.stop_worker)
        stack.stop_script("bad-origins")
        await stack.reset(http)
    return out


async def _fresh_worker(stack: Stack, http: aiohttp.ClientSession) -> None:
    await asyncio.to_thread(stack.stop_worker)
    await stack.reset(http)
    await asyncio.to_thread(stack.start_worker, WORKER_ENV)


async def _stats(http: aiohttp.ClientSession, slow: str) -> dict[str, Any]:
    async with http.get(f"{slow}/_stats") as resp:
        got: dict[str, Any] = await resp.json()
        return got


def figures(r: NoisyRun) -> list[Figure]:
    """The scenario's rows of the results table; prints its one-line summary."""
    print(
        f"  noisy: healthy p99 {max(r.p99_s):.2f} s at most, slow {r.slow_attempts_per_s:.1f}/s, "
        f"black hole {r.hole_attempts_per_s:.1f}/s"
    )
    figures = [
        Figure(
            "noisy_healthy_p50_s",
            "15 noisy: healthy lateness after completed, p50",
            "s",
            r.p50_s,
            "(info)",
        ),
        Figure(
            "noisy_healthy_p99_s",
            "15 noisy: healthy lateness after completed, p99",
            "s",
            r.p99_s,
            "<= 2 s",
            lambda v: v <= 2.0,
        ),
        Figure(
            "noisy_healthy_per_s",
            "15 noisy: healthy deliveries/s (clips fetched -> last)",
            "1/s",
            r.rate,
            ">= 0.9x alone",
            lambda v: v >= 0.9,
            baseline=r.base_rate,
            baseline_label="no bad origin",
            target_on_ratio=True,
        ),
        Figure(
            "noisy_slow_attempts_per_s",
            "15 noisy: attempts/s reaching the 10 s origin",
            "1/s",
            [r.slow_attempts_per_s],
            "(info: cap 16 / 10 s)",
        ),
        Figure(
            "noisy_hole_attempts_per_s",
            "15 noisy: attempts/s reaching the black hole",
            "1/s",
            [r.hole_attempts_per_s],
            "(info: cap, then breaker)",
        ),
    ]
    return figures


def detail(r: NoisyRun) -> dict[str, Any]:
    """The run's figures for ``bench/results.json``."""
    return asdict(r) | {"worker_env": WORKER_ENV, "window_s": WINDOW_S}
