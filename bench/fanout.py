"""Scenario 1 (fan-out) and 5 (cost per delivery).

One video, 2,000 watches with thresholds spread over 0-100, the receiver sink answering
204. The video turns ``completed``; the relay fetches the clips once and delivers 2,000
signed ``clips.ready`` events. Measured per run:

- deliveries/s from "clips fetched" (the simulator's log of the clips request) to the last
  2xx (the receiver's record);
- the worker's CPU time per delivered webhook, from the switch to the last attempt recorded;

and in the same run, against the same receiver, at the same concurrency and with the very
bodies the relay delivered (2,000 of them, sent three times over):

- ``raw``: an aiohttp POST loop of pre-signed bodies (the plain client ceiling, the
  issue's baseline);
- ``relay client``: the same loop through the relay's own webhook client (the ceiling of the
  transport the relay really uses; for information);
- ``signed``: orjson + HMAC + POST per body (also the CPU floor per webhook).

Correctness: every watch got exactly one verified event with exactly the clips scoring at
least its ``minScore``, in score order, its watch is ``delivered`` and its attempt is
recorded in the relay's attempt log.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from common import PROFILER, Checks, CpuMeter, CpuSet
from stack import Stack, log_time
from tools import create_videos, loadgen, register, sim_clips, switch_status
from verify import verify_attempt_log, verify_events, wait_delivered

from relay.domain.signing import secret_bytes, sign_headers

WATCHES = 2000
WARMUP_WATCHES = 500  # an unmeasured first run: connections, caches, code paths
CONCURRENCY = 64  # the relay's RELAY_DELIVERY_CONCURRENCY and the baseline's
BASELINE_ROUNDS = 5  # the baseline sends the delivered bodies this many times over
WORKER_ENV = {"RELAY_POLL_INTERVAL": "0.5", "RELAY_DELIVERY_CONCURRENCY": str(CONCURRENCY)}


@dataclass
class FanoutRun:
    """What one run measured."""

    rate: float = 0.0  # deliveries/s, clips fetched -> last 2xx
    raw_rate: float = 0.0
    signed_rate: float = 0.0
    relay_client_rate: float = 0.0  # the raw loop through the relay's own HTTP client
    cpu_us: float = 0.0  # worker CPU per delivery
    floor_us: float = 0.0  # orjson + HMAC + POST per webhook, in one process
    raw_client_us: float = 0.0  # CPU per POST of the raw loop
    relay_client_us: float = 0.0  # CPU per POST of the raw loop through the relay's client
    body_bytes: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    cores: dict[str, float] = field(default_factory=dict)  # per process, switch -> settled
    redis_calls_per_delivery: dict[str, float] = field(default_factory=dict)


def threshold(i: int, n: int) -> float:
    """The minScore of watch *i* of *n*: evenly spread over 0-100."""
    return round(i * 100 / (n - 1), 3)


async def run_once(
    stack: Stack,
    http: aiohttp.ClientSession,
    rep: str,
    checks: Checks,
    *,
    count: int = WATCHES,
    baselines: bool = True,
) -> FanoutRun:
    """One fan-out run of *count* deliveries, plus its baselines when asked."""
    (video_id,) = await create_videos(http, stack.sim, f"fan{rep}", 1)
    callback = f"{stack.receiver}/hooks/fanout"
    bodies = [
        {
            "videoId": video_id,
            "callbackUrl": callback,
            "minScore": threshold(i, count),
            "secret": stack.secret,
            "metadata": {"bench": "fanout", "i": i},
        }
        for i in range(count)
    ]
    watches = await register(http, stack.api, stack.auth, bodies)
    min_score = {w["id"]: w["minScore"] for w in watches}
    await asyncio.sleep(1.5)  # the video is polled (processing) at least once more
    await stack.clear_events(http)

    meter = CpuMeter(stack.worker.pid)
    cpus = CpuSet(stack.pids())
    await stack.reset_redis_stats()
    with PROFILER.window(f"fanout-{rep}", {"worker": stack.worker.pid}):
        meter.start()
        cpus.start()
        t_switch = await switch_status(http, stack.sim, video_id)
        arrived = await stack.wait_events(http, count, within=180)
        checks.expect(arrived, f"fanout run {rep}: not every event arrived within 180 s")
        settled, polls = await wait_delivered(stack, list(min_score), within=30)
        cpu = meter.used()
        cores = cpus.cores()
    calls = await stack.redis_calls()
    calls["hget"] = calls.get("hget", 0) - polls * count  # the harness's own checks
    checks.expect(settled, f"fanout run {rep}: not every watch reached 'delivered'")

    record = await stack.events(http)
    events: list[dict[str, Any]] = record["events"]
    clips = await sim_clips(http, stack.sim, video_id)
    expect = {wid: (score, clips) for wid, score in min_score.items()}
    verify_events(events, expect, checks, f"fanout run {rep}")
    await verify_attempt_log(stack, list(min_score), checks, f"fanout run {rep}")

    log = await stack.sim_log(http, t_switch - 1)
    t_clips = min(a for a, p, v, s in log if v == video_id and p == "clips" and s == 200)
    t_status = min(
        (a for a, p, v, s in log if v == video_id and p == "status" and a >= t_switch),
        default=t_clips,
    )
    received = sorted(e["receivedAt"] for e in events)
    finals = [
        log_time(r) for r in stack.worker_log_lines("video final") if r["video_id"] == video_id
    ]
    t_final = finals[-1] if finals else float("nan")
    run = FanoutRun(
        rate=len(received) / (received[-1] - t_clips),
        cpu_us=cpu / max(len(received), 1) * 1e6,
        cores=cores,
        redis_calls_per_delivery={
            k: round(v / count, 2) for k, v in sorted(calls.items()) if v >= count / 10
        },
        phases={
            "switch_to_status_poll_s": t_status - t_switch,
            "clips_fetched_to_first_2xx_s": received[0] - t_clips,
            "clips_fetched_to_video_final_log_s": t_final - t_clips,
            "first_to_last_2xx_s": received[-1] - received[0],
            "clips_fetched_to_last_2xx_s": received[-1] - t_clips,
        },
    )
    delivered = [orjson.dumps(e["event"]) for e in events]
    run.body_bytes = statistics.fmean(len(b) for b in delivered)
    if baselines:
        await _baselines(stack, http, rep, events, delivered, run)
    await stack.clear_events(http)
    return run


async def _baselines(
    stack: Stack,
    http: aiohttp.ClientSession,
    rep: str,
    events: list[dict[str, Any]],
    delivered: list[bytes],
    run: FanoutRun,
) -> None:
    """The raw and the signed POST loop, same sink, same concurrency, same bodies."""
    url = f"{stack.receiver}/hooks/baseline"
    key = [secret_bytes(stack.secret)]
    now = int(time.time())
    presigned = [
        (b, sign_headers(key, f"evt_raw_{rep}_{i}", now, b)) for i, b in enumerate(delivered)
    ]
    count = len(delivered) * BASELINE_ROUNDS
    raw_spec = {
        "mode": "presigned",
        "url": url,
        "concurrency": CONCURRENCY,
        "count": count,
        "bodies": [b.decode() for b, _ in presigned],
        "headers_list": [h for _, h in presigned],
    }
    raw = await loadgen(raw_spec)
    await stack.clear_events(http)
    own = await loadgen({**raw_spec, "client": "relay"})
    await stack.clear_events(http)
    signed = await loadgen(
        {
            "mode": "signed",
            "url": url,
            "concurrency": CONCURRENCY,
            "count": count,
            "events": [e["event"] for e in events],
            "secret": stack.secret,
            "run": rep,
        }
    )
    await stack.clear_events(http)
    run.raw_rate = raw["rps"]
    run.raw_client_us = raw["cpu_us_per_req"]
    run.signed_rate = signed["rps"]
    run.relay_client_rate = own["rps"]
    run.relay_client_us = own["cpu_us_per_req"]
    run.floor_us = signed["cpu_us_per_req"]
