"""The ScaleReach client (relay/upstream.py) against the real simulator on loopback."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from relay.constants import RETRY_AFTER_CAP
from relay.devtools.upstream_sim import STATE
from relay.http.upstream import (
    Reply,
    UpstreamClient,
    VideoStatus,
    _body_retry_after,
    parse_status,
    retry_after_seconds,
)

Sim = TestClient[web.Request, web.Application]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def upstream_key(sim: Sim) -> str:
    """The key the simulator accepts (conftest's UPSTREAM_KEY)."""
    key: str = sim.app[STATE].api_key
    return key


def base_url(sim: Sim) -> str:
    return str(sim.make_url("")).rstrip("/")


@pytest.fixture
def client(sim: Sim, session: aiohttp.ClientSession) -> UpstreamClient:
    return UpstreamClient(session, base_url(sim) + "/", upstream_key(sim), 2.0)


async def make_video(sim: Sim, **body: Any) -> str:
    resp = await sim.post("/_sim/videos", json=body)
    assert resp.status == 201, await resp.text()
    vid: str = (await resp.json())["id"]
    return vid


async def add_fault(sim: Sim, **body: Any) -> None:
    resp = await sim.post("/_sim/faults", json=body)
    assert resp.status == 201, await resp.text()


async def sim_clips(sim: Sim, vid: str) -> dict[str, Any]:
    resp = await sim.get(
        f"/api/videos/{vid}/clips", headers={"Authorization": f"Bearer {upstream_key(sim)}"}
    )
    assert resp.status == 200
    data: dict[str, Any] = await resp.json()
    return data


# --- status -------------------------------------------------------------------------------


async def test_status_in_progress(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim, timeline=[{"status": "analyzing", "progress": 70}])
    reply = await client.status(vid)
    assert reply.kind == "ok"
    assert reply.http_status == 200
    assert reply.video == VideoStatus("analyzing", 70.0, None)
    assert reply.raw  # the body is kept


async def test_status_fractional_progress(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim, timeline=[{"status": "transcribing", "progress": 33.5}])
    reply = await client.status(vid)
    assert reply.video is not None
    assert reply.video.progress == 33.5


async def test_status_completed(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim)
    reply = await client.status(vid)
    assert reply.kind == "ok"
    assert reply.video == VideoStatus("completed", 100.0, None)


async def test_status_job_null_after_retention(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim, timeline=[{"status": "completed"}], jobRetention=0)
    resp = await sim.get(
        f"/api/videos/{vid}/status", headers={"Authorization": f"Bearer {upstream_key(sim)}"}
    )
    assert (await resp.json())["job"] is None
    reply = await client.status(vid)
    assert reply.kind == "ok"
    assert reply.video == VideoStatus("completed", None, None)


async def test_status_failed_with_error_message(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(
        sim, timeline=[{"status": "failed", "progress": 40}], errorMessage="transcode exploded"
    )
    reply = await client.status(vid)
    assert reply.kind == "ok"
    assert reply.video == VideoStatus("failed", 40.0, "transcode exploded")


@pytest.mark.parametrize("status", ["frobnicating", "pending_config", "error", "expired"])
async def test_status_passes_any_status_through(
    sim: Sim, client: UpstreamClient, status: str
) -> None:
    vid = await make_video(sim, timeline=[{"status": status, "progress": 5}])
    reply = await client.status(vid)
    assert reply.kind == "ok"
    assert reply.video is not None
    assert reply.video.status == status


async def test_status_ignores_extra_fields(sim: Sim, client: UpstreamClient) -> None:
    # the simulator returns the whole row (transcript, expiresAt, workspaceId, ...) and the
    # job's data/failedReason/processedOn/finishedOn
    vid = await make_video(sim, timeline=[{"status": "generating_clips", "progress": 90}])
    reply = await client.status(vid)
    assert b"workspaceId" in reply.raw
    assert b"processedOn" in reply.raw
    assert reply.video == VideoStatus("generating_clips", 90.0, None)


async def test_status_not_found(client: UpstreamClient) -> None:
    reply = await client.status("no-such-video")
    assert reply.kind == "not_found"
    assert reply.http_status == 404
    assert reply.video is None


async def test_wrong_key_is_auth(sim: Sim, session: aiohttp.ClientSession) -> None:
    vid = await make_video(sim)
    wrong = UpstreamClient(session, base_url(sim), "sr_live_" + "00" * 24, 2.0)
    for reply in (await wrong.status(vid), await wrong.clips(vid)):
        assert reply.kind == "auth"
        assert reply.http_status == 401
        assert upstream_key(sim) not in reply.detail
        assert "00" * 24 not in reply.detail


@pytest.mark.parametrize("code", [401, 402, 403])
async def test_auth_codes(sim: Sim, client: UpstreamClient, code: int) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind=str(code), path="status")
    reply = await client.status(vid)
    assert reply.kind == "auth"
    assert reply.http_status == code
    assert upstream_key(sim) not in reply.detail
    assert (await client.status(vid)).kind == "ok"  # the fault was used once


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_server_errors(sim: Sim, client: UpstreamClient, code: int) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind=str(code), path="*", times=2)
    for reply in (await client.status(vid), await client.clips(vid)):
        assert reply.kind == "error"
        assert reply.http_status == code
        assert str(code) in reply.detail
        assert reply.video is None
        assert reply.clips == []


