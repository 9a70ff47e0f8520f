"""The runners of ``make bench``'s scenarios that ``bench/run.py`` drives: each starts what
its scenario needs on the shared stack, runs it, and returns its figures and its details
for ``bench/results.json`` (the scenarios themselves: ``fanout.py``, ``notify.py``,
``registration.py``, ``polling.py``, ``scale.py``, ``recover.py``; ``lifetime.py``,
``noisy.py`` and ``ui.py`` bring their own)."""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import fanout
import notify
import polling
import recover
import registration
import scale
from common import PROFILER, Checks, Figure, percentile
from stack import Stack


async def _fresh_worker(stack: Stack, http: aiohttp.ClientSession, env: dict[str, str]) -> None:
    """Stop the worker, empty everything, start a worker with *env*."""
    await asyncio.to_thread(stack.stop_worker)
    await stack.reset(http)
    await asyncio.to_thread(stack.start_worker, env)


def _ge(x: float) -> Callable[[float], bool]:
    return lambda v: v >= x


def _le(x: float) -> Callable[[float], bool]:
    return lambda v: v <= x


async def run_fanout(
    stack: Stack, http: aiohttp.ClientSession, reps: int, checks: Checks
) -> tuple[list[Figure], dict[str, Any]]:
    """Scenarios 1 and 5."""
    await _fresh_worker(stack, http, fanout.WORKER_ENV)
    await fanout.run_once(
        stack, http, "warmup", checks, count=fanout.WARMUP_WATCHES, baselines=False
    )
    runs = []
    for rep in range(reps):
        runs.append(await fanout.run_once(stack, http, str(rep), checks))
        print(f"  fanout run {rep}: {runs[-1].rate:,.0f}/s (raw {runs[-1].raw_rate:,.0f}/s)")
    figures = [
        Figure(
            "fanout_deliveries_per_s",
            "1 fan-out deliveries/s (clips fetched -> last 2xx)",
            "1/s",
            [r.rate for r in runs],
            ">= 0.5x raw POST (goal 0.7x)",
            _ge(0.5),
            baseline=[r.raw_rate for r in runs],
            baseline_label="raw POST",
            target_on_ratio=True,
        ),
        *(
            Figure(
                key,
                f"1 fan-out vs {what}",
                "1/s",
                [r.rate for r in runs],
                "(info)",
                baseline=[getattr(r, attr) for r in runs],
                baseline_label=label,
            )
            for key, what, attr, label in (
                ("fanout_vs_signed_post", "orjson+HMAC+POST loop", "signed_rate", "signed POST"),
                (
                    "fanout_vs_relay_client_post",
                    "the raw loop on the relay's own HTTP client",
                    "relay_client_rate",
                    "relay-client POST",
                ),
            )
        ),
        Figure(
            "cost_worker_cpu_us_per_delivery",
            "5 worker CPU per delivery",
            "us",
            [r.cpu_us for r in runs],
            "(info: vs floor)",
            baseline=[r.floor_us for r in runs],
            baseline_label="orjson+HMAC+POST",
        ),
    ]
    detail = {
        "runs": [asdict(r) for r in runs],
        "watches": fanout.WATCHES,
        "concurrency": fanout.CONCURRENCY,
        "baseline_requests": fanout.WATCHES * fanout.BASELINE_ROUNDS,
    }
    return figures, detail


async def run_notify(
    stack: Stack, http: aiohttp.ClientSession, reps: int, checks: Checks
) -> tuple[list[Figure], dict[str, Any]]:
    """Scenario 4."""
    await _fresh_worker(stack, http, notify.WORKER_ENV)
    runs = []
    for rep in range(reps):
        with PROFILER.window(f"notify-{rep}", {"worker": stack.worker.pid}):
            runs.append(await notify.run_once(stack, http, rep, checks))
        print(f"  notify run {rep}: p50 {runs[-1].p50:.3f} s, p99 {runs[-1].p99:.3f} s")
    pooled = [x for r in runs for x in r.latencies]
    figures = [
        Figure(
            "notify_p50_s",
            "4 time to notify p50",
            "s",
            [r.p50 for r in runs],
            "<= 0.7 s",
            _le(0.7),
        ),
        Figure(
            "notify_p99_s",
            "4 time to notify p99",
            "s",
            [r.p99 for r in runs],
            "<= 1.3 s",
            _le(1.3),
        ),
    ]
    detail = {
        "videos_per_run": notify.VIDEOS,
        "pooled_p50_s": percentile(pooled, 50),
        "pooled_p99_s": percentile(pooled, 99),
        "pooled_max_s": max(pooled, default=math.nan),
        "pooled_min_s": min(pooled, default=math.nan),
    }
    return figures, detail


