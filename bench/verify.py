"""Correctness checks shared by the scenarios: what the receiver got, what the relay recorded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from common import Checks
from stack import Stack

Clip = dict[str, Any]


def expected_ids(clips: list[Clip], min_score: float) -> list[str]:
    """Ids of the clips a watch with *min_score* must get (all simulated clips render)."""
    return sorted(c["id"] for c in clips if c["score"] >= min_score)


def verify_events(
    events: list[dict[str, Any]],
    expect: dict[str, tuple[float, list[Clip]]],
    checks: Checks,
    label: str,
) -> None:
    """Each watch of *expect* (watch id -> (minScore, its video's clips)) got exactly one
    verified ``clips.ready``, answered 204, with exactly the clips scoring >= minScore,
    in descending score order, each with a download URL, and ``count`` right."""
    by_watch: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_watch.setdefault(e["event"]["data"]["watchId"], []).append(e)
    checks.expect(
        set(by_watch) == set(expect),
        f"{label}: events for {len(by_watch)} watches, expected {len(expect)}"
        f" ({len(set(expect) - set(by_watch))} missing)",
    )
    wrong = 0
    for wid, got in by_watch.items():
        if wid not in expect:
            continue
        min_score, clips = expect[wid]
        event = got[0]["event"]
        data = event["data"]
        ids = [c["id"] for c in data["clips"]]
        scores = [c["score"] for c in data["clips"]]
        ok = (
            event["type"] == "clips.ready"
            and data["minScore"] == min_score
            and sorted(ids) == expected_ids(clips, min_score)
            and scores == sorted(scores, reverse=True)
            and data["count"] == len(ids)
            and all(c.get("downloadUrl") for c in data["clips"])
            and got[0]["status"] == 204
        )
        wrong += not ok
    checks.expect(wrong == 0, f"{label}: {wrong} watches got a wrong event")
    dupes = len(events) - len(by_watch)
    checks.expect(dupes == 0, f"{label}: {dupes} duplicate deliveries")


async def wait_delivered(stack: Stack, watch_ids: list[str], within: float) -> tuple[bool, int]:
    """Wait until every watch is ``delivered`` (its attempt recorded). Returns whether
    they all are, and how many times the statuses were read (one HGET per watch each)."""
    redis = stack.redis_client()
    polls = 0
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            pipe = redis.pipeline(transaction=False)
            for wid in watch_ids:
                pipe.hget(f"cr:w:{wid}", "st")  # status|attempt|... (relay.store.codec)
            polls += 1
            if all(s and s.startswith("delivered|") for s in await pipe.execute()):
                return True, polls
            await asyncio.sleep(0.1)
        return False, polls
    finally:
        await redis.aclose()


async def verify_attempt_log(
    stack: Stack, watch_ids: list[str], checks: Checks, label: str
) -> None:
    """Every watch is ``delivered`` with exactly one recorded attempt, a 204."""
    await wait_delivered(stack, watch_ids, within=30)
    redis = stack.redis_client()
    try:
        pipe = redis.pipeline(transaction=False)
        for wid in watch_ids:
            pipe.hmget(f"cr:w:{wid}", ["st", "#1"])
        rows = await pipe.execute()
    finally:
        await redis.aclose()
    bad = 0
    for st, first in rows:
        # st is status|attempt|records|... (relay.store.codec); an attempt record is
        # [attempt, at ms, status code, ...] (relay.domain.attempts)
        status, _, records = (st or "||").split("|")[:3]
        ok = status == "delivered" and records == "1" and orjson.loads(first)[2] == 204
        bad += not ok
    checks.expect(bad == 0, f"{label}: {bad} watches not delivered with exactly one 204 attempt")