async def test_rate_limited_with_retry_after(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="429", path="status", retryAfter=7)
    reply = await client.status(vid)
    assert reply.kind == "rate_limited"
    assert reply.http_status == 429
    assert reply.retry_after == 7.0


async def test_rate_limited_default_retry_after(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="429", path="clips")
    reply = await client.clips(vid)
    assert reply.kind == "rate_limited"
    assert reply.retry_after == 1.0


async def test_rate_limited_retry_after_is_capped(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="429", retryAfter=10 * RETRY_AFTER_CAP)
    reply = await client.status(vid)
    assert reply.kind == "rate_limited"
    assert reply.retry_after == RETRY_AFTER_CAP


async def test_slow_answer_is_a_timeout(sim: Sim, session: aiohttp.ClientSession) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="slow", path="status", delay=1.5)
    fast = UpstreamClient(session, base_url(sim), upstream_key(sim), 0.3)
    started = time.monotonic()
    reply = await fast.status(vid)
    assert time.monotonic() - started < 1.4
    assert reply.kind == "error"
    assert reply.http_status is None
    assert reply.detail == "timeout"


async def test_slow_answer_within_timeout_is_ok(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="slow", path="status", delay=0.2)
    reply = await client.status(vid)
    assert reply.kind == "ok"


async def test_connection_reset_is_an_error(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="reset", path="*", times=4)
    for reply in (await client.status(vid), await client.clips(vid)):
        assert reply.kind == "error"
        assert reply.http_status is None
        assert reply.detail
        assert upstream_key(sim) not in reply.detail


async def test_unreachable_upstream_is_an_error(session: aiohttp.ClientSession) -> None:
    # nothing listens on port 9 of loopback
    dead = UpstreamClient(session, "http://127.0.0.1:9", "sr_live_" + "ab" * 24, 1.0)
    reply = await dead.status("v")
    assert reply.kind == "error"
    assert reply.http_status is None


@pytest.mark.parametrize("path", ["status", "clips"])
async def test_malformed_json_is_an_error(sim: Sim, client: UpstreamClient, path: str) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="malformed", path=path)
    reply = await (client.status(vid) if path == "status" else client.clips(vid))
    assert reply.kind == "error"
    assert reply.http_status == 200
    assert "malformed" in reply.detail
    assert reply.video is None
    assert reply.clips == []


async def test_faults_are_per_video(sim: Sim, client: UpstreamClient) -> None:
    bad = await make_video(sim)
    good = await make_video(sim)
    await add_fault(sim, kind="500", videoId=bad, times=-1)
    assert (await client.status(good)).kind == "ok"
    assert (await client.status(bad)).kind == "error"


# --- clips --------------------------------------------------------------------------------


async def test_clips_are_all_returned_unfiltered(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim)  # 8 default clips, scores 10..95, some favorited
    reply = await client.clips(vid)
    assert reply.kind == "ok"
    assert reply.http_status == 200
    assert len(reply.clips) == 8
    scores = sorted(c["score"] for c in reply.clips)
    assert scores[0] == 10
    assert scores[-1] == 95
    assert {c["favorited"] for c in reply.clips} == {True, False}
    assert reply.clips == (await sim_clips(sim, vid))["clips"]


