"""Every event through a real worker: the upstream simulator and the receiver are real HTTP
servers on loopback, Redis is a real server, the worker is arq's Worker with its pumps."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from relay.devtools.embedded_redis import RedisServer
from relay.devtools.receiver import Receiver
from relay.domain.signing import WebhookVerificationError, verify
from tests.conftest import ApiFactory, WorkerFactory, auth, eventually

Client = TestClient[web.Request, web.Application]
Rec = tuple[Receiver, str]
FINAL = ("delivered", "failed", "disabled", "cancelled")


async def sim_video(sim: Client, **spec: Any) -> str:
    resp = await sim.post("/_sim/videos", json=spec)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


def clip(score: float, **extra: Any) -> dict[str, Any]:
    return {"score": score, "title": f"clip {score}", **extra}


async def register(
    api: Client, rec: Rec, video_id: str, path: str = "/hook", **extra: Any
) -> dict[str, Any]:
    receiver, base = rec
    resp = await api.post(
        "/v1/watches",
        json={"videoId": video_id, "callbackUrl": base + path, **extra},
        headers=auth(),
    )
    assert resp.status == 201, await resp.text()
    watch: dict[str, Any] = await resp.json()
    receiver.add_secret(watch["secret"])
    return watch


async def wait_watch(
    api: Client,
    watch_id: str,
    statuses: tuple[str, ...] = FINAL,
    timeout: float = 10,
    key: str | None = None,
) -> dict[str, Any]:
    """The watch once its status is one of *statuses* (asked as *key*'s tenant)."""
    deadline = time.monotonic() + timeout
    while True:
        got: dict[str, Any] = await (
            await api.get(f"/v1/watches/{watch_id}", headers=auth(key) if key else auth())
        ).json()
        if got["status"] in statuses:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"watch stuck: {got}")
        await asyncio.sleep(0.05)


