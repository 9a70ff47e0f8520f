"""Scenario 4: time to notify.

100 videos (one watch each, thresholds spread over 0-100) with RELAY_POLL_INTERVAL=1
complete at random moments over SPREAD seconds. For each: from the simulator's switch to
``completed`` (its ``at``) to the receiver's 2xx (its record of the event). Every event is
checked like the fan-out's.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import aiohttp
from common import Checks, percentile
from stack import Stack
from tools import create_videos, register, sim_clips, switch_status
from verify import verify_attempt_log, verify_events

VIDEOS = 100
SPREAD = 8.0
WORKER_ENV = {"RELAY_POLL_INTERVAL": "1"}


@dataclass
class NotifyRun:
    """Latencies (s) of one run."""

    p50: float
    p99: float
    latencies: list[float] = field(default_factory=list)


async def run_once(
    stack: Stack, http: aiohttp.ClientSession, rep: int, checks: Checks
) -> NotifyRun:
    """One run: register, let polling settle, switch at random moments, wait, measure."""
    videos = await create_videos(http, stack.sim, f"ntf{rep}", VIDEOS)
    bodies = [
        {
            "videoId": vid,
            "callbackUrl": f"{stack.receiver}/hooks/notify",
            "minScore": round(k * 100 / (VIDEOS - 1), 2),
            "secret": stack.secret,
            "metadata": {"bench": "notify", "k": k},
        }
        for k, vid in enumerate(videos)
    ]
    watches = await register(http, stack.api, stack.auth, bodies)
    await asyncio.sleep(2.5)  # every video polled (processing) a couple of times
    await stack.clear_events(http)
    rng = random.Random(rep)
    switched: dict[str, float] = {}

    async def complete_later(vid: str) -> None:
        await asyncio.sleep(rng.uniform(0, SPREAD))
        switched[vid] = await switch_status(http, stack.sim, vid)

    await asyncio.gather(*(complete_later(v) for v in videos))
    arrived = await stack.wait_events(http, VIDEOS, within=60)
    checks.expect(arrived, f"notify run {rep}: not every event arrived within 60 s")
    events = (await stack.events(http))["events"]
    clips = {v: await sim_clips(http, stack.sim, v) for v in videos}
    expect = {w["id"]: (w["minScore"], clips[w["videoId"]]) for w in watches}
    verify_events(events, expect, checks, f"notify run {rep}")
    await verify_attempt_log(stack, list(expect), checks, f"notify run {rep}")
    video_of = {w["id"]: w["videoId"] for w in watches}
    first: dict[str, float] = {}
    for e in events:
        wid = e["event"]["data"]["watchId"]
        first[wid] = min(first.get(wid, e["receivedAt"]), e["receivedAt"])
    latencies = [t - switched[video_of[wid]] for wid, t in first.items() if wid in video_of]
    await stack.clear_events(http)
    return NotifyRun(percentile(latencies, 50), percentile(latencies, 99), latencies)
