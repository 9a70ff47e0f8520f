"""Scenario 13 (scale): one big fan-out through 1, 2 or 4 workers, and what it costs Redis.

Black-box: it reads Redis only through ``INFO``, ``SLOWLOG`` and ``/proc`` (never the
relay's keys), so it measures any Redis layout the relay uses.

Per configuration (workers N in 1, 2, 4 x videos V in 1, 8): one API, N ``clip-relay
worker`` processes, two light receivers (``bench/recorder.py``: 204, record each
``webhook-id``), the stack's Redis. 20,000 watches (``--scale-watches``) spread evenly over
the V videos, half to each receiver, each registered through the API with ``metadata {}``,
a ~60-character callback URL, no ``secret`` (the API makes one) and no Idempotency-Key, 64
POSTs at a time, while the videos are ``processing``. Then every video turns ``completed``
in the simulator; the *window* runs from that switch to the last 2xx (the receivers hold
every expected webhook id). Measured over the window:

- deliveries/s (watches / window);
- Redis CPU per delivery: the server process's utime + stime (``/proc/<pid>/stat``);
- Redis commands per delivery: all ``cmdstat_*`` calls (commands run by scripts count as
  their own), ``CONFIG RESETSTAT`` at the switch; the top commands by calls and by usec;
- slow commands: ``SLOWLOG`` entries over 1 ms (count, slowest, per command);
- worker CPU per delivery (all the workers' processes together) and in total;
- the API's ``GET /v1/watches/{id}`` p99 (a sequential loop, 20 requests/s of random
  watches) during the window vs the same loop at rest (after registration, before the
  switch);

and Redis ``used_memory`` per watch after registration and after delivery (its event and
attempt included), against the empty Redis, each read once the relay settled.
Correctness: no webhook id twice, none missing (else the run fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import fanout
from common import Checks, CpuSet, percentile
from redisinfo import (
    proc_cpu,
    redis_commandstats,
    redis_forks,
    redis_memory,
    redis_reset_window,
    redis_slowlog,
    redis_slowlog_reset,
)
from stack import HERE, Stack
from tools import create_videos, register, switch_status

from relay import constants as c
from relay.devtools.embedded_redis import free_port
from relay.devtools.stack import wait_http

WATCHES = 20_000
WORKER_COUNTS = (1, 2, 4)
VIDEO_COUNTS = (1, 8)
REGISTER_CONCURRENCY = 64
URL_LENGTH = 60  # characters of each callback URL
# the fan-out scenario's worker: 0.5 s poll interval, delivery concurrency 64 per worker
WORKER_ENV = dict(fanout.WORKER_ENV)
PROBE_HZ = 20.0  # GET /v1/watches/{id}, sequential
REST_S = 8.0  # the probe at rest, before the switch
SETTLE_S = 1.0  # the relay settles before used_memory is read
DELIVER_WITHIN = 300.0  # seconds the receivers may wait for every event
TOP = 6  # commands listed by calls and by usec


@dataclass
class ScaleRun:
    """What one configuration measured."""

    workers: int
    videos: int
    watches: int
    rep: int = 0
    register_s: float = 0.0
    register_rps: float = 0.0
    window_s: float = 0.0
    rate: float = 0.0  # deliveries/s, switch -> last 2xx
    first_2xx_s: float = 0.0  # switch -> first 2xx
    redis_cpu_us: float = 0.0  # per delivery
    redis_cores: float = 0.0  # Redis CPU s / window s
    redis_cmds: float = 0.0  # per delivery
    top_calls: list[tuple[str, float]] = field(default_factory=list)  # per delivery
    top_usec: list[tuple[str, float]] = field(default_factory=list)  # us per delivery
    slow_count: int = 0
    slow_max_ms: float = 0.0
    slow_by_cmd: dict[str, dict[str, float]] = field(default_factory=dict)
    slow_registration: int = 0  # > 1 ms during the registration (info)
    forks: int = 0  # BGSAVE / AOF rewrite forks during the window
    redis_child_cpu_us: float = 0.0  # per delivery: its children that ended in the window
    worker_cpu_us: float = 0.0  # per delivery, all workers together
    worker_cpu_s: float = 0.0  # all workers together, over the window
    worker_cpu_s_each: list[float] = field(default_factory=list)
    bytes_registered: float = 0.0  # used_memory per watch after registration
    bytes_with_event: float = 0.0  # ... after delivery
    dataset_bytes_registered: float = 0.0  # used_memory_dataset per watch (info)
    dataset_bytes_with_event: float = 0.0
    delivered: int = 0  # distinct webhook ids received
    duplicates: int = 0  # webhook ids received more than once
    missing: int = 0
    get_p99_rest_ms: float = 0.0
    get_p99_fanout_ms: float = 0.0
    get_p50_rest_ms: float = 0.0
    get_p50_fanout_ms: float = 0.0
    get_count_rest: int = 0
    get_count_fanout: int = 0
    get_errors: int = 0
    cores: dict[str, float] = field(default_factory=dict)  # per process over the window

    @property
    def label(self) -> str:
        """``1v 4w``: videos and workers (``#2`` and on: the run)."""
        return f"{self.videos}v {self.workers}w" + (f" #{self.rep + 1}" if self.rep else "")

    @property
    def get_ratio(self) -> float:
        """The API's GET p99 during the fan-out over its p99 at rest."""
        return self.get_p99_fanout_ms / self.get_p99_rest_ms if self.get_p99_rest_ms else 0.0


# --- the two receivers -----------------------------------------------------------------------


@dataclass
class Receivers:
    """The two recorder processes' base URLs."""

    urls: list[str]

    @classmethod
    def start(cls, stack: Stack) -> Receivers:
        """Start both recorders as processes of *stack* (its stop() stops them too)."""
        urls = []
        for name in ("recorder-a", "recorder-b"):
            port = free_port()
            proc = stack.start_script(name, HERE / "recorder.py", ["--port", str(port)])
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/_stats", 20.0, proc)
            urls.append(url)
        return cls(urls)

    @staticmethod
    def stop(stack: Stack) -> None:
        """Stop both recorders."""
        for name in ("recorder-a", "recorder-b"):
            stack.stop_script(name)

    async def clear(self, http: aiohttp.ClientSession) -> None:
        """Forget what both recorded."""
        for url in self.urls:
            await (await http.delete(f"{url}/_events")).release()

    async def stats(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """Each recorder's counters."""
        out = []
        for url in self.urls:
            async with http.get(f"{url}/_stats") as resp:
                out.append(await resp.json())
        return out

    async def wait(self, http: aiohttp.ClientSession, counts: list[int], within: float) -> bool:
        """Wait until each recorder holds its count of distinct ids (False on timeout)."""

        async def one(url: str, count: int) -> bool:
            params = {"count": str(count), "timeout": repr(within)}
            timeout = aiohttp.ClientTimeout(total=within + 10)
            async with http.get(f"{url}/_wait", params=params, timeout=timeout) as resp:
                return resp.status == 200

        done = await asyncio.gather(*(one(u, c) for u, c in zip(self.urls, counts, strict=True)))
        return all(done)


def callback_url(base: str) -> str:
    """*base* + ``/hook/aaa...``: a callback URL of :data:`URL_LENGTH` characters."""
    path = "/hook/"
    return base + path + "a" * max(URL_LENGTH - len(base) - len(path), 1)


# --- Redis and process counters (black-box) ----------------------------------------------


@dataclass
class Probe:
    """``GET /v1/watches/{id}`` of random watches, one at a time, *hz* a second."""

    stack: Stack
    http: aiohttp.ClientSession
    ids: list[str]
    hz: float = PROBE_HZ
    latencies: list[float] = field(default_factory=list)  # ms
    errors: int = 0

    async def run(self, stop: asyncio.Event, seconds: float | None = None) -> None:
        """Probe until *stop* is set (or *seconds* passed)."""
        period = 1 / self.hz
        t0 = time.monotonic()
        n = 0
        while not stop.is_set() and (seconds is None or time.monotonic() - t0 < seconds):
            wid = random.choice(self.ids)
            start = time.perf_counter()
            async with self.http.get(
                f"{self.stack.api}/v1/watches/{wid}", headers=self.stack.auth
            ) as resp:
                await resp.read()
                ok = resp.status == 200
            self.latencies.append((time.perf_counter() - start) * 1000)
            self.errors += not ok
            n += 1
            delay = t0 + n * period - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


# --- one configuration ---------------------------------------------------------------------


async def run_config(
    stack: Stack,
    http: aiohttp.ClientSession,
    receivers: Receivers,
    workers: int,
    videos: int,
    watches: int,
    checks: Checks,
) -> ScaleRun:
    """One configuration, on a fresh Redis with *workers* fresh workers."""
    label = f"scale {videos}v {workers}w"
    run = ScaleRun(workers, videos, watches)
    await asyncio.to_thread(stack.stop_worker)
    await stack.reset(http)
    await receivers.clear(http)
    await asyncio.to_thread(stack.start_workers, workers, WORKER_ENV)
    worker_pids = [p.pid for p in stack.workers]
    redis_pid = stack.redis.process.pid

    video_ids = await create_videos(http, stack.sim, f"sc{videos}v{workers}w", videos)
    urls = [callback_url(u) for u in receivers.urls]
    bodies = [
        {"videoId": video_ids[i % videos], "callbackUrl": urls[i % 2], "metadata": {}}
        for i in range(watches)
    ]
    expected = [len(range(k, watches, 2)) for k in range(2)]

    await asyncio.sleep(SETTLE_S)
    await redis_slowlog_reset(stack)
    empty, empty_dataset = await redis_memory(stack)
    t_reg = time.time()
    t0 = time.monotonic()
    created = await register(http, stack.api, stack.auth, bodies, REGISTER_CONCURRENCY)
    run.register_s = time.monotonic() - t0
    run.register_rps = len(created) / run.register_s
    checks.expect(len(created) == watches, f"{label}: {len(created)} of {watches} registered")
    ids = [w["id"] for w in created]
    await asyncio.sleep(SETTLE_S)
    run.slow_registration = len(await redis_slowlog(stack, t_reg))
    await redis_slowlog_reset(stack)
    used, dataset = await redis_memory(stack)
    run.bytes_registered = (used - empty) / watches
    run.dataset_bytes_registered = (dataset - empty_dataset) / watches

    rest = Probe(stack, http, ids)
    await rest.run(asyncio.Event(), REST_S)

    probe = Probe(stack, http, ids)
    stop = asyncio.Event()
    await redis_reset_window(stack)
    forks0 = await redis_forks(stack)
    cpus = CpuSet(stack.pids())
    cpus.start()
    redis_cpu0 = proc_cpu(redis_pid)
    redis_child0 = proc_cpu(redis_pid, children=True)
    worker_cpu0 = [proc_cpu(pid) for pid in worker_pids]
    t_switch = time.time()
    probing = asyncio.create_task(probe.run(stop))
    try:
        await asyncio.gather(*(switch_status(http, stack.sim, v) for v in video_ids))
        arrived = await receivers.wait(http, expected, DELIVER_WITHIN)
    finally:
        stop.set()
        await probing
    redis_cpu = proc_cpu(redis_pid) - redis_cpu0
    run.cores = cpus.cores()
    redis_child = proc_cpu(redis_pid, children=True) - redis_child0
    worker_cpu = [proc_cpu(pid) - c0 for pid, c0 in zip(worker_pids, worker_cpu0, strict=True)]
    calls = await redis_commandstats(stack)
    slow = await redis_slowlog(stack, t_switch)
    run.forks = await redis_forks(stack) - forks0
    checks.expect(arrived, f"{label}: not every event arrived within {DELIVER_WITHIN:.0f} s")

    stats = await receivers.stats(http)
    t_last = max(s["lastAt"] for s in stats)
    t_first = min((s["firstAt"] for s in stats if s["firstAt"]), default=t_switch)
    run.delivered = sum(s["unique"] for s in stats)
    run.window_s = t_last - t_switch
    run.first_2xx_s = t_first - t_switch
    n = max(run.delivered, 1)
    run.rate = run.delivered / run.window_s if run.window_s > 0 else 0.0
    run.redis_cpu_us = redis_cpu / n * 1e6
    run.redis_child_cpu_us = redis_child / n * 1e6
    run.redis_cores = redis_cpu / run.window_s if run.window_s > 0 else 0.0
    run.worker_cpu_s = sum(worker_cpu)
    run.worker_cpu_s_each = [round(c, 2) for c in worker_cpu]
    run.worker_cpu_us = run.worker_cpu_s / n * 1e6
    run.redis_cmds = sum(c for c, _ in calls.values()) / n
    by_calls = sorted(calls.items(), key=lambda kv: -kv[1][0])[:TOP]
    by_usec = sorted(calls.items(), key=lambda kv: -kv[1][1])[:TOP]
    run.top_calls = [(k, round(c / n, 3)) for k, (c, _) in by_calls]
    run.top_usec = [(k, round(u / n, 3)) for k, (_, u) in by_usec]
    run.slow_count = len(slow)
    run.slow_max_ms = max((ms for _, ms in slow), default=0.0)
    grouped: dict[str, list[float]] = {}
    for name, ms in slow:
        grouped.setdefault(name, []).append(ms)
    run.slow_by_cmd = {
        name: {
            "count": len(v),
            "median_ms": round(statistics.median(v), 2),
            "max_ms": round(max(v), 2),
        }
        for name, v in sorted(grouped.items(), key=lambda kv: -len(kv[1]))
    }
    run.get_p99_rest_ms = percentile(rest.latencies, 99)
    run.get_p50_rest_ms = percentile(rest.latencies, 50)
    run.get_p99_fanout_ms = percentile(probe.latencies, 99)
    run.get_p50_fanout_ms = percentile(probe.latencies, 50)
    run.get_count_rest = len(rest.latencies)
    run.get_count_fanout = len(probe.latencies)
    run.get_errors = rest.errors + probe.errors

    run.missing = watches - run.delivered
    checks.expect(run.missing == 0, f"{label}: {run.missing} events missing")
    checks.expect(run.get_errors == 0, f"{label}: {run.get_errors} probe GETs not 200")

    settled = await _settle(stack, http, ids)
    checks.expect(settled, f"{label}: sampled watches not 'delivered' 30 s after the last 2xx")
    await asyncio.sleep(SETTLE_S)
    await redis_slowlog_reset(stack)
    used, dataset = await redis_memory(stack)
    run.bytes_with_event = (used - empty) / watches
    run.dataset_bytes_with_event = (dataset - empty_dataset) / watches
    late = await receivers.stats(http)  # the window's and what came after it
    run.duplicates = sum(s["duplicates"] for s in late)
    no_id = sum(s["noId"] for s in late)
    checks.expect(run.duplicates == 0, f"{label}: {run.duplicates} webhook ids delivered twice")
    checks.expect(no_id == 0, f"{label}: {no_id} deliveries without a webhook-id")
    return run


async def _settle(
    stack: Stack, http: aiohttp.ClientSession, ids: list[str], sample: int = 100
) -> bool:
    """Wait (through the API) until a sample of the watches reads ``delivered``, then
    (in Redis) until every watch is counted delivered with nothing left to send."""
    picked = random.sample(ids, min(sample, len(ids)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pending = []
        for wid in picked:
            async with http.get(f"{stack.api}/v1/watches/{wid}", headers=stack.auth) as resp:
                body = await resp.json()
            if body.get("status") != "delivered":
                pending.append(wid)
        if not pending:
            break
        picked = pending
        await asyncio.sleep(0.2)
    else:
        return False
    # then every watch (not only the sample): all counted delivered, and no attempt left on
    # the delivery schedule (a lost settle or a lease run out would leave one, and its
    # redelivery would come after the duplicates are read)
    redis = stack.redis_client()
    try:
        while time.monotonic() < deadline:
            delivered = await redis.hget(c.WATCH_COUNTS_KEY, "delivered")  # type: ignore[misc]
            # (>=: a registration whose answer timed out may have been made all the same)
            if int(delivered or 0) >= len(ids) and not await redis.zcard(c.DELIVERY_SCHEDULE_KEY):
                return True
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()
    return False


async def run_all(
    stack: Stack,
    http: aiohttp.ClientSession,
    checks: Checks,
    *,
    watches: int = WATCHES,
    worker_counts: tuple[int, ...] = WORKER_COUNTS,
    video_counts: tuple[int, ...] = VIDEO_COUNTS,
    reps: int = 1,
) -> list[ScaleRun]:
    """*reps* rounds of every configuration (videos outer, workers inner); the receivers and
    the workers are stopped afterwards, also on failure."""
    receivers = await asyncio.to_thread(Receivers.start, stack)
    runs: list[ScaleRun] = []
    configs = [(v, w) for v in video_counts for w in worker_counts]
    try:
        for rep in range(reps):
            for videos, workers in configs:
                t0 = time.monotonic()
                run = await run_config(stack, http, receivers, workers, videos, watches, checks)
                run.rep = rep
                runs.append(run)
                print(
                    f"  scale {run.label}: {run.rate:,.0f}/s over {run.window_s:.1f} s, "
                    f"Redis {run.redis_cpu_us:.1f} us + {run.redis_cmds:.1f} cmds/delivery, "
                    f"workers {run.worker_cpu_us:.0f} us/delivery, "
                    f"{run.bytes_with_event:,.0f} B/watch, GET p99 "
                    f"{run.get_p99_rest_ms:.1f} -> {run.get_p99_fanout_ms:.1f} ms, "
                    f"registered at {run.register_rps:,.0f}/s, "
                    f"other load {run.cores.get('other', 0):.2f} cores "
                    f"({time.monotonic() - t0:.0f} s)",
                    flush=True,
                )
    finally:
        await asyncio.to_thread(stack.stop_worker)
        await asyncio.to_thread(Receivers.stop, stack)
    return runs


# --- the per-configuration table -----------------------------------------------------------
