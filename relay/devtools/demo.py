"""``clip-relay demo``: the whole stack on loopback, one round trip, then exit.

Starts an embedded Redis-protocol server, the upstream simulator, the API, a worker and a
receiver on free ports; registers two watches with different thresholds on a simulated
video; shows the video's progress; prints both verified events; stops everything.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from relay.devtools import receiver as rcv
from relay.devtools.embedded_redis import RedisServer
from relay.devtools.stack import LocalStack, start_local_stack
from relay.domain.signing import generate_secret

DEMO_VIDEO: dict[str, Any] = {
    "title": "Keynote: the moment everything changed",
    "timeline": [
        {"status": "pending", "progress": 0, "after": 0},
        {"status": "downloading", "progress": 10, "after": 0.4},
        {"status": "transcribing", "progress": 35, "after": 1.2},
        {"status": "analyzing", "progress": 60, "after": 2.0},
        {"status": "generating_clips", "progress": 85, "after": 2.8},
        {"status": "completed", "progress": 100, "after": 3.6},
    ],
    # completed comes before the clips are rendered: two of them lag behind
    "clips": [
        {"title": "The one decision that saved the company", "score": 94, "renderAfter": 1.5},
        {"title": "Why nobody believed the prototype", "score": 88, "renderAfter": 0.5},
        {"title": "A two-minute history of the phone", "score": 81},
        {"title": "The room went silent", "score": 72, "hooks": ["Wait for it..."]},
        {"title": "Pricing, explained on a napkin", "score": 64},
        {"title": "Questions from the audience", "score": 41},
        {"title": "Thank-you slide", "score": 12},
    ],
}
THRESHOLDS = (80.0, 60.0)


def _bar(progress: float | None, width: int = 30) -> str:
    p = 0.0 if progress is None else max(0.0, min(progress, 100.0))
    filled = int(width * p / 100)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {p:5.1f}%"


async def _progress(
    http: aiohttp.ClientSession, api: str, key: str, watch_ids: list[str], within: float
) -> list[dict[str, Any]]:
    """Show the first watch's view of the video until every watch is final."""
    tty = sys.stdout.isatty()
    last = None
    deadline = time.monotonic() + within
    headers = {"Authorization": f"Bearer {key}"}
    while time.monotonic() < deadline:
        watches = []
        for wid in watch_ids:
            async with http.get(f"{api}/v1/watches/{wid}", headers=headers) as resp:
                watches.append(await resp.json())
        first = watches[0]
        line = f"video {first['videoStatus'] or 'queued':<17} {_bar(first['videoProgress'])}"
        if tty:
            print("\r" + line, end="", flush=True)
        elif line != last:
            print(line, flush=True)
        last = line
        if all(w["status"] not in ("watching", "delivering") for w in watches):
            if tty:
                print()
            return watches
        await asyncio.sleep(0.1)
    raise TimeoutError("the demo's watches did not finish in time")


async def _demo(workdir: Path) -> int:
    redis = RedisServer.start()
    stack: LocalStack | None = None
    upstream_key = "sr_live_" + secrets.token_hex(24)
    api_key = "demo_" + secrets.token_urlsafe(18)
    receiver = rcv.Receiver(printer=None)
    runner = web.AppRunner(rcv.create_app(receiver), access_log=None)
    try:
        stack = await asyncio.to_thread(
            start_local_stack,
            redis.url,
            workdir,
            api_keys=f"demo:{api_key}",
            upstream_key=upstream_key,
            extra={"RELAY_POLL_INTERVAL": "0.3", "RELAY_RETRY_SCHEDULE": "0.5,1,2"},
        )
        receiver_port = stack.ports.receiver
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", receiver_port).start()
        api, upstream_url = stack.api, stack.upstream
        print(
            f"stack up: redis :{redis.port}, upstream-sim :{stack.ports.upstream}, "
            f"api :{stack.ports.api}, worker (metrics :{stack.ports.metrics}), receiver"
            f" :{receiver_port} (their logs are shown if the demo fails)"
        )

        async with aiohttp.ClientSession() as http:
            async with http.post(f"{upstream_url}/_sim/videos", json=DEMO_VIDEO) as resp:
                video_id = (await resp.json())["id"]
            print(f"simulated video {video_id}: {len(DEMO_VIDEO['clips'])} clips")
            watch_ids = []
            for n, threshold in enumerate(THRESHOLDS):
                secret = generate_secret()
                receiver.add_secret(secret)
                body = {
                    "videoId": video_id,
                    "callbackUrl": f"http://127.0.0.1:{receiver_port}/hooks/service-{n + 1}",
                    "minScore": threshold,
                    "secret": secret,
                    "metadata": {"service": f"service-{n + 1}"},
                }
                async with http.post(
                    f"{api}/v1/watches", json=body, headers={"Authorization": f"Bearer {api_key}"}
                ) as resp:
                    if resp.status != 201:
                        print(f"registration failed: {resp.status} {await resp.text()}")
                        return 1
                    watch = await resp.json()
                watch_ids.append(watch["id"])
                print(f"watch {watch['id']}: minScore {threshold:g} -> {body['callbackUrl']}")
            watches = await _progress(http, api, api_key, watch_ids, within=60)
        await receiver.wait_for(len(watch_ids), timeout=10)
        return _report(receiver, watches)
    finally:
        await runner.cleanup()
        if stack is not None:
            stack.stop()
        redis.stop()


def _report(receiver: rcv.Receiver, watches: list[dict[str, Any]]) -> int:
    ok = True
    print()
    for ev in receiver.events:
        print(rcv.format_event(ev))
        print()
    for w, threshold in zip(watches, THRESHOLDS, strict=True):
        got = [e for e in receiver.events if e.event["data"]["watchId"] == w["id"]]
        if not got:
            print(f"MISSING: no event for watch {w['id']}")
            ok = False
            continue
        clips = got[0].event["data"]["clips"]
        expected = sorted(
            (c["score"] for c in DEMO_VIDEO["clips"] if c["score"] >= threshold), reverse=True
        )
        scores = [c["score"] for c in clips]
        verdict = "ok" if scores == expected else f"WRONG (expected {expected})"
        ok = ok and scores == expected
        print(
            f"watch {w['id']} (minScore {threshold:g}): status {w['status']}, "
            f"{len(clips)} clips, scores {scores} -> {verdict}"
        )
    print("both events verified (Standard Webhooks signatures)" if ok else "demo FAILED")
    return 0 if ok else 1


def run_demo() -> int:
    """Run the demo; the exit status says whether both events arrived right."""
    with tempfile.TemporaryDirectory(prefix="clip-relay-demo-") as tmp:
        try:
            return asyncio.run(_demo(Path(tmp)))
        except (TimeoutError, RuntimeError) as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            for log in sorted(Path(tmp).glob("*.log")):
                print(f"--- {log.name} (last lines)", file=sys.stderr)
                print(
                    "\n".join(log.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr
                )
            return 1
