"""Tests of the ScaleReach API simulator, over real HTTP on loopback with a controlled clock."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.devtools.upstream_sim import STATE, create_app, main

KEY = "sr_live_" + "ab" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
T0 = 1_800_000_000.0

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sim(aiohttp_client: Any, clock: Clock) -> Client:
    client: Client = await aiohttp_client(create_app(KEY, clock=clock))
    return client


async def make_video(sim: Client, **body: Any) -> str:
    resp = await sim.post("/_sim/videos", json=body)
    assert resp.status == 201, await resp.text()
    vid: str = (await resp.json())["id"]
    return vid


async def get_status(sim: Client, vid: str) -> dict[str, Any]:
    resp = await sim.get(f"/api/videos/{vid}/status", headers=AUTH)
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def get_clips(sim: Client, vid: str, **params: str) -> dict[str, Any]:
    resp = await sim.get(f"/api/videos/{vid}/clips", headers=AUTH, params=params)
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def add_fault(sim: Client, **body: Any) -> str:
    resp = await sim.post("/_sim/faults", json=body)
    assert resp.status == 201, await resp.text()
    fid: str = (await resp.json())["id"]
    return fid


TIMELINE = [
    {"status": "downloading", "progress": 10, "after": 0.0},
    {"status": "analyzing", "progress": 70, "after": 1.5},
    {"status": "completed", "progress": 100, "after": 3.0},
]


# --- auth and 404 ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
        {"Authorization": f"Bearer {KEY}x"},
    ],
)
@pytest.mark.parametrize("path", ["status", "clips"])
async def test_auth_rejected(sim: Client, headers: dict[str, str], path: str) -> None:
    vid = await make_video(sim)
    resp = await sim.get(f"/api/videos/{vid}/{path}", headers=headers)
    assert resp.status == 401
    assert await resp.json() == {"error": "Unauthorized"}


async def test_auth_accepted_case_insensitive_scheme(sim: Client) -> None:
    vid = await make_video(sim)
    resp = await sim.get(f"/api/videos/{vid}/status", headers={"Authorization": f"bearer {KEY}"})
    assert resp.status == 200


@pytest.mark.parametrize("path", ["status", "clips"])
async def test_unknown_video_404(sim: Client, path: str) -> None:
    resp = await sim.get(f"/api/videos/nope/{path}", headers=AUTH)
    assert resp.status == 404
    assert await resp.json() == {"error": "Video not found"}


# --- status ------------------------------------------------------------------------------------
async def test_status_timeline_progression(sim: Client, clock: Clock) -> None:
    vid = await make_video(sim, id="UThwmCZb75JYZi4UP9rOX", timeline=TIMELINE, title="Keynote")
    body = await get_status(sim, vid)
    video, job = body["video"], body["job"]
    assert video["id"] == vid
    assert video["status"] == "downloading"
    assert video["title"] == "Keynote"
    assert video["duration"] == 1834
    assert video["errorMessage"] is None
    for extra in ("transcript", "expiresAt", "workspaceId", "createdAt"):
        assert extra in video
    assert video["transcript"] is None
    assert job["id"] == f"video-{vid}"
    assert job["state"] == "active"
    assert job["progress"] == 10
    assert job["data"]["videoId"] == vid
    assert job["failedReason"] is None
    assert job["processedOn"] == int(T0 * 1000)
    assert job["finishedOn"] is None

    clock.advance(1.49)
    assert (await get_status(sim, vid))["video"]["status"] == "downloading"
    clock.advance(0.01)
    body = await get_status(sim, vid)
    assert body["video"]["status"] == "analyzing"
    assert body["job"]["progress"] == 70

    clock.advance(1.5)
    body = await get_status(sim, vid)
    assert body["video"]["status"] == "completed"
    assert body["video"]["transcript"]
    assert body["job"]["state"] == "completed"
    assert body["job"]["progress"] == 100
    assert body["job"]["finishedOn"] == int((T0 + 3.0) * 1000)


async def test_status_waiting_and_unknown_statuses(sim: Client, clock: Clock) -> None:
    vid = await make_video(
        sim,
        timeline=[
            {"status": "pending_config", "after": 0},
            {"status": "thinking", "progress": 42, "after": 5},
        ],
    )
    body = await get_status(sim, vid)
    assert body["video"]["status"] == "pending_config"
    assert body["job"]["state"] == "waiting"
    assert body["job"]["progress"] == 0
    assert body["job"]["processedOn"] is None
    clock.advance(5)
    body = await get_status(sim, vid)
    assert body["video"]["status"] == "thinking"
    assert body["job"]["state"] == "active"
    assert body["job"]["progress"] == 42


async def test_status_before_first_step_is_pending(sim: Client, clock: Clock) -> None:
    vid = await make_video(sim, timeline=[{"status": "downloading", "after": 2}])
    body = await get_status(sim, vid)
    assert body["video"]["status"] == "pending"
    assert body["job"]["state"] == "waiting"


@pytest.mark.parametrize("final", ["failed", "error", "expired"])
async def test_status_failed_sets_error_message(sim: Client, clock: Clock, final: str) -> None:
    default = await make_video(sim, timeline=[{"status": final, "after": 1}])
    custom = await make_video(
        sim, timeline=[{"status": final, "after": 1}], errorMessage="download blocked"
    )
    assert (await get_status(sim, default))["video"]["errorMessage"] is None
    clock.advance(1)
    body = await get_status(sim, default)
    assert body["video"]["status"] == final
    assert body["video"]["errorMessage"] == "processing failed"
    assert body["job"]["state"] == "failed"
    assert body["job"]["failedReason"] == "processing failed"
    body = await get_status(sim, custom)
    assert body["video"]["errorMessage"] == "download blocked"


async def test_job_null_after_retention(sim: Client, clock: Clock) -> None:
    vid = await make_video(sim, timeline=TIMELINE, jobRetention=10)
    default = await make_video(sim)  # completed at creation, retention 24 h
    clock.advance(3 + 9.9)
    assert (await get_status(sim, vid))["job"] is not None
    clock.advance(0.1)
    body = await get_status(sim, vid)
    assert body["job"] is None
    assert body["video"]["status"] == "completed"
    assert (await get_status(sim, default))["job"] is not None
    clock.advance(86400 - 13)
    assert (await get_status(sim, default))["job"] is None


async def test_job_retention_not_reset_by_later_final_status(sim: Client, clock: Clock) -> None:
    vid = await make_video(
        sim,
        timeline=[{"status": "completed", "after": 0}, {"status": "expired", "after": 5}],
        jobRetention=8,
    )
    clock.advance(7)
    body = await get_status(sim, vid)
    assert body["video"]["status"] == "expired"
    assert body["job"]["finishedOn"] == int(T0 * 1000)
    clock.advance(1)
    assert (await get_status(sim, vid))["job"] is None


# --- clips ---------------------------------------------------------------------------------------
CLIP_FIELDS = {
    "id",
    "title",
    "startTime",
    "endTime",
    "duration",
    "score",
    "viralityReason",
    "transcript",
    "downloadUrl",
    "thumbnailUrl",
    "status",
    "aspectRatio",
    "favorited",
    "hooks",
    "emotions",
}


async def test_default_clips(sim: Client) -> None:
    vid = await make_video(sim)
    assert (await get_status(sim, vid))["video"]["status"] == "completed"
    body = await get_clips(sim, vid)
    assert body["videoId"] == vid
    assert body["count"] == 8
    assert body["filters"] == {"sortBy": "score", "sortOrder": "desc"}
    clips = body["clips"]
    assert len(clips) == 8
    assert [c["score"] for c in clips] == [95, 83, 71, 59, 46, 34, 22, 10]
    for c in clips:
        assert set(c) == CLIP_FIELDS
        assert c["status"] == "completed"
        assert c["downloadUrl"].startswith(f"{sim.make_url('/cdn/clips/')}{c['id']}.mp4?")
        assert c["thumbnailUrl"].startswith(f"{sim.make_url('/cdn/thumbs/')}{c['id']}.jpg?")
        assert c["endTime"] - c["startTime"] == c["duration"]
        assert c["aspectRatio"] in ("9:16", "16:9", "1:1")
    assert len({c["id"] for c in clips}) == 8
    assert {type(c["hooks"]) for c in clips} == {dict, list}


SPEC_CLIPS = [
    {"id": "c1", "score": 92, "duration": 57, "favorited": True},
    {"id": "c2", "score": 40, "duration": 20},
    {"id": "c3", "score": 75, "duration": 90, "favorited": True},
    {"id": "c4", "score": 60, "duration": 30, "finalStatus": "failed"},
    {"id": "c5", "score": 85, "duration": 45, "renderAfter": 100},
]


@pytest.mark.parametrize(
    ("params", "ids", "echo"),
    [
        ({}, ["c1", "c5", "c3", "c4", "c2"], {}),
        ({"minScore": "75"}, ["c1", "c5", "c3"], {"minScore": 75}),
        ({"maxScore": "60.5"}, ["c4", "c2"], {"maxScore": 60.5}),
        ({"minScore": "50", "maxScore": "80"}, ["c3", "c4"], {"minScore": 50, "maxScore": 80}),
        ({"status": "completed"}, ["c1", "c3", "c2"], {"status": "completed"}),
        ({"status": "failed"}, ["c4"], {"status": "failed"}),
        ({"status": "detected"}, ["c5"], {"status": "detected"}),
        ({"status": "generating"}, [], {"status": "generating"}),
        ({"favorited": "true"}, ["c1", "c3"], {"favorited": True}),
        ({"favorited": "false"}, ["c5", "c4", "c2"], {"favorited": False}),
        ({"sortOrder": "asc"}, ["c2", "c4", "c3", "c5", "c1"], {}),
        ({"sortBy": "duration"}, ["c3", "c1", "c5", "c4", "c2"], {}),
        ({"sortBy": "duration", "sortOrder": "asc"}, ["c2", "c4", "c5", "c1", "c3"], {}),
        (
            {"minScore": "50", "favorited": "true", "sortBy": "duration", "sortOrder": "asc"},
            ["c1", "c3"],
            {"minScore": 50, "favorited": True},
        ),
    ],
)
async def test_clip_filters_and_sort(
    sim: Client, params: dict[str, str], ids: list[str], echo: dict[str, Any]
) -> None:
    vid = await make_video(sim, clips=SPEC_CLIPS)
    body = await get_clips(sim, vid, **params)
    assert [c["id"] for c in body["clips"]] == ids
    assert body["count"] == 5  # all clips of the video, whatever the filter
    expected = {
        "sortBy": params.get("sortBy", "score"),
        "sortOrder": params.get("sortOrder", "desc"),
    }
    assert body["filters"] == {**echo, **expected}


@pytest.mark.parametrize(
    "params",
    [
        {"minScore": "abc"},
        {"minScore": "101"},
        {"maxScore": "-1"},
        {"maxScore": "nan"},
        {"minScore": "80", "maxScore": "20"},
        {"status": "done"},
        {"favorited": "yes"},
        {"sortBy": "title"},
        {"sortOrder": "up"},
    ],
)
async def test_clip_bad_query_400(sim: Client, params: dict[str, str]) -> None:
    vid = await make_video(sim)
    resp = await sim.get(f"/api/videos/{vid}/clips", headers=AUTH, params=params)
    assert resp.status == 400
    body = await resp.json()
    assert isinstance(body["error"], str)
    assert body["error"]


async def test_count_override(sim: Client) -> None:
    vid = await make_video(sim, clips=SPEC_CLIPS[:2], count=8)
    body = await get_clips(sim, vid)
    assert len(body["clips"]) == 2
    assert body["count"] == 8
    body = await get_clips(sim, vid, minScore="90")
    assert len(body["clips"]) == 1
    assert body["count"] == 8


async def test_no_clips_before_completed(sim: Client, clock: Clock) -> None:
    vid = await make_video(sim, timeline=TIMELINE)
    body = await get_clips(sim, vid)
    assert body == {
        "videoId": vid,
        "clips": [],
        "count": 0,
        "filters": {"sortBy": "score", "sortOrder": "desc"},
    }
    clock.advance(3)
    assert len((await get_clips(sim, vid))["clips"]) == 8


async def test_render_lag(sim: Client, clock: Clock) -> None:
    vid = await make_video(
        sim,
        timeline=[{"status": "analyzing", "after": 0}, {"status": "completed", "after": 2}],
        clips=[
            {"id": "plain", "score": 90, "renderAfter": 10},
            {"id": "ready", "score": 80, "renderAfter": 10, "finalStatus": "ready"},
            {"id": "exported", "score": 70, "renderAfter": 20, "finalStatus": "exported"},
            {"id": "broken", "score": 60, "renderAfter": 10, "finalStatus": "failed"},
            {"id": "nothumb", "score": 50, "thumbnailUrl": None},
            {"id": "nofile", "score": 40, "downloadUrl": None},
        ],
    )

    async def view() -> dict[str, dict[str, Any]]:
        return {c["id"]: c for c in (await get_clips(sim, vid))["clips"]}

    clock.advance(2)  # the video just turned completed
    assert (await get_status(sim, vid))["video"]["status"] == "completed"
    clips = await view()
    for cid in ("plain", "ready", "exported", "broken"):
        assert clips[cid]["status"] == "detected"
        assert clips[cid]["downloadUrl"] is None
        assert clips[cid]["thumbnailUrl"] is None
    assert clips["nothumb"]["status"] == "completed"
    assert clips["nothumb"]["downloadUrl"] is not None
    assert clips["nothumb"]["thumbnailUrl"] is None
    assert clips["nofile"]["status"] == "completed"
    assert clips["nofile"]["downloadUrl"] is None

    clock.advance(5)
    clips = await view()
    assert clips["plain"]["status"] == "generating"
    assert clips["plain"]["downloadUrl"] is None
    assert clips["exported"]["status"] == "detected"

    clock.advance(5)  # 10 s after completed
    clips = await view()
    assert clips["plain"]["status"] == "completed"
    assert "/cdn/clips/plain.mp4?" in clips["plain"]["downloadUrl"]
    assert "/cdn/thumbs/plain.jpg?" in clips["plain"]["thumbnailUrl"]
    assert clips["ready"]["status"] == "ready"
    assert clips["ready"]["downloadUrl"] is not None
    assert clips["broken"]["status"] == "failed"
    assert clips["broken"]["downloadUrl"] is None
    assert clips["broken"]["thumbnailUrl"] is None
    assert clips["exported"]["status"] == "generating"
    assert clips["exported"]["downloadUrl"] is None

    clock.advance(10)
    clips = await view()
    assert clips["exported"]["status"] == "exported"
    assert clips["exported"]["downloadUrl"] is not None


async def test_clip_spec_overrides_and_passthrough(sim: Client) -> None:
    hooks_obj = {"question": "What saved Apple?", "statement": "This decision saved Apple"}
    emotions_obj = {"joy": 0.8, "surprise": 0.3}
    hooks_list = ["hook one", "hook two"]
    emotions_list = ["joy", "awe"]
    vid = await make_video(
        sim,
        clips=[
            {
                "id": "clip_abc123",
                "title": "The moment Steve Jobs changed everything",
                "startTime": 245,
                "endTime": 302,
                "score": 92,
                "viralityReason": "Strong emotional hook",
                "transcript": "And that's when I realized...",
                "aspectRatio": "16:9",
                "hooks": hooks_obj,
                "emotions": emotions_obj,
                "extraField": {"kept": True},
            },
            {"id": "clip_list", "score": 50, "hooks": hooks_list, "emotions": emotions_list},
            {"id": "clip_empty", "score": 30, "hooks": [], "emotions": None},
        ],
    )
    clips = {c["id"]: c for c in (await get_clips(sim, vid))["clips"]}
    first = clips["clip_abc123"]
    assert first["title"] == "The moment Steve Jobs changed everything"
    assert (first["startTime"], first["endTime"], first["duration"]) == (245, 302, 57)
    assert first["aspectRatio"] == "16:9"
    assert first["hooks"] == hooks_obj
    assert first["emotions"] == emotions_obj
    assert first["extraField"] == {"kept": True}
    assert clips["clip_list"]["hooks"] == hooks_list
    assert clips["clip_list"]["emotions"] == emotions_list
    assert clips["clip_empty"]["hooks"] == []
    assert clips["clip_empty"]["emotions"] is None


# --- signed URLs ---------------------------------------------------------------------------------
async def test_signed_urls_valid_then_expired(sim: Client, clock: Clock) -> None:
    vid = await make_video(sim, clips=[{"id": "c1", "score": 90}])
    clip = (await get_clips(sim, vid))["clips"][0]
    download, thumb = clip["downloadUrl"], clip["thumbnailUrl"]
    assert f"expires={int(T0 + 3600)}" in download
    assert download.startswith(str(sim.make_url("/cdn/clips/c1.mp4")))

    session = sim.session
    async with session.get(download) as resp:
        assert resp.status == 200
        assert resp.content_type == "video/mp4"
        assert len(await resp.read()) > 0
    async with session.get(thumb) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/jpeg"

    tampered = [
        download.replace("sig=", "sig=0"),
        download.replace("c1.mp4", "c2.mp4"),
        download.replace(f"expires={int(T0 + 3600)}", f"expires={int(T0 + 7200)}"),
        download.split("?")[0],
        download.replace("/cdn/clips/", "/cdn/thumbs/"),
    ]
    for url in tampered:
        async with session.get(url) as resp:
            assert resp.status == 403, url

    clock.advance(3599)
    async with session.get(download) as resp:
        assert resp.status == 200
    clock.advance(1)
    async with session.get(download) as resp:
        assert resp.status == 403
    async with session.get(thumb) as resp:
        assert resp.status == 403

    fresh = (await get_clips(sim, vid))["clips"][0]["downloadUrl"]
    assert fresh != download
    async with session.get(fresh) as resp:
        assert resp.status == 200


async def test_url_ttl_setting(aiohttp_client: Any, clock: Clock) -> None:
    client: Client = await aiohttp_client(create_app(KEY, url_ttl=60, clock=clock))
    vid = await make_video(client, clips=[{"score": 90}])
    url = (await get_clips(client, vid))["clips"][0]["downloadUrl"]
    assert f"expires={int(T0 + 60)}" in url
    clock.advance(60)
    async with client.session.get(url) as resp:
        assert resp.status == 403


async def test_cdn_unknown_kind_404(sim: Client) -> None:
    resp = await sim.get("/cdn/videos/x.mp4?expires=1&sig=00")
    assert resp.status == 404


# --- faults -------------------------------------------------------------------------------------
async def test_fault_429(sim: Client, clock: Clock) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="429", retryAfter=2.5)
    resp = await sim.get(f"/api/videos/{vid}/status", headers=AUTH)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3"
    assert resp.headers["X-RateLimit-Limit"] == "100"
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert resp.headers["X-RateLimit-Reset"] == str(int(T0 + 3))
    body = await resp.json()
    assert body["error"] == "Too Many Requests"
    assert body["retryAfter"] == 3
    assert isinstance(body["message"], str)
    # consumed: the next request is answered normally
    assert (await sim.get(f"/api/videos/{vid}/status", headers=AUTH)).status == 200


async def test_fault_429_default_retry_after(sim: Client) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind=429)
    resp = await sim.get(f"/api/videos/{vid}/clips", headers=AUTH)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("401", "Unauthorized"),
        ("402", None),
        ("403", "Forbidden"),
        ("404", "Video not found"),
        ("500", "Internal Server Error"),
        ("503", "Service Unavailable"),
    ],
)
async def test_fault_error_codes(sim: Client, kind: str, error: str | None) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind=kind)
    resp = await sim.get(f"/api/videos/{vid}/status", headers=AUTH)
    assert resp.status == int(kind)
    body = await resp.json()
    if error is not None:
        assert body == {"error": error}
    else:
        assert body["error"]
    assert "Retry-After" not in resp.headers


async def test_fault_502_is_html(sim: Client) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="502")
    resp = await sim.get(f"/api/videos/{vid}/status", headers=AUTH)
    assert resp.status == 502
    assert resp.content_type == "text/html"
    assert "Bad Gateway" in await resp.text()


async def test_fault_503_retry_after(sim: Client) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="503", retryAfter=4)
    resp = await sim.get(f"/api/videos/{vid}/status", headers=AUTH)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "4"


async def test_fault_slow(sim: Client) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="slow", delay=0.3)
    started = time.monotonic()
    resp = await sim.get(f"/api/videos/{vid}/status", headers=AUTH)
    assert resp.status == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert (await sim.get(f"/api/videos/{vid}/status", headers=AUTH)).status == 200
    assert time.monotonic() - started < 0.3


async def test_fault_slow_times_out_client(sim: Client) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="slow", delay=2)
    with pytest.raises(asyncio.TimeoutError):
        await sim.get(
            f"/api/videos/{vid}/status",
            headers=AUTH,
            timeout=aiohttp.ClientTimeout(total=0.2),
        )


async def test_fault_reset_client_sees_disconnect(sim: Client) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="reset")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sim.get(f"/api/videos/{vid}/status", headers=AUTH)
    assert (await sim.get(f"/api/videos/{vid}/status", headers=AUTH)).status == 200
    stats = await (await sim.get("/_sim/stats")).json()
    assert [e[3] for e in stats["log"]] == [0, 200]


async def test_fault_reset_plain_session_retries_once(sim: Client) -> None:
    """A plain aiohttp ClientSession retries a GET once after a disconnect (the test
    client does not): one reset is invisible to it, two surface as an error."""
    vid = await make_video(sim)
    url = sim.make_url(f"/api/videos/{vid}/status")
    async with aiohttp.ClientSession() as session:
        await add_fault(sim, kind="reset")
        async with session.get(url, headers=AUTH) as resp:
            assert resp.status == 200
        await add_fault(sim, kind="reset", times=2)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.get(url, headers=AUTH)
    stats = await (await sim.get("/_sim/stats")).json()
    assert [e[3] for e in stats["log"]] == [0, 200, 0, 0]


async def test_fault_reset_raw_connection_gets_no_answer(sim: Client) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="reset")
    assert sim.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    request = (
        f"GET /api/videos/{vid}/status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {KEY}\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_fault_malformed(sim: Client) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="malformed", path="clips")
    assert (await sim.get(f"/api/videos/{vid}/status", headers=AUTH)).status == 200
    resp = await sim.get(f"/api/videos/{vid}/clips", headers=AUTH)
    assert resp.status == 200
    raw = await resp.read()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)


async def test_fault_times_and_until_cleared(sim: Client) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="500", times=2)
    statuses = [(await sim.get(f"/api/videos/{vid}/status", headers=AUTH)).status for _ in "abc"]
    assert statuses == [500, 500, 200]

    await add_fault(sim, kind="503", times=-1)
    for _ in range(5):
        assert (await sim.get(f"/api/videos/{vid}/clips", headers=AUTH)).status == 503
    resp = await sim.delete("/_sim/faults")
    assert resp.status == 204
    assert (await sim.get(f"/api/videos/{vid}/clips", headers=AUTH)).status == 200


async def test_fault_scoping_by_video_and_path(sim: Client) -> None:
    a = await make_video(sim)
    b = await make_video(sim)
    await add_fault(sim, kind="500", videoId=b, path="clips")
    assert (await sim.get(f"/api/videos/{a}/clips", headers=AUTH)).status == 200
    assert (await sim.get(f"/api/videos/{b}/status", headers=AUTH)).status == 200
    assert (await sim.get(f"/api/videos/{b}/clips", headers=AUTH)).status == 500
    assert (await sim.get(f"/api/videos/{b}/clips", headers=AUTH)).status == 200


async def test_faults_first_match_wins(sim: Client) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="502", path="status")
    await add_fault(sim, kind="503")
    assert (await sim.get(f"/api/videos/{vid}/clips", headers=AUTH)).status == 503
    assert (await sim.get(f"/api/videos/{vid}/status", headers=AUTH)).status == 502
    assert (await sim.get(f"/api/videos/{vid}/status", headers=AUTH)).status == 200


async def test_fault_applies_before_auth(sim: Client) -> None:
    await add_fault(sim, kind="429")
    assert (await sim.get("/api/videos/whatever/status")).status == 429
    assert (await sim.get("/api/videos/whatever/status")).status == 401


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"kind": "418"},
        {"kind": "500", "path": "cdn"},
        {"kind": "500", "times": 0},
        {"kind": "500", "times": "1"},
        {"kind": "slow", "delay": -1},
        {"kind": "429", "retryAfter": "soon"},
    ],
)
async def test_fault_bad_body_400(sim: Client, body: dict[str, Any]) -> None:
    resp = await sim.post("/_sim/faults", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]


# --- control API --------------------------------------------------------------------------------
async def test_generated_id_shape(sim: Client) -> None:
    vid = await make_video(sim)
    assert len(vid) == 21
    assert all(ch.isalnum() or ch in "_-" for ch in vid)


async def test_duplicate_id_409(sim: Client) -> None:
    await make_video(sim, id="dup")
    resp = await sim.post("/_sim/videos", json={"id": "dup"})
    assert resp.status == 409


@pytest.mark.parametrize(
    "body",
    [
        {"id": "has space"},
        {"id": 5},
        {"timeline": []},
        {"timeline": [{"progress": 5}]},
        {"timeline": [{"status": "x", "after": -1}]},
        {"timeline": [{"status": "x", "progress": 101}]},
        {"clips": {"id": "x"}},
        {"clips": [{"score": "high"}]},
        {"clips": [{"renderAfter": -1}]},
        {"count": -1},
        {"jobRetention": "long"},
        {"unknownField": 1},
    ],
)
async def test_create_video_bad_body_400(sim: Client, body: dict[str, Any]) -> None:
    resp = await sim.post("/_sim/videos", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]


async def test_create_video_invalid_json_400(sim: Client) -> None:
    resp = await sim.post("/_sim/videos", data=b"{not json", headers={"Content-Type": "x"})
    assert resp.status == 400


async def test_bulk_create(sim: Client, clock: Clock) -> None:
    started = time.monotonic()
    resp = await sim.post(
        "/_sim/videos/bulk",
        json={"count": 10_000, "prefix": "bv", "template": {"timeline": TIMELINE}},
    )
    elapsed = time.monotonic() - started
    assert resp.status == 201
    ids = (await resp.json())["ids"]
    assert len(ids) == 10_000
    assert ids[0] == "bv-000000"
    assert ids[-1] == "bv-009999"
    assert elapsed < 5, elapsed
    assert (await get_status(sim, "bv-004242"))["video"]["status"] == "downloading"
    clock.advance(3)
    assert (await get_status(sim, "bv-004242"))["video"]["status"] == "completed"
    a = (await get_clips(sim, "bv-000001"))["clips"]
    b = (await get_clips(sim, "bv-000002"))["clips"]
    assert len(a) == len(b) == 8
    assert not {c["id"] for c in a} & {c["id"] for c in b}
    # ids taken: refused as a whole
    resp = await sim.post("/_sim/videos/bulk", json={"count": 2, "prefix": "bv"})
    assert resp.status == 409


@pytest.mark.parametrize(
    "body",
    [{}, {"count": 0}, {"count": "5"}, {"count": 2, "template": []}, {"count": 2, "prefix": "a b"}],
)
async def test_bulk_bad_body_400(sim: Client, body: dict[str, Any]) -> None:
    resp = await sim.post("/_sim/videos/bulk", json=body)
    assert resp.status == 400


async def test_status_switch(sim: Client, clock: Clock) -> None:
    vid = await make_video(
        sim,
        timeline=[
            {"status": "analyzing", "progress": 30, "after": 0},
            {"status": "completed", "after": 100},
        ],
    )
    clock.advance(7.25)
    resp = await sim.post(f"/_sim/videos/{vid}/status", json={"status": "generating_clips"})
    assert resp.status == 200
    body = await resp.json()
    assert body["at"] == T0 + 7.25
    assert body["status"] == "generating_clips"
    assert body["progress"] == 30  # unchanged when not given
    status = await get_status(sim, vid)
    assert status["video"]["status"] == "generating_clips"
    assert status["job"]["progress"] == 30

    # the switch overrides the rest of the timeline
    clock.advance(200)
    assert (await get_status(sim, vid))["video"]["status"] == "generating_clips"
    assert (await get_clips(sim, vid))["clips"] == []

    resp = await sim.post(f"/_sim/videos/{vid}/status", json={"status": "completed"})
    assert (await resp.json())["progress"] == 100
    status = await get_status(sim, vid)
    assert status["video"]["status"] == "completed"
    assert status["job"]["finishedOn"] == int(clock.now * 1000)
    assert len((await get_clips(sim, vid))["clips"]) == 8


async def test_status_switch_errors(sim: Client) -> None:
    resp = await sim.post("/_sim/videos/nope/status", json={"status": "completed"})
    assert resp.status == 404
    vid = await make_video(sim)
    resp = await sim.post(f"/_sim/videos/{vid}/status", json={})
    assert resp.status == 400
    resp = await sim.post(f"/_sim/videos/{vid}/status", json={"status": "x", "progress": 500})
    assert resp.status == 400
    # a typo is refused, not dropped (a new user's finding: 200, and the field ignored)
    resp = await sim.post(f"/_sim/videos/{vid}/status", json={"status": "failed", "typo": 1})
    assert resp.status == 400 and "unknown fields: typo" in (await resp.json())["error"]


async def test_status_switch_to_failed_says_the_error_given(sim: Client) -> None:
    vid = await make_video(sim)
    resp = await sim.post(
        f"/_sim/videos/{vid}/status", json={"status": "failed", "errorMessage": "boom"}
    )
    assert resp.status == 200
    assert (await get_status(sim, vid))["video"]["errorMessage"] == "boom"
    bad = {"status": "failed", "errorMessage": "other", "progress": 500}
    assert (await sim.post(f"/_sim/videos/{vid}/status", json=bad)).status == 400
    assert (await get_status(sim, vid))["video"]["errorMessage"] == "boom"  # (refused: unchanged)


async def test_get_video_internal_state(sim: Client, clock: Clock) -> None:
    vid = await make_video(sim, timeline=TIMELINE, clips=[{"id": "c", "renderAfter": 4}])
    resp = await sim.get(f"/_sim/videos/{vid}")
    assert resp.status == 200
    state = await resp.json()
    assert state["id"] == vid
    assert state["status"] == "downloading"
    assert state["createdAt"] == T0
    assert [s["at"] for s in state["timeline"]] == [T0, T0 + 1.5, T0 + 3.0]
    assert state["completedAt"] is None
    assert state["clips"][0]["status"] is None
    clock.advance(5)
    state = await (await sim.get(f"/_sim/videos/{vid}")).json()
    assert state["completedAt"] == T0 + 3
    assert state["clips"][0]["status"] == "generating"
    assert (await sim.get("/_sim/videos/nope")).status == 404


async def test_stats(sim: Client, clock: Clock) -> None:
    a = await make_video(sim)
    b = await make_video(sim)
    await get_status(sim, a)
    await get_status(sim, a)
    clock.advance(10)
    await get_clips(sim, a)
    await get_status(sim, b)
    await sim.get(f"/api/videos/{b}/clips")  # 401, counted too
    await sim.get("/api/videos/missing/status", headers=AUTH)  # 404
    stats = await (await sim.get("/_sim/stats")).json()
    assert stats["requests"] == 6
    assert stats["byVideo"][a] == {"status": 2, "clips": 1}
    assert stats["byVideo"][b] == {"status": 1, "clips": 1}
    assert stats["byVideo"]["missing"] == {"status": 1, "clips": 0}
    assert stats["log"][0] == [T0, "status", a, 200]
    assert [e[3] for e in stats["log"]] == [200, 200, 200, 200, 401, 404]
    recent = await (await sim.get("/_sim/stats", params={"since": str(T0 + 10)})).json()
    assert recent["requests"] == 6
    assert len(recent["log"]) == 4
    assert (await sim.get("/_sim/stats", params={"since": "x"})).status == 400


async def test_stats_log_is_bounded(sim: Client) -> None:
    assert sim.app[STATE].stats.log.maxlen == 100_000


async def test_reset(sim: Client) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="500", times=-1)
    await sim.get(f"/api/videos/{vid}/status", headers=AUTH)
    resp = await sim.post("/_sim/reset")
    assert resp.status == 204
    stats = await (await sim.get("/_sim/stats")).json()
    assert stats["requests"] == 0
    assert stats["byVideo"] == {}
    assert stats["log"] == []
    # no video, no fault left
    assert (await sim.get(f"/api/videos/{vid}/status", headers=AUTH)).status == 404


# --- entry points -------------------------------------------------------------------------------
def test_create_app_needs_key() -> None:
    with pytest.raises(ValueError, match="api_key"):
        create_app("")


def test_main_requires_api_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SCALEREACH_API_KEY", raising=False)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "API key" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_main_serves(tmp_path: Path) -> None:
    port = _free_port()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "SCALEREACH_API_KEY": KEY, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.devtools.upstream_sim", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.strip() == f"upstream-sim listening on http://127.0.0.1:{port}"
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/_sim/videos", json={"id": "v1"}) as resp:
                assert resp.status == 201
            async with session.get(f"{base}/api/videos/v1/clips", headers=AUTH) as resp:
                assert resp.status == 200
                url = (await resp.json())["clips"][0]["downloadUrl"]
            assert url.startswith(f"{base}/cdn/clips/")
            async with session.get(url) as resp:
                assert resp.status == 200
    finally:
        proc.terminate()
        proc.wait(10)