async def run_registration(
    stack: Stack,
    http: aiohttp.ClientSession,
    reps: int,
    checks: Checks,
    workdir: Path,
) -> tuple[list[Figure], dict[str, Any]]:
    """Scenario 2."""
    await _fresh_worker(stack, http, {})
    runs, load_name = await registration.run_all(stack, http, reps, workdir, checks)
    for n, r in enumerate(runs):
        print(
            f"  registration run {n}: {r.api_rps:,.0f}/s p99 {r.api_p99:.1f} ms "
            f"(baseline {r.base_rps:,.0f}/s)"
        )
    figures = [
        Figure(
            "registration_per_s",
            "2 registrations/s (c=64)",
            "1/s",
            [r.api_rps for r in runs],
            ">= 0.5x baseline",
            _ge(0.5),
            baseline=[r.base_rps for r in runs],
            baseline_label="loads+SET",
            target_on_ratio=True,
        ),
        Figure(
            "registration_p99_ms",
            "2 registration p99",
            "ms",
            [r.api_p99 for r in runs],
            "<= 50 ms",
            _le(50),
            baseline=[r.base_p99 for r in runs],
            baseline_label="loads+SET",
        ),
        Figure(
            "registration_p50_ms",
            "2 registration p50",
            "ms",
            [r.api_p50 for r in runs],
            "(info)",
            baseline=[r.base_p50 for r in runs],
            baseline_label="loads+SET",
        ),
        Figure(
            "loadgen_ceiling_per_s",
            f"2 {load_name} alone (204 handler)",
            "1/s",
            [r.client_rps for r in runs],
            "(info)",
        ),
        Figure(
            "python_client_ceiling_per_s",
            "2 aiohttp client alone (204 handler)",
            "1/s",
            [r.py_client_rps for r in runs],
            "(info)",
        ),
    ]
    return figures, {"load_generator": load_name, "runs": [r.raw for r in runs]}


async def run_polling(
    stack: Stack, http: aiohttp.ClientSession, reps: int, checks: Checks
) -> tuple[list[Figure], dict[str, Any]]:
    """Scenario 3."""
    await _fresh_worker(stack, http, polling.WORKER_ENV)
    setup = await polling.setup(stack, http)
    print(f"  polling: {polling.VIDEOS} watches registered at {setup.register_rps:,.0f}/s")
    windows = []
    for n in range(reps):
        with PROFILER.window(f"polling-{n}", {"worker": stack.worker.pid}):
            windows.append(await polling.window(stack, http, n, checks))
        w = windows[-1]
        print(
            f"  polling window {n}: {w.rate:,.0f} polls/s, p99 late {w.late_p99:.3f} s, "
            f"cpu {w.cpu_cores:.2f}, rss {w.rss_mb:.0f} MB"
        )
    scheduled = polling.VIDEOS / polling.INTERVAL
    figures = [
        Figure(
            "polling_polls_per_s",
            "3 status polls/s (scheduled 1,000/s)",
            "1/s",
            [w.rate for w in windows],
            ">= 0.95x scheduled",
            _ge(0.95),
            baseline=[scheduled] * len(windows),
            baseline_label="scheduled",
            target_on_ratio=True,
        ),
        Figure(
            "polling_lateness_p99_s",
            "3 poll lateness p99",
            "s",
            [w.late_p99 for w in windows],
            "<= 1 s",
            _le(1.0),
        ),
        Figure(
            "polling_lateness_p50_s",
            "3 poll lateness p50",
            "s",
            [w.late_p50 for w in windows],
            "(info)",
        ),
        Figure(
            "polling_worker_cpu_cores",
            "3 worker CPU",
            "cores",
            [w.cpu_cores for w in windows],
            "<= 0.5",
            _le(0.5),
        ),
        Figure(
            "polling_worker_rss_mb",
            "3 worker peak RSS",
            "MB",
            [w.rss_mb for w in windows],
            "<= 200 MB",
            _le(200),
        ),
        Figure(
            "polling_redis_bytes_per_video",
            "3 Redis used_memory per video",
            "B",
            [setup.redis_bytes_per_video],
            "<= 2048 B",
            _le(2048),
            note="measured once: after registering 10,000 watches and the first poll wave",
        ),
    ]
    detail = {
        "videos": polling.VIDEOS,
        "interval_s": polling.INTERVAL,
        "window_s": polling.WINDOW,
        "register_rps": setup.register_rps,
        "windows": [asdict(w) for w in windows],
    }
    return figures, detail


