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
    (``bench/noisy.py``; 3 pairs of runs, ``BENCH_NOISY_REPS``);
16. recover: 10,000 failed watches put back by one POST /v1/watches/recover: time to its
    202, time until all are delivered, the API's GET p99 meanwhile against an ordinary
    delivery of as many and at rest (``bench/recover.py``);
17. ui: the dashboard's overview and watch list with 10,000 watches of one tenant (first
    page, a deep cursor, a status that 1 % have): server time p50/p99 and Redis round trips
    per page (``bench/ui.py``).

The runners of scenarios 1-5, 13 and 16 are in ``bench/runners.py``.

Prints a table (median of the runs, min-max, baseline, ratio, target, met?) and writes
``bench/results.json``. Exits 1 when a correctness check fails (an event missing, unverified,
duplicated or with the wrong clips; a video not polled); timing targets are only reported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import aiohttp  # noqa: E402
import lifetime  # noqa: E402
import noisy  # noqa: E402
import orjson  # noqa: E402
import scale  # noqa: E402
import scale_report  # noqa: E402
import ui  # noqa: E402
from common import PROFILER, Checks, Figure, render_table, results_json  # noqa: E402
from runners import (  # noqa: E402
    run_fanout,
    run_notify,
    run_polling,
    run_recover,
    run_registration,
    run_scale,
)
from stack import Stack  # noqa: E402

SCENARIOS = ("fanout", "notify", "registration", "polling", "scale", "lifetime", "recover", "noisy")
RESULTS = HERE / "results.json"
SCENARIOS += ("ui",)  # the dashboard (issue 17)


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
                try:
                    figs, detail = await _scenario(name, stack, http, checks, args, workdir)
                except Exception as exc:  # the others still run, and every figure is reported
                    traceback.print_exc()
                    checks.expect(False, f"scenario {name} crashed: {type(exc).__name__}: {exc}")
                    continue
                detail["wall_s"] = round(time.monotonic() - t0, 1)
                figures += figs
                details[name] = detail
    finally:
        await asyncio.to_thread(stack.stop)
    wall = time.monotonic() - started
    _report(figures, details, checks, wall, args)
    return 1 if checks.failures else 0


async def _scenario(
    name: str,
    stack: Stack,
    http: aiohttp.ClientSession,
    checks: Checks,
    args: argparse.Namespace,
    workdir: Path,
) -> tuple[list[Figure], dict[str, Any]]:
    """Run scenario *name*: its figures and details."""
    if name == "ui":
        return await ui.run(stack, http, checks)
    if name == "fanout":
        return await run_fanout(stack, http, args.reps, checks)
    if name == "notify":
        return await run_notify(stack, http, args.reps, checks)
    if name == "registration":
        return await run_registration(stack, http, args.reps, checks, workdir)
    if name == "scale":
        return await run_scale(stack, http, checks, args)
    if name == "noisy":
        got_noisy = await noisy.run(stack, http, checks)
        return noisy.figures(got_noisy), noisy.detail(got_noisy)
    if name == "lifetime":
        got = await lifetime.run(stack, http, checks)
        return lifetime.figures(got), lifetime.detail(got)
    if name == "recover":
        return await run_recover(stack, http, checks)
    return await run_polling(stack, http, args.reps, checks)


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
        print(scale_report.render(runs))
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