async def test_clips_hooks_and_emotions_pass_through(sim: Sim, client: UpstreamClient) -> None:
    hooks_obj = {"question": "Why?", "statement": "Because."}
    hooks_list = ["Nobody expected this", "Wait for it"]
    emotions_obj = {"primary": "joy", "intensity": 0.9}
    emotions_list = ["joy", "anticipation"]
    vid = await make_video(
        sim,
        count=99,  # the upstream's count need not be len(clips)
        clips=[
            {"id": "c-obj", "score": 90, "hooks": hooks_obj, "emotions": emotions_list},
            {"id": "c-list", "score": 40, "hooks": hooks_list, "emotions": emotions_obj},
            {"id": "c-odd", "score": 60, "hooks": [], "emotions": {}, "customField": [1, {}]},
        ],
    )
    reply = await client.clips(vid)
    assert reply.kind == "ok"
    by_id = {c["id"]: c for c in reply.clips}
    assert set(by_id) == {"c-obj", "c-list", "c-odd"}
    assert by_id["c-obj"]["hooks"] == hooks_obj
    assert by_id["c-obj"]["emotions"] == emotions_list
    assert by_id["c-list"]["hooks"] == hooks_list
    assert by_id["c-list"]["emotions"] == emotions_obj
    assert by_id["c-odd"]["hooks"] == []
    assert by_id["c-odd"]["emotions"] == {}
    assert by_id["c-odd"]["customField"] == [1, {}]
    assert reply.clips == (await sim_clips(sim, vid))["clips"]


async def test_clips_count_quirk_does_not_matter(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim, count=0)
    reply = await client.clips(vid)
    assert reply.kind == "ok"
    assert len(reply.clips) == 8


