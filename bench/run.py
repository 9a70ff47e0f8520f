"""``make bench``: the relay's performance at scale (issue 3), on loopback, real processes.

Starts a Redis-protocol server (the product's redis.conf: AOF everysec), the upstream
simulator, a receiver sink (``bench/sink.py``, its own process, verifying every signature),
the API and one worker, then runs the scenarios, each with its baseline measured in the same
run:

1. fan-out: one video, 2,000 watches, deliveries/s vs an aiohttp POST loop to the same sink;
2. registration: ``POST /v1/watches`` at concurrency 64 vs orjson.loads + one Redis SET;
3. polling at scale: 10,000 videos, interval 10 s: polls/s, lateness, worker CPU/RSS, Redis;
4. time to notify: 100 videos completing at random moments, interval 1 s;
5. cost per delivery: worker CPU per webhook vs orjson + HMAC + POST in one process;
14. recover: 10,000 failed watches put back by one POST /v1/watches/recover: time to its
    202, time until all are delivered, the API's GET p99 meanwhile (``bench/recover.py``);
ui (issue 17): the dashboard's overview and watch list with 10,000 watches of one tenant
    (first page, a deep cursor, a status that 1 % have): server time p50/p99 and Redis round
    trips per page (``bench/ui.py``; ``--only ui``);
13. scale: 20,000 watches on 1 and on 8 videos through 1, 2 and 4 workers to two light
    receivers: deliveries/s, Redis CPU, commands, slow log and memory per delivery/watch, the
    API's GET p99 during the fan-out (``bench/scale.py``; one run per configuration);
14. lifetime: 50,000 watches over 500 videos through a worker with RELAY_RETENTION=3 while
    registrations go on: Redis memory and keys back to the warm-up baseline, bytes per live
    watch, the sweep's Redis cost per deleted watch, the API's GET p99 while it sweeps
    (``bench/lifetime.py``; one run);
15. noisy neighbours: one worker, 10,000 watches to an origin answering after 10 s and
    1,000 to a black-holed one, then 1,000 to the healthy sink registered last, on the same
    two videos: the healthy deliveries' p50/p99 lateness after ``completed``, their
    throughput against the same 1,000 with no bad origin, the bad origins' attempts/s
    (``bench/noisy.py``; one run).

Prints a table (median of the runs, min-max, baseline, ratio, target, met?) and writes
``bench/results.json``. Exits 1 when a correctness check fails (an event missing, unverified,
duplicated or with the wrong clips; a video not polled); timing targets are only reported.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import aiohttp  # noqa: E402
import fanout  # noqa: E402
import lifetime  # noqa: E402
import noisy  # noqa: E402
import notify  # noqa: E402
import orjson  # noqa: E402
import polling  # noqa: E402
import recover  # noqa: E402
import registration  # noqa: E402
import scale  # noqa: E402
import ui  # noqa: E402
from common import PROFILER, Checks, Figure, percentile, render_table, results_json  # noqa: E402
from stack import Stack  # noqa: E402

SCENARIOS = ("fanout", "notify", "registration", "polling", "scale", "lifetime", "recover", "noisy")
RESULTS = HERE / "results.json"
SCENARIOS += ("ui",)  # the dashboard (issue 17)


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
            "<= 2x rest (goal)",
            _le(2),
            baseline=[r.get_p99_rest_ms],
            baseline_label="at rest",
            target_on_ratio=True,
        ),
    ]
    return figures, asdict(r)


async def _main(args: argparse.Namespace, workdir: Path) -> int:
    started = time.monotonic()
    main_task = asyncio.current_task()
    if main_task is not None:  # SIGTERM (and SIGINT, by asyncio.run) unwind: the stack stops
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    checks = Checks()
    PROFILER.out = Path(args.profile) if args.profile else None
    PROFILER.rate = args.profile_rate
    print(f"starting the stack (logs in {workdir})", flush=True)
    stack = await asyncio.to_thread(Stack.start, workdir)
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    try:
        connector = aiohttp.TCPConnector(limit=128)
        async with aiohttp.ClientSession(connector=connector) as http:
            for name in args.only:
                print(f"scenario {name}", flush=True)
                t0 = time.monotonic()
                if name == "ui":
                    figs, detail = await ui.run(stack, http, checks)
                elif name == "fanout":
                    figs, detail = await run_fanout(stack, http, args.reps, checks)
                elif name == "notify":
                    figs, detail = await run_notify(stack, http, args.reps, checks)
                elif name == "registration":
                    figs, detail = await run_registration(stack, http, args.reps, checks, workdir)
                elif name == "scale":
                    figs, detail = await run_scale(stack, http, checks, args)
                elif name == "noisy":
                    got_noisy = await noisy.run(stack, http, checks)
                    figs, detail = noisy.figures(got_noisy), noisy.detail(got_noisy)
                elif name == "lifetime":
                    got = await lifetime.run(stack, http, checks)
                    figs, detail = lifetime.figures(got), lifetime.detail(got)
                elif name == "recover":
                    figs, detail = await run_recover(stack, http, checks)
                else:
                    figs, detail = await run_polling(stack, http, args.reps, checks)
                detail["wall_s"] = round(time.monotonic() - t0, 1)
                figures += figs
                details[name] = detail
    finally:
        await asyncio.to_thread(stack.stop)
    wall = time.monotonic() - started
    _report(figures, details, checks, wall, args)
    return 1 if checks.failures else 0


def _report(
    figures: list[Figure],
    details: dict[str, Any],
    checks: Checks,
    wall: float,
    args: argparse.Namespace,
) -> None:
    print()
    print(render_table(figures))
    print()
    results = results_json(figures)
    results["meta"] = {
        "wall_s": round(wall, 1),
        "reps": args.reps,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results["details"] = details
    results["checks"] = {"passed": checks.passed, "failures": checks.failures}
    RESULTS.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if "fanout" in details:
        phases = details["fanout"]["runs"]
        keys = phases[0]["phases"].keys() if phases else []
        for k in keys:
            vals = [r["phases"][k] for r in phases]
            print(f"fan-out phase {k}: median {statistics.median(vals):.3f} s")
    if "scale" in details:
        runs = [scale.ScaleRun(**r) for r in details["scale"]["runs"]]
        print(scale.render(runs))
        print()
    for name, load in _background(details).items():
        print(f"{name}: cores used outside the bench's processes, median {load:.2f}")
    print(f"results written to {RESULTS}")
    print(f"correctness: {checks.passed} checks passed, {len(checks.failures)} failed")
    for failure in checks.failures:
        print(f"  FAILED: {failure}")
    print(f"wall time: {wall:.0f} s")


def _background(details: dict[str, Any]) -> dict[str, float]:
    """Median 'other' cores (other processes on the machine) per scenario's windows."""
    found: dict[str, list[float]] = {}
    if "fanout" in details:
        found["fan-out"] = [r["cores"]["other"] for r in details["fanout"]["runs"]]
    if "registration" in details:
        found["registration (incl. load generator)"] = [
            r["api"]["cores"]["other"] for r in details["registration"]["runs"]
        ]
    if "polling" in details:
        found["polling"] = [w["cores"]["other"] for w in details["polling"]["windows"]]
    if "scale" in details:
        found["scale"] = [r["cores"]["other"] for r in details["scale"]["runs"]]
    return {k: statistics.median(v) for k, v in found.items() if v}