async def run_scale(
    stack: Stack, http: aiohttp.ClientSession, checks: Checks, args: argparse.Namespace
) -> tuple[list[Figure], dict[str, Any]]:
    """Scenario 13: ``--scale-reps`` runs (default 1) of each configuration (videos x
    workers); ``--reps`` is not used."""
    runs = await scale.run_all(
        stack,
        http,
        checks,
        watches=args.scale_watches,
        worker_counts=tuple(args.scale_workers),
        video_counts=tuple(args.scale_videos),
        reps=args.scale_reps,
    )
    configs: dict[tuple[int, int], list[scale.ScaleRun]] = {}
    for r in runs:
        configs.setdefault((r.videos, r.workers), []).append(r)
    names = ", ".join(f"{v}v {w}w" for v, w in configs)
    across = f"one sample per run of each configuration ({names})"
    figures: list[Figure] = []
    for (videos, workers), rs in configs.items():
        one = configs.get((videos, 1))
        headline = videos == 1 and workers == 4 and one is not None
        figures.append(
            Figure(
                f"scale_deliveries_per_s_{videos}v_{workers}w",
                f"13 scale deliveries/s, {videos}v {workers}w",
                "1/s",
                [r.rate for r in rs],
                ">= 0.9x 1 worker" if headline else "(info)",
                _ge(0.9) if headline else None,
                baseline=[r.rate for r in one] if one is not None and workers > 1 else None,
                baseline_label="1 worker",
                target_on_ratio=headline,
            )
        )
    figures += [
        Figure(
            f"scale_redis_cpu_us_per_delivery_{videos}v_{workers}w",
            f"13 scale Redis CPU per delivery, {videos}v {workers}w",
            "us",
            [r.redis_cpu_us for r in rs],
            "<= 12 us (goal 10)",
            _le(12),
        )
        for (videos, workers), rs in configs.items()
    ]
    figures += [
        Figure(
            "scale_redis_commands_per_delivery",
            "13 scale Redis commands per delivery",
            "1",
            [r.redis_cmds for r in runs],
            "(info)",
            note=across,
        ),
        Figure(
            "scale_redis_slow_commands",
            "13 scale Redis commands > 1 ms (per run)",
            "1",
            [float(r.slow_count) for r in runs],
            "<= 10, every run",
            _le(10),
            note=across,
            check_all=True,
        ),
        Figure(
            "scale_redis_slowest_ms",
            "13 scale slowest Redis command",
            "ms",
            [r.slow_max_ms for r in runs],
            "<= 5 ms, every run",
            _le(5),
            note=across,
            check_all=True,
        ),
        Figure(
            "scale_redis_bytes_per_watch_registered",
            "13 scale Redis used_memory per watch, registered",
            "B",
            [r.bytes_registered for r in runs],
            "(info)",
            note=across,
        ),
        Figure(
            "scale_redis_bytes_per_watch_with_event",
            "13 scale Redis used_memory per watch, with its event",
            "B",
            [r.bytes_with_event for r in runs],
            "<= 1,500 B, every run",
            _le(1500),
            note=across,
            check_all=True,
        ),
        Figure(
            "scale_api_get_p99_ms",
            "13 scale API GET p99 during fan-out",
            "ms",
            [r.get_p99_fanout_ms for r in runs],
            "<= 2x rest (goal), every run",
            _le(2),
            baseline=[r.get_p99_rest_ms for r in runs],
            baseline_label="at rest",
            target_on_ratio=True,
            note=across,
            check_all=True,
        ),
        Figure(
            "scale_worker_cpu_us_per_delivery",
            "13 scale worker CPU per delivery (all workers)",
            "us",
            [r.worker_cpu_us for r in runs],
            "(info)",
            note=across,
        ),
        Figure(
            "scale_worker_cpu_s",
            "13 scale worker CPU, all workers, window",
            "s",
            [r.worker_cpu_s for r in runs],
            "(info)",
            note=across,
        ),
    ]
    detail = {
        "watches": args.scale_watches,
        "reps": args.scale_reps,
        "worker_env": scale.WORKER_ENV,
        "configurations": list(names.split(", ")),
        "runs": [asdict(r) for r in runs],
    }
    return figures, detail


async def run_recover(
    stack: Stack, http: aiohttp.ClientSession, checks: Checks
) -> tuple[list[Figure], dict[str, Any]]:
    """Scenario 14: once (each run fails and recovers 10,000 watches)."""
    r = await recover.run(stack, http, checks)
    figures = [
        Figure("recover_accepted_s", "14 recover: request -> 202", "s", [r.accepted_s], "(info)"),
        Figure(
            "recover_delivered_s",
            "14 recover: request -> all delivered",
            "s",
            [r.delivered_s],
            "(info)",
        ),
        Figure(
            "recover_api_get_p99_ms",
            "14 recover: API GET p99 meanwhile",
            "ms",
            [r.get_p99_recover_ms],
            "<= 1.25x (unchanged within noise)",
            _le(1.25),
            baseline=[r.get_p99_ordinary_ms],
            baseline_label="ordinary delivery",
            target_on_ratio=True,
        ),
        Figure(
            "recover_api_get_p99_vs_rest_ms",
            "14 recover: API GET p99 meanwhile vs at rest",
            "ms",
            [r.get_p99_recover_ms],
            "(info: 2 cores shared)",
            baseline=[r.get_p99_rest_ms],
            baseline_label="at rest",
        ),
    ]
    return figures, asdict(r)