async def test_clips_while_rendering(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(
        sim,
        clips=[
            {"id": "slow", "score": 90, "renderAfter": 3600},
            {"id": "done", "score": 80},
        ],
    )
    reply = await client.clips(vid)
    by_id = {c["id"]: c for c in reply.clips}
    assert by_id["slow"]["status"] in ("detected", "generating")
    assert by_id["slow"]["downloadUrl"] is None
    assert by_id["done"]["status"] == "completed"
    assert by_id["done"]["downloadUrl"]


async def test_clips_before_completed_is_empty(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim, timeline=[{"status": "analyzing", "progress": 50}])
    reply = await client.clips(vid)
    assert reply.kind == "ok"
    assert reply.clips == []


async def test_clips_not_found(client: UpstreamClient) -> None:
    reply = await client.clips("missing-video")
    assert reply.kind == "not_found"


async def test_clips_rate_limited(sim: Sim, client: UpstreamClient) -> None:
    vid = await make_video(sim)
    await add_fault(sim, kind="429", path="clips", retryAfter=2.5)
    reply = await client.clips(vid)
    assert reply.kind == "rate_limited"
    assert reply.retry_after == 3.0  # the simulator rounds the header up


@contextlib.asynccontextmanager
async def upstream_of(
    app: web.Application, session: aiohttp.ClientSession
) -> AsyncIterator[UpstreamClient]:
    """The relay's upstream client on *app*, served on loopback (an upstream that behaves
    as no simulator fault does)."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield UpstreamClient(session, str(server.make_url("")).rstrip("/"), "k", 5.0)
    finally:
        await server.close()


@pytest.mark.parametrize("body", [b'{"error": "Internal error"}', b"{}", b'{"clips": null}'])
async def test_a_clips_answer_without_a_clip_list_is_an_error(
    session: aiohttp.ClientSession, body: bytes
) -> None:
    """Rule: a 200 whose body has no ``clips`` list (an error body from the upstream or a
    gateway) is an error, polled again with backoff -- not "no clips". Fails before: it
    was ok with no clips, which finished every watch of the video with ``clips: []`` (and a
    link refresh stored it over the good document)."""

    async def clips(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/videos/{vid}/clips", clips)
    async with upstream_of(app, session) as upstream:
        reply = await upstream.clips("vid_1")
    assert reply.kind == "error" and "no clip list" in reply.detail, reply


async def test_a_redirect_is_an_error_and_not_followed(session: aiohttp.ClientSession) -> None:
    """Rule: a 3xx from the upstream is an error (polled again with backoff), and its
    Location is never asked: the Bearer key never follows a redirect."""
    asked: list[str] = []

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        asked.append(request.headers.get("Authorization", ""))
        return web.json_response({"video": {"status": "completed"}})

    app = web.Application()
    app.router.add_get("/api/videos/{vid}/status", moved)
    app.router.add_get("/elsewhere", elsewhere)
    async with upstream_of(app, session) as upstream:
        reply = await upstream.status("vid_1")
    assert reply.kind == "error" and "302" in reply.detail, reply
    assert asked == []


# --- Retry-After parsing ------------------------------------------------------------------


def test_retry_after_http_date_in_the_future() -> None:
    now = 1_800_000_000.0
    header = format_datetime(datetime.fromtimestamp(now + 120, UTC), usegmt=True)
    assert retry_after_seconds(header, now=now) == 120.0
    far = format_datetime(datetime.fromtimestamp(now + 86_400, UTC), usegmt=True)
    assert retry_after_seconds(far, now=now) == 3600.0  # capped


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 12 ", 12.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (str(int(RETRY_AFTER_CAP) * 2), RETRY_AFTER_CAP),
        ("-1", None),
        ("soon", None),
        ("nan", None),
        ("", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # an HTTP-date in the past: now
        ("Wed, 21 Oct 2015 07:28", None),
    ],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value) == expected


def test_retry_after_seconds_default() -> None:
    assert retry_after_seconds(None, 4.0) == 4.0
    assert retry_after_seconds("junk", 4.0) == 4.0
    assert retry_after_seconds("2", 4.0) == 2.0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": "Too Many Requests", "message": "slow down", "retryAfter": 9}', 9.0),
        (b'{"retryAfter": 2.5}', 2.5),
        (b'{"retryAfter": -4}', 0.0),
        (b'{"retryAfter": 1e9}', RETRY_AFTER_CAP),
        (b'{"retryAfter": "9"}', 9.0),  # a number written as a string counts
        (b'{"retryAfter": "soon"}', None),
        (b'{"retryAfter": true}', None),
        (b'{"retryAfter": null}', None),
        (b'{"error": "Too Many Requests"}', None),
        (b"[9]", None),
        (b"not json", None),
        (b"", None),
    ],
)
def test_body_retry_after(body: bytes, expected: float | None) -> None:
    assert _body_retry_after(body) == expected


# --- parse_status -------------------------------------------------------------------------


def test_parse_status_documented_shape() -> None:
    payload = {
        "video": {
            "id": "UThwmCZb75JYZi4UP9rOX",
            "status": "analyzing",
            "title": "...",
            "duration": 1834,
            "errorMessage": None,
        },
        "job": {"id": "video-UThwmCZb75JYZi4UP9rOX", "state": "active", "progress": 70},
    }
    assert parse_status(payload) == VideoStatus("analyzing", 70.0, None)


def test_parse_status_job_null() -> None:
    assert parse_status({"video": {"status": "completed"}, "job": None}) == VideoStatus("completed")


def test_parse_status_job_missing() -> None:
    assert parse_status({"video": {"status": "pending"}}) == VideoStatus("pending")


@pytest.mark.parametrize(
    "job",
    [{"state": "waiting"}, {"progress": None}, {"progress": "70%"}, {"progress": True}, "job"],
)
def test_parse_status_job_without_usable_progress(job: Any) -> None:
    assert parse_status({"video": {"status": "downloading"}, "job": job}).progress is None


@pytest.mark.parametrize(
    ("progress", "expected"),
    [(-5, 0.0), (0, 0.0), (42.5, 42.5), (100, 100.0), (250, 100.0), ("70", 70.0)],
)
def test_parse_status_progress_clamped(progress: float | str, expected: float) -> None:
    payload = {"video": {"status": "analyzing"}, "job": {"progress": progress}}
    assert parse_status(payload).progress == expected


def test_parse_status_error_message() -> None:
    payload = {
        "video": {"status": "failed", "errorMessage": "bad codec"},
        "job": {"progress": 10, "failedReason": "worker crashed"},
    }
    assert parse_status(payload) == VideoStatus("failed", 10.0, "bad codec")


def test_parse_status_failed_reason_fallback() -> None:
    payload = {
        "video": {"status": "failed", "errorMessage": None},
        "job": {"progress": 10, "failedReason": "worker crashed"},
    }
    assert parse_status(payload).error_message == "worker crashed"
    no_message = {"video": {"status": "error"}, "job": {"failedReason": "oom"}}
    assert parse_status(no_message).error_message == "oom"


def test_parse_status_no_error_anywhere() -> None:
    payload = {"video": {"status": "failed", "errorMessage": 5}, "job": None}
    assert parse_status(payload).error_message is None
    payload = {"video": {"status": "failed"}, "job": {"failedReason": None}}
    assert parse_status(payload).error_message is None


def test_parse_status_extra_fields_ignored() -> None:
    payload = {
        "video": {"status": "completed", "transcript": "...", "workspaceId": "ws"},
        "job": {"progress": 100, "data": {"x": 1}, "processedOn": 1, "finishedOn": 2},
        "somethingNew": [1, 2, 3],
    }
    assert parse_status(payload) == VideoStatus("completed", 100.0, None)


@pytest.mark.parametrize(
    "payload",
    [
        {"video": {"id": "x"}},
        {"video": {"status": None}},
        {"video": {"status": 3}},
        {"video": None},
        {"video": "completed"},
        {"job": {"progress": 100}},
        {},
        [],
        None,
        "completed",
    ],
)
def test_parse_status_needs_video_status(payload: Any) -> None:
    with pytest.raises(ValueError, match="status response"):
        parse_status(payload)


def test_reply_defaults() -> None:
    reply = Reply("ok")
    assert reply.clips == []
    assert reply.video is None
    assert reply.retry_after is None