async def deliveries(api: Client, watch_id: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/v1/watches/{watch_id}/deliveries", headers=auth())
    data: list[dict[str, Any]] = (await resp.json())["data"]
    return data


def events_for(receiver: Receiver, watch_id: str) -> list[dict[str, Any]]:
    return [e.event for e in receiver.events if e.event["data"]["watchId"] == watch_id]


COMPLETE_SOON = [
    {"status": "analyzing", "progress": 40, "after": 0},
    {"status": "completed", "progress": 100, "after": 0.3},
]


async def test_clips_ready_per_watch_filters_and_order(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    clips = [
        clip(95, duration=30, favorited=True),
        clip(85, duration=10),
        clip(70, duration=50, favorited=True),
        clip(50, duration=20),
        clip(20, duration=40),
    ]
    vid = await sim_video(sim, timeline=COMPLETE_SOON, clips=clips)
    high = await register(api, receiver, vid, "/a", minScore=80)
    mid = await register(
        api, receiver, vid, "/b", minScore=40, maxScore=90, sortBy="duration", sortOrder="asc"
    )
    fav = await register(api, receiver, vid, "/c", favoritedOnly=True, metadata={"k": "v"})
    everyone = await register(api, receiver, vid, "/d")
    for w in (high, mid, fav, everyone):
        got = await wait_watch(api, w["id"])
        assert got["status"] == "delivered"
        assert got["lastEventType"] == "clips.ready"
        assert got["deliveredAt"] and got["videoStatus"] == "completed"

    def scores(w: dict[str, Any]) -> list[float]:
        (ev,) = events_for(receiver[0], w["id"])
        assert ev["type"] == "clips.ready"
        assert ev["data"]["count"] == len(ev["data"]["clips"])
        assert ev["data"]["videoId"] == vid
        return [c["score"] for c in ev["data"]["clips"]]

    assert scores(high) == [95, 85]
    assert scores(mid) == [85, 50, 70]  # by duration ascending: 10, 20, 50
    assert scores(fav) == [95, 70]
    assert scores(everyone) == [95, 85, 70, 50, 20]
    (ev,) = events_for(receiver[0], fav["id"])
    assert ev["data"]["metadata"] == {"k": "v"} and ev["data"]["minScore"] == 0
    (ev,) = events_for(receiver[0], high["id"])
    assert ev["data"]["metadata"] == {} and ev["data"]["minScore"] == 80
    # every clip delivered is final and downloadable, exactly as the upstream sent it
    assert all(c["downloadUrl"] and c["status"] == "completed" for c in ev["data"]["clips"])
    attempts = await deliveries(api, high["id"])
    assert len(attempts) == 1
    assert attempts[0]["statusCode"] == 204 and attempts[0]["error"] is None
    assert attempts[0]["eventType"] == "clips.ready" and attempts[0]["attempt"] == 1
    assert attempts[0]["eventId"] == receiver[0].events[0].webhook_id or any(
        e.webhook_id == attempts[0]["eventId"] for e in receiver[0].events
    )


async def test_waits_for_render_lag_of_passing_clips(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    clips = [clip(90, renderAfter=1.0), clip(85), clip(10, renderAfter=60)]
    vid = await sim_video(sim, timeline=COMPLETE_SOON, clips=clips)
    w = await register(api, receiver, vid, minScore=80)
    got = await wait_watch(api, w["id"])
    assert got["status"] == "delivered"
    (ev,) = events_for(receiver[0], w["id"])
    assert [c["score"] for c in ev["data"]["clips"]] == [90, 85]
    assert all(c["downloadUrl"] for c in ev["data"]["clips"])
    # the 10-point clip passes no filter: it did not hold the event back for 60 s


async def test_render_timeout_leaves_out_undeliverable_clips(
    api: Client, make_worker: WorkerFactory, sim: Client, receiver: Rec
) -> None:
    await make_worker(render_timeout=0.5)
    clips = [clip(90, renderAfter=60), clip(85), clip(88, finalStatus="failed")]
    vid = await sim_video(sim, timeline=COMPLETE_SOON, clips=clips)
    w = await register(api, receiver, vid, minScore=80)
    await wait_watch(api, w["id"])
    (ev,) = events_for(receiver[0], w["id"])
    assert [c["score"] for c in ev["data"]["clips"]] == [85]


async def test_video_failed(api: Client, worker: Any, sim: Client, receiver: Rec) -> None:
    vid = await sim_video(
        sim,
        timeline=[{"status": "downloading", "after": 0}, {"status": "failed", "after": 0.2}],
        errorMessage="source video could not be downloaded",
    )
    w = await register(api, receiver, vid, metadata={"order": 1})
    got = await wait_watch(api, w["id"])
    assert got["status"] == "delivered" and got["lastEventType"] == "video.failed"
    (ev,) = events_for(receiver[0], w["id"])
    assert ev["type"] == "video.failed"
    assert ev["data"]["videoStatus"] == "failed"
    assert ev["data"]["error"] == "source video could not be downloaded"
    assert ev["data"]["metadata"] == {"order": 1} and ev["data"]["videoId"] == vid


async def test_unknown_video_fails_after_three_404s(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    w = await register(api, receiver, "no_such_video")
    got = await wait_watch(api, w["id"])
    assert got["lastEventType"] == "video.failed"
    (ev,) = events_for(receiver[0], w["id"])
    assert ev["data"]["videoStatus"] == "not_found"
    assert ev["data"]["error"] == "video not found"
    stats = await (await sim.get("/_sim/stats")).json()
    assert stats["byVideo"]["no_such_video"]["status"] == 3


async def test_a_watch_shows_why_its_video_cannot_be_polled_while_it_lasts(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    """While the upstream refuses the relay's key, a watch waiting on the video says so in
    lastError (in the relay's words, not the upstream's body); once a poll works again it
    shows none. A tester's watches showed nothing while only the worker's log knew."""
    vid = await sim_video(sim, timeline=[{"status": "analyzing", "progress": 30, "after": 0}])
    resp = await sim.post("/_sim/faults", json={"kind": "401", "path": "status", "times": 3})
    assert resp.status == 201, await resp.text()
    w = await register(api, receiver, vid)

    async def last_error() -> Any:
        got = await (await api.get(f"/v1/watches/{w['id']}", headers=auth())).json()
        assert got["status"] == "watching"
        return got["lastError"]

    refused = "upstream refused the relay's API key (HTTP 401); polling retries"
    await eventually(
        lambda: _is(last_error(), refused), timeout=10, every=0.1, what="the refusal shown"
    )
    await eventually(lambda: _is(last_error(), None), timeout=20, every=0.1, what="shown no more")


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def test_watch_expires(
    make_api: ApiFactory, make_worker: WorkerFactory, sim: Client, receiver: Rec
) -> None:
    api = await make_api(watch_timeout=0.5)
    await make_worker()
    vid = await sim_video(sim, timeline=[{"status": "analyzing", "progress": 30, "after": 0}])
    w = await register(api, receiver, vid)
    got = await wait_watch(api, w["id"], timeout=10)
    assert got["status"] == "delivered" and got["lastEventType"] == "watch.expired"
    (ev,) = events_for(receiver[0], w["id"])
    assert ev["type"] == "watch.expired"
    assert ev["data"]["videoStatus"] == "analyzing"
    # nobody waits on the video any more: polling stopped
    before = (await (await sim.get("/_sim/stats")).json())["byVideo"][vid]["status"]
    await asyncio.sleep(0.5)
    after = (await (await sim.get("/_sim/stats")).json())["byVideo"][vid]["status"]
    assert after - before <= 1


async def test_cancelled_watch_gets_nothing(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    vid = await sim_video(
        sim, timeline=[{"status": "analyzing", "after": 0}, {"status": "completed", "after": 0.6}]
    )
    cancelled = await register(api, receiver, vid, "/cancelled")
    kept = await register(api, receiver, vid, "/kept")
    assert (await api.delete(f"/v1/watches/{cancelled['id']}", headers=auth())).status == 204
    await wait_watch(api, kept["id"])
    await asyncio.sleep(0.3)
    assert events_for(receiver[0], cancelled["id"]) == []
    got = await wait_watch(api, cancelled["id"])
    assert got["status"] == "cancelled"
    assert await deliveries(api, cancelled["id"]) == []


async def test_retries_with_the_same_webhook_id(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    receiver[0].script("/flaky", [500, 503, 200])
    vid = await sim_video(sim)
    w = await register(api, receiver, vid, "/flaky")
    got = await wait_watch(api, w["id"])
    assert got["status"] == "delivered" and got["lastError"] is None
    attempts = await deliveries(api, w["id"])
    assert [a["statusCode"] for a in attempts] == [500, 503, 200]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert len({a["eventId"] for a in attempts}) == 1
    ids = {e.webhook_id for e in receiver[0].events if e.path == "/flaky"}
    assert ids == {attempts[0]["eventId"]}
    assert all(a["latencyMs"] is not None for a in attempts)


async def test_gone_disables_the_watch(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    receiver[0].script("/gone", [410])
    vid = await sim_video(sim)
    w = await register(api, receiver, vid, "/gone")
    got = await wait_watch(api, w["id"])
    assert got["status"] == "disabled"
    await asyncio.sleep(0.5)  # longer than the whole retry schedule
    assert len(await deliveries(api, w["id"])) == 1


async def test_schedule_exhausted_fails_with_last_error(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    receiver[0].script("/down", [500] * 10)
    vid = await sim_video(sim)
    w = await register(api, receiver, vid, "/down")
    got = await wait_watch(api, w["id"])
    assert got["status"] == "failed"
    assert got["lastError"] == "HTTP 500"
    attempts = await deliveries(api, w["id"])
    assert len(attempts) == 4  # the first attempt and one per schedule entry


async def test_unreachable_callback_is_retried_and_recorded(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    from relay.devtools.embedded_redis import free_port

    vid = await sim_video(sim)
    resp = await api.post(
        "/v1/watches",
        json={"videoId": vid, "callbackUrl": f"http://127.0.0.1:{free_port()}/x"},
        headers=auth(),
    )
    w = await resp.json()
    got = await wait_watch(api, w["id"])
    assert got["status"] == "failed"
    attempts = await deliveries(api, w["id"])
    assert len(attempts) == 4
    assert all(a["statusCode"] is None and a["error"].startswith("connect") for a in attempts)


async def test_redirect_is_not_followed(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    receiver[0].script("/moved", [301, 302, 307, 308])
    vid = await sim_video(sim)
    w = await register(api, receiver, vid, "/moved")
    got = await wait_watch(api, w["id"])
    assert got["status"] == "failed"
    codes = [a["statusCode"] for a in await deliveries(api, w["id"])]
    assert codes == [301, 302, 307, 308]


async def test_one_poller_for_twenty_watches_and_two_workers(
    api: Client, make_worker: WorkerFactory, sim: Client, receiver: Rec
) -> None:
    await make_worker()
    await make_worker()
    vid = await sim_video(
        sim,
        timeline=[{"status": "analyzing", "after": 0}, {"status": "completed", "after": 1.5}],
    )
    watches = [await register(api, receiver, vid, f"/w{i}", minScore=i * 5) for i in range(20)]
    for w in watches:
        assert (await wait_watch(api, w["id"]))["status"] == "delivered"
    stats = await (await sim.get("/_sim/stats")).json()
    times = sorted(t for t, path, v, _ in stats["log"] if v == vid and path == "status")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.09, gaps  # never two polls of the video inside one interval
    assert len(times) <= 1.5 / 0.1 + 3
    assert stats["byVideo"][vid]["clips"] == 1  # clips fetched once for all twenty
    assert len(receiver[0].unique_ids()) == 20 and receiver[0].duplicates() == 0


async def test_video_already_final_is_served_at_once(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    vid = await sim_video(sim)  # completed from the start
    started = time.monotonic()
    w = await register(api, receiver, vid)
    await receiver[0].wait_for(1, timeout=5)
    assert time.monotonic() - started < 2
    stats = await (await sim.get("/_sim/stats")).json()
    assert stats["byVideo"][vid] == {"status": 1, "clips": 1}
    # a later watch on the same finished video is served too, from a fresh check
    late = await register(api, receiver, vid, "/late", minScore=50)
    got = await wait_watch(api, late["id"])
    assert got["status"] == "delivered"
    assert (await wait_watch(api, w["id"]))["status"] == "delivered"


async def test_progress_is_visible_while_processing(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    vid = await sim_video(
        sim,
        timeline=[
            {"status": "transcribing", "progress": 35, "after": 0},
            {"status": "completed", "progress": 100, "after": 5},
        ],
    )
    w = await register(api, receiver, vid)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        got = await (await api.get(f"/v1/watches/{w['id']}", headers=auth())).json()
        if got["videoStatus"] == "transcribing":
            assert got["videoProgress"] == 35 and got["status"] == "watching"
            return
        await asyncio.sleep(0.05)
    raise AssertionError("progress never shown")


async def test_unknown_status_is_still_processing(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    vid = await sim_video(
        sim,
        timeline=[{"status": "thinking_hard", "after": 0}, {"status": "completed", "after": 0.5}],
    )
    w = await register(api, receiver, vid)
    got = await wait_watch(api, w["id"])
    assert got["lastEventType"] == "clips.ready"


async def test_redeliver_resends_same_event(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    vid = await sim_video(sim)
    w = await register(api, receiver, vid)
    await wait_watch(api, w["id"])
    resp = await api.post(f"/v1/watches/{w['id']}/redeliver", headers=auth())
    assert resp.status == 202
    await receiver[0].wait_for(1, timeout=5)
    deadline = time.monotonic() + 5
    while len(receiver[0].events) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    first, second = receiver[0].events[:2]
    assert first.webhook_id == second.webhook_id and receiver[0].duplicates() == 1
    assert first.event == second.event
    got = await wait_watch(api, w["id"])
    assert got["status"] == "delivered"
    attempts = await deliveries(api, w["id"])
    assert [a["attempt"] for a in attempts] == [1, 2]  # numbered on across series


async def test_redeliver_reenables_a_disabled_watch(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    receiver[0].script("/gone-then-back", [410])
    vid = await sim_video(sim)
    w = await register(api, receiver, vid, "/gone-then-back")
    assert (await wait_watch(api, w["id"]))["status"] == "disabled"
    assert (await api.post(f"/v1/watches/{w['id']}/redeliver", headers=auth())).status == 202
    await receiver[0].wait_for(1, timeout=5)
    got = await wait_watch(api, w["id"])
    assert got["status"] == "delivered"


async def test_rotated_secret_signs_beside_the_old_one(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    vid = await sim_video(
        sim, timeline=[{"status": "analyzing", "after": 0}, {"status": "completed", "after": 0.5}]
    )
    w = await register(api, receiver, vid)
    old = w["secret"]
    resp = await api.post(f"/v1/watches/{w['id']}/rotate-secret", headers=auth())
    new = (await resp.json())["secret"]
    await receiver[0].wait_for(1, timeout=5)
    ev = receiver[0].events[0]
    assert len(ev.attempt_headers["webhook-signature"].split(" ")) == 2
    raw = orjson.dumps(ev.event)
    headers = ev.attempt_headers
    assert verify(raw, headers, old)["data"]["watchId"] == w["id"]
    assert verify(raw, headers, new)["data"]["watchId"] == w["id"]


async def test_thirty_rotations_sign_with_three_secrets(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    """A watch signs with at most three secrets (the newest and two in their grace): 30
    rotations inside RELAY_SECRET_GRACE give 3 signatures, the newest verifying, the oldest
    retired. Fails before issue 15: every rotation added a signature (31)."""
    vid = await sim_video(
        sim, timeline=[{"status": "analyzing", "after": 0}, {"status": "completed", "after": 1}]
    )
    w = await register(api, receiver, vid)
    secrets = [w["secret"]]
    for _ in range(30):
        resp = await api.post(f"/v1/watches/{w['id']}/rotate-secret", headers=auth())
        secrets.append((await resp.json())["secret"])
    for s in secrets[1:]:
        receiver[0].add_secret(s)
    await receiver[0].wait_for(1, timeout=10)
    ev = receiver[0].events[0]
    assert len(ev.attempt_headers["webhook-signature"].split(" ")) == 3
    raw = orjson.dumps(ev.event)
    for s in secrets[-3:]:
        assert verify(raw, ev.attempt_headers, s)["data"]["watchId"] == w["id"]
    for s in secrets[:-3]:
        with pytest.raises(WebhookVerificationError):
            verify(raw, ev.attempt_headers, s)


async def test_a_watch_retrying_its_event_shows_no_last_event_yet(
    api: Client, make_worker: WorkerFactory, sim: Client, receiver: Rec
) -> None:
    """``lastEventType`` is the final event a watch ended with: while its first attempt
    failed and it retries, it is still null (``lastError`` says why); a mutation review
    found it showing the event at once went unnoticed."""
    await make_worker(retry_schedule=(30,))
    receiver[0].script("/retrying", [500])
    w = await register(api, receiver, await sim_video(sim), "/retrying")

    async def attempted() -> bool:
        return bool(await deliveries(api, w["id"]))

    await eventually(attempted, what="the first attempt recorded")
    got = await (await api.get(f"/v1/watches/{w['id']}", headers=auth())).json()
    assert got["status"] == "delivering" and got["lastEventType"] is None, got
    assert got["lastError"] == "HTTP 500", got


async def test_stale_clip_links_are_fetched_again_before_an_attempt(
    api: Client, make_worker: WorkerFactory, sim: Client, receiver: Rec
) -> None:
    from relay.metrics import UPSTREAM_REQUESTS

    refreshes = UPSTREAM_REQUESTS.labels("clips_refresh", "ok", "200")
    counted = refreshes._value.get()
    await make_worker(link_refresh=0.2, retry_schedule=(0.5,))
    receiver[0].script("/later", [500, 204])
    vid = await sim_video(sim, clips=[clip(90)])
    w = await register(api, receiver, vid, "/later")
    got = await wait_watch(api, w["id"])
    assert got["status"] == "delivered"
    stats = await (await sim.get("/_sim/stats")).json()
    assert stats["byVideo"][vid]["clips"] == 2  # fetched for the event, then refreshed
    assert refreshes._value.get() == counted + 1  # (the upstream requests metric counts it)
    first, last = events_for(receiver[0], w["id"])
    (c,) = last["data"]["clips"]
    assert last["timestamp"] == first["timestamp"]  # same event, fresher links
    resp = await sim.get(URL(c["downloadUrl"]).path_qs)
    assert resp.status == 200  # the link the receiver got is alive


async def test_upstream_429_pauses_requests(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    vid = await sim_video(
        sim, timeline=[{"status": "analyzing", "after": 0}, {"status": "completed", "after": 0.2}]
    )
    await sim.post("/_sim/faults", json={"kind": "429", "path": "status", "retryAfter": 1})
    w = await register(api, receiver, vid)
    await wait_watch(api, w["id"])
    stats = await (await sim.get("/_sim/stats")).json()
    log = [(t, code) for t, path, v, code in stats["log"] if v == vid]
    limited_at = next(t for t, code in log if code == 429)
    after = [t for t, _ in log if t > limited_at]
    assert after and min(after) - limited_at >= 0.95


async def test_an_operator_ends_a_long_429_pause_and_polling_goes_on(
    api: Client, worker: Any, sim: Client, receiver: Rec, redis_server: RedisServer
) -> None:
    """``clip-relay upstream resume`` (the process, on REDIS_URL): a 429 with an hour's
    Retry-After stops every poll; once an operator ends the pause the video is polled within
    seconds and its watch delivered, instead of an hour later."""
    vid = await sim_video(
        sim, timeline=[{"status": "analyzing", "after": 0}, {"status": "completed", "after": 0.2}]
    )
    await sim.post(
        "/_sim/faults", json={"kind": "429", "path": "status", "retryAfter": 3600, "times": 1}
    )
    w = await register(api, receiver, vid)

    async def polled() -> list[tuple[float, int]]:
        stats = await (await sim.get("/_sim/stats")).json()
        return [(t, code) for t, _, v, code in stats["log"] if v == vid]

    await eventually(lambda: _has_429(polled()), what="the 429")
    await asyncio.sleep(1.0)
    assert [code for _, code in await polled()] == [429]  # paused: no other poll
    code, out = await upstream_cli(redis_server, "status")
    assert code == 0 and "upstream paused: 0:59:" in out, out
    code, out = await upstream_cli(redis_server, "resume")
    assert code == 0 and "upstream pause ended" in out, out
    got = await wait_watch(api, w["id"], timeout=10)
    assert got["lastEventType"] == "clips.ready"
    assert await upstream_cli(redis_server, "resume") == (0, "upstream was not paused\n")


async def _has_429(log: Awaitable[list[tuple[float, int]]]) -> bool:
    return any(code == 429 for _, code in await log)


async def upstream_cli(redis_server: RedisServer, *args: str) -> tuple[int, str]:
    """``clip-relay upstream *args`` as a process on the test Redis: (exit status, stdout)."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("clip-relay")),
        "upstream",
        *args,
        env=dict(os.environ, REDIS_URL=redis_server.url, LOG_FORMAT="console"),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_upstream_errors_back_off_and_recover(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    vid = await sim_video(sim)
    await sim.post("/_sim/faults", json={"kind": "500", "path": "status", "times": 2})
    await sim.post("/_sim/faults", json={"kind": "malformed", "path": "clips", "times": 1})
    w = await register(api, receiver, vid)
    got = await wait_watch(api, w["id"])
    assert got["lastEventType"] == "clips.ready"


async def test_upstream_auth_errors_keep_the_watch_alive(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    vid = await sim_video(sim)
    await sim.post("/_sim/faults", json={"kind": "401", "path": "status", "times": 2})
    w = await register(api, receiver, vid)
    got = await wait_watch(api, w["id"])
    assert got["lastEventType"] == "clips.ready"


async def test_status_counts_follow_every_transition(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    receiver[0].script("/gone", [410])
    vid = await sim_video(sim)
    ok = await register(api, receiver, vid, "/ok")
    gone = await register(api, receiver, vid, "/gone")
    waiting = await register(
        api, receiver, await sim_video(sim, timeline=[{"status": "analyzing", "after": 0}])
    )
    cancelled = await register(api, receiver, "some_other_video")
    await api.delete(f"/v1/watches/{cancelled['id']}", headers=auth())
    await wait_watch(api, ok["id"])
    await wait_watch(api, gone["id"])
    metrics = await (await api.get("/metrics")).text()
    expected = {"delivered": 1, "disabled": 1, "watching": 1, "cancelled": 1, "delivering": 0}
    for status, n in expected.items():
        assert f'relay_watches{{status="{status}"}} {float(n)}' in metrics, status
    assert (await wait_watch(api, waiting["id"], ("watching",)))["status"] == "watching"


async def test_a_worker_rides_out_a_full_redis(
    make_worker: WorkerFactory, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis at its maxmemory (noeviction) refuses arq's health-key write: the worker goes
    on (the pumps and the sweep free memory) and writes it again once Redis takes writes.
    Fails before: arq's heart beat raised OutOfMemoryError and every worker exited (a
    crash loop under Kubernetes; a chaos tester's try). The same for a Redis turned
    replica (READONLY)."""
    from relay import constants as c
    from workers import worker as worker_module

    monkeypatch.setattr(worker_module, "HEALTH_INTERVAL", 0.2)
    arq = await make_worker()
    running = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "RelayWorker.main"]
    await eventually(lambda: redis.exists(c.ARQ_HEALTH_KEY), what="arq's health key")
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", 1)  # below what it holds: every write is refused
    try:
        await redis.delete(c.ARQ_HEALTH_KEY)  # (a DEL is allowed)
        await asyncio.sleep(2.0)  # ten health writes refused
        assert running and not any(t.done() for t in running), "the worker stopped"
    finally:
        await redis.config_set("maxmemory", 0)
    await eventually(lambda: redis.exists(c.ARQ_HEALTH_KEY), what="the health key again")
    assert arq.ctx.get("runtime") is not None
    # and a Redis turned replica (READONLY: a failover, or REDIS_URL naming a replica)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # a master nobody answers for: no sync, the data stays
    await redis.execute_command("REPLICAOF", "127.0.0.1", dead.getsockname()[1])
    try:
        await asyncio.sleep(2.0)  # ten health writes refused: READONLY
        assert not any(t.done() for t in running), "the worker stopped on READONLY"
    finally:
        await redis.execute_command("REPLICAOF", "NO", "ONE")
        dead.close()


async def test_a_worker_rides_out_a_redis_busy_with_a_script(
    make_worker: WorkerFactory, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script running past ``busy-reply-threshold`` (another client's, or an operator's
    ``EVAL``) makes Redis answer BUSY to everything until it ends: the worker waits it out
    and goes on. Fails before: arq's poll loop re-raised the BUSY error and every worker
    exited at once (a black-box tester's find)."""
    from relay import constants as c
    from workers import worker as worker_module

    monkeypatch.setattr(worker_module, "HEALTH_INTERVAL", 0.2)
    await make_worker()
    running = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "RelayWorker.main"]
    await eventually(lambda: redis.exists(c.ARQ_HEALTH_KEY), what="arq's health key")
    threshold = (await redis.config_get("busy-reply-threshold"))["busy-reply-threshold"]
    await redis.config_set("busy-reply-threshold", 100)
    # (read-only and endless: SCRIPT KILL ends it; TIME stands still inside a script)
    busy = asyncio.ensure_future(redis.eval("local i = 0 while true do i = i + 1 end", 0))
    try:
        await asyncio.sleep(2.5)  # health writes and polls answered BUSY
        assert running and not any(t.done() for t in running), "the worker stopped on BUSY"
    finally:
        for _ in range(50):
            try:
                await redis.script_kill()
                break
            except Exception:  # (NOTBUSY: the script has not started yet)
                await asyncio.sleep(0.1)
        await asyncio.gather(busy, return_exceptions=True)
        await redis.config_set("busy-reply-threshold", threshold)
    await redis.delete(c.ARQ_HEALTH_KEY)
    await eventually(lambda: redis.exists(c.ARQ_HEALTH_KEY), what="the health key again")
    assert not any(t.done() for t in running)


async def test_a_stop_during_startup_closes_what_startup_opened(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stopped while its startup waits on Redis' clock closes the metrics server
    and the Redis connection it had opened. Fails before: startup had taken them out of
    the context, the stop found neither, and both stayed open (a review, 2026-12-08)."""
    from relay.devtools.embedded_redis import free_port
    from relay.store import timesync
    from workers import worker as worker_module

    port = free_port()
    started = asyncio.Event()

    async def slow_sync(redis: Any) -> None:
        started.set()
        await asyncio.sleep(30)  # (Redis slow to answer TIME)

    monkeypatch.setattr(timesync, "sync", slow_sync)
    ctx: dict[str, Any] = {
        worker_module.SETTINGS: settings.model_copy(update={"metrics_port": port})
    }
    starting = asyncio.create_task(worker_module.startup(ctx))
    await asyncio.wait_for(started.wait(), 10)
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # (its metrics server listens)
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    await worker_module.shutdown(ctx)
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=2),
    ):
        pass
    assert worker_module.EARLY not in ctx and worker_module.RUNTIME not in ctx