def main() -> int:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        default=list(SCENARIOS),
        help="run only these scenarios",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy collapsed stacks, one file per scenario and process (perturbs timing)",
    )
    parser.add_argument(
        "--profile-rate", type=int, default=200, metavar="HZ", help="py-spy samples per second"
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="keep the processes' logs here")
    parser.add_argument(
        "--scale-watches",
        type=int,
        default=int(os.environ.get("BENCH_SCALE_WATCHES", scale.WATCHES)),
        metavar="N",
        help=f"watches per scale configuration (default {scale.WATCHES:,}; "
        "env BENCH_SCALE_WATCHES)",
    )
    parser.add_argument(
        "--scale-workers",
        type=int,
        nargs="+",
        default=list(scale.WORKER_COUNTS),
        metavar="N",
        help="worker counts of the scale scenario (default 1 2 4)",
    )
    parser.add_argument(
        "--scale-videos",
        type=int,
        nargs="+",
        default=list(scale.VIDEO_COUNTS),
        metavar="V",
        help="video counts of the scale scenario (default 1 8)",
    )
    parser.add_argument(
        "--scale-reps",
        type=int,
        default=1,
        metavar="N",
        help="runs of each scale configuration (default 1; the runs interleave)",
    )
    args = parser.parse_args()
    if args.keep_logs:
        workdir = Path(args.keep_logs)
        workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_main(args, workdir))
    with tempfile.TemporaryDirectory(prefix="clip-relay-bench-") as tmp:
        return asyncio.run(_main(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
