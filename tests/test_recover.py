"""``POST /v1/watches/recover`` and ``POST /v1/watches/{id}/ping`` through a real worker, a
real receiver and a real Redis (SPEC.md, "Registration API")."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from relay.api import appkeys as k
from relay.api.models import DeliveryOut
from relay.devtools.receiver import Receiver
from relay.devtools.receiver import create_app as create_receiver_app
from relay.domain.origin import url_origin_tag
from tests.conftest import TENANT_B_KEY, auth
from tests.test_worker import deliveries, sim_video, wait_watch

Client = TestClient[web.Request, web.Application]
Rec = tuple[Receiver, str]
NEVER_DONE = [{"status": "analyzing", "progress": 10, "after": 0}]


async def register(
    api: Client, rec: Rec, video_id: str, path: str, key: str | None = None
) -> dict[str, Any]:
    receiver, base = rec
    resp = await api.post(
        "/v1/watches",
        json={"videoId": video_id, "callbackUrl": base + path},
        headers=auth(key) if key else auth(),
    )
    assert resp.status == 201, await resp.text()
    watch: dict[str, Any] = await resp.json()
    receiver.add_secret(watch["secret"])
    return watch


async def failing_watch(
    api: Client, sim: Client, rec: Rec, path: str, key: str | None = None
) -> str:
    rec[0].script(path, [500] * 4)  # the first attempt and the three retries of the schedule
    w = await register(api, rec, await sim_video(sim), path, key)
    return str(w["id"])


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ids_by_path(receiver: Receiver) -> Counter[str]:
    return Counter(e.path for e in receiver.events)


async def test_recover_resends_the_tenants_recent_failures_once_with_their_event_ids(
    api: Client, worker: Any, sim: Client, receiver: Rec, redis: Redis
) -> None:
    """Recover since T: every watch of the caller that became failed after T gets its last
    event again (same webhook-id) and ends delivered, attempt records numbered on; older
    failures and another tenant's stay failed; two recovers at once send nothing twice; the
    status counters follow."""
    rec = receiver[0]
    older = await failing_watch(api, sim, receiver, "/older")
    await wait_watch(api, older)
    await asyncio.sleep(0.05)
    since = time.time()
    await asyncio.sleep(0.05)
    mine = [await failing_watch(api, sim, receiver, f"/down{i}") for i in range(5)]
    theirs = await failing_watch(api, sim, receiver, "/theirs", TENANT_B_KEY)
    for wid in mine:
        assert (await wait_watch(api, wid))["status"] == "failed"
    await wait_watch(api, theirs, key=TENANT_B_KEY)  # (failed, as the check at the end says)
    before = ids_by_path(rec)
    assert all(before[f"/down{i}"] == 4 for i in range(5)), before
    # the receiver has healed: its scripts are used up, it answers 204 now

    answers = await asyncio.gather(
        *(
            api.post("/v1/watches/recover", json={"since": iso(since)}, headers=auth())
            for _ in range(2)
        )
    )
    assert [a.status for a in answers] == [202, 202]
    counts = [(await a.json())["count"] for a in answers]
    assert sum(counts) == 5, counts

    for wid in mine:
        assert (await wait_watch(api, wid))["status"] == "delivered"
    await asyncio.sleep(0.5)  # longer than the retry schedule: anything sent twice shows now
    after = ids_by_path(rec)
    assert all(after[f"/down{i}"] == 5 for i in range(5)), after
    assert after["/older"] == before["/older"] and after["/theirs"] == before["/theirs"]
    for i, wid in enumerate(mine):
        sent = {e.webhook_id for e in rec.events if e.path == f"/down{i}"}
        records = await deliveries(api, wid)
        assert len(sent) == 1 and {r["eventId"] for r in records} == sent
        assert [r["statusCode"] for r in records] == [500, 500, 500, 500, 204]
        assert [r["attempt"] for r in records] == [1, 2, 3, 4, 5]  # numbered on
    assert (await wait_watch(api, older))["status"] == "failed"
    theirs_now = await (await api.get(f"/v1/watches/{theirs}", headers=auth(TENANT_B_KEY))).json()
    assert theirs_now["status"] == "failed"
    tenant_a = await redis.hgetall("cr:t:tenant-a:n")
    assert tenant_a["failed"] == "1" and tenant_a["delivered"] == "5"
    assert tenant_a.get("delivering", "0") == "0"
    everyone = await redis.hgetall("cr:stats:watches")
    assert everyone["failed"] == "2" and everyone["delivered"] == "5"
    # recovering again finds nothing: put back once, delivered
    again = await api.post("/v1/watches/recover", json={"since": iso(since)}, headers=auth())
    assert (await again.json()) == {"count": 0}


async def test_recover_closes_only_the_circuits_of_the_watches_it_puts_back(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    """A recover asks the workers to close the circuits of its own watches' origins only:
    another tenant's origin, or one of the tenant's outside the range, keeps its circuit
    (a recover used to close every circuit of every worker, so one tenant recovering over
    and over kept every other tenant's dead origin being hit). Fails before: ``*``."""
    store = api.server.app[k.STORE]
    other = Receiver()
    other_server = TestServer(create_receiver_app(other), host="127.0.0.1")
    await other_server.start_server()
    try:
        other_rec = (other, str(other_server.make_url("")).rstrip("/"))
        older = await failing_watch(api, sim, other_rec, "/older")
        assert (await wait_watch(api, older))["status"] == "failed"
        await asyncio.sleep(0.05)
        since = time.time()
        await asyncio.sleep(0.05)
        mine = [await failing_watch(api, sim, receiver, f"/mine{i}") for i in range(2)]
        theirs = await failing_watch(api, sim, other_rec, "/theirs", TENANT_B_KEY)
        for wid in mine:
            assert (await wait_watch(api, wid))["status"] == "failed"
        assert (await wait_watch(api, theirs, key=TENANT_B_KEY))["status"] == "failed"
        _, seen = await store.circuits.closed_since(None)
        async with store.circuits.feed() as feed:
            resp = await api.post("/v1/watches/recover", json={"since": iso(since)}, headers=auth())
            assert resp.status == 202 and (await resp.json())["count"] == 2
            heard: list[str] = []
            quiet_until = time.monotonic() + 1  # (a None may be the subscription's answer)
            while time.monotonic() < quiet_until:
                if (message := await feed.next(within=0.2)) is not None:
                    heard.append(message)
        tags, _ = await store.circuits.closed_since(seen - 1)
        assert heard == tags == [url_origin_tag(receiver[1] + "/mine0")]
        # a recover that finds nothing in its range closes nothing
        _, seen = await store.circuits.closed_since(None)
        resp = await api.post(
            "/v1/watches/recover", json={"since": iso(time.time())}, headers=auth()
        )
        assert (await resp.json())["count"] == 0
        assert (await store.circuits.closed_since(seen))[0] == []
    finally:
        await other_server.close()


async def test_a_recovered_watch_runs_its_whole_schedule_again_numbered_on(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    """A recovered watch whose receiver is still down gets the whole retry schedule again
    (four attempts) before it fails again, its attempts numbered 5 to 8. Fails before this
    change: the attempts were numbered 1 to 4 again (the number was the schedule's step)."""
    wid = await failing_watch(api, sim, receiver, "/still-down")
    assert (await wait_watch(api, wid))["status"] == "failed"
    receiver[0].script("/still-down", [500] * 4)
    since = iso(time.time() - 60)
    resp = await api.post("/v1/watches/recover", json={"since": since}, headers=auth())
    assert (await resp.json()) == {"count": 1}
    await asyncio.sleep(0.2)
    assert (await wait_watch(api, wid))["status"] == "failed"
    records = await deliveries(api, wid)
    assert [r["attempt"] for r in records] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [r["statusCode"] for r in records] == [500] * 8
    # failed again, at a new time inside the same range: the same recover puts it back
    # once more (a new failure), and a re-run right after it finds nothing to put back
    again = await api.post("/v1/watches/recover", json={"since": since}, headers=auth())
    assert (await again.json()) == {"count": 1}
    rerun = await api.post("/v1/watches/recover", json={"since": since}, headers=auth())
    assert (await rerun.json()) == {"count": 0}
    assert (await wait_watch(api, wid))["status"] == "delivered"  # the script is used up


def notified() -> float:
    """How many first successes the notify latency histogram has seen."""
    from relay.metrics import NOTIFY_LATENCY

    samples = NOTIFY_LATENCY.collect()[0].samples
    return next(s.value for s in samples if s.name.endswith("_count"))


async def test_a_recovered_delivery_is_not_a_notify_latency(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    """``relay_notify_latency_seconds`` is how soon ready clips reach a receiver: a watch
    recovered days after its event, delivered now, counted its whole age, and a tenant's
    recover set off the latency alert (review, 2026-12-06). A first success counts in its
    first series only."""
    wid = await failing_watch(api, sim, receiver, "/down-then-up")
    assert (await wait_watch(api, wid))["status"] == "failed"
    before = notified()
    resp = await api.post(
        "/v1/watches/recover", json={"since": iso(time.time() - 60)}, headers=auth()
    )
    assert (await resp.json()) == {"count": 1}
    assert (await wait_watch(api, wid))["status"] == "delivered"
    assert notified() == before
    fine = await register(api, receiver, await sim_video(sim), "/fine")
    assert (await wait_watch(api, fine["id"]))["status"] == "delivered"
    assert notified() == before + 1


async def test_recover_until_bounds_the_range(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    """[since, until): a failure at or after *until* is not put back."""
    first = await failing_watch(api, sim, receiver, "/first")
    await wait_watch(api, first)
    await asyncio.sleep(0.05)  # the worker's time (Redis' clock, corrected) may run ms ahead
    until = time.time()
    await asyncio.sleep(0.05)
    second = await failing_watch(api, sim, receiver, "/second")
    await wait_watch(api, second)
    body = {"since": iso(until - 60), "until": iso(until)}
    resp = await api.post("/v1/watches/recover", json=body, headers=auth())
    assert resp.status == 202 and (await resp.json()) == {"count": 1}
    assert (await wait_watch(api, first))["status"] == "delivered"
    assert (await wait_watch(api, second))["status"] == "failed"


async def test_recover_rejects_bad_times_naming_the_field(api: Client) -> None:
    """since is required; since and until are RFC 3339 timestamps with a zone; until is later
    than since; no other field: 422 naming each."""
    cases = [
        ({}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-11-28T10:00:00"}, "since"),  # no time zone
        ({"since": 1764324000}, "since"),
        ({"since": None}, "since"),
        ({"since": "2026-11-28T10:00:00Z", "until": None}, "until"),
        ({"since": "2026-13-28T10:00:00Z"}, "since"),
        ({"since": "2026-11-28T10:00:00Z", "until": "2026-11-28T09:00:00+00:00"}, "until"),
        ({"since": "2026-11-28T10:00:00Z", "until": "soon"}, "until"),
        ({"since": "2026-11-28T10:00:00Z", "limit": 5}, "limit"),
        ({"since": "2099-01-01T00:00:00Z"}, "since"),  # in the future (until: now)
    ]
    for body, field in cases:
        resp = await api.post("/v1/watches/recover", json=body, headers=auth())
        assert resp.status == 422, (body, await resp.text())
        problem = await resp.json()
        assert field in [e["field"] for e in problem["errors"]], (body, problem)
        assert "RFC 3339" in problem["detail"] or field in ("until", "limit") or "2099" in str(body)
        assert len(problem["errors"]) == 1, problem  # the one field at fault, not its peer
    resp = await api.post("/v1/watches/recover", json=[], headers=auth())
    assert resp.status == 422
    ok = {"since": "2026-11-28T10:00:00.123456+01:00", "until": "2026-11-28 12:00:00z"}
    resp = await api.post("/v1/watches/recover", json=ok, headers=auth())
    assert resp.status == 202 and (await resp.json()) == {"count": 0}
    resp = await api.post("/v1/watches/recover", json=ok)
    assert resp.status == 401


async def minute_counts(redis: Redis, tenant: str = "tenant-a") -> tuple[int, int]:
    """The dashboard's ok and failed attempts of *tenant*, over every minute kept."""
    ok = fail = 0
    async for key in redis.scan_iter(match=f"cr:t:{tenant}:m:*"):
        counts = await redis.hgetall(key)  # type: ignore[misc]
        ok, fail = ok + int(counts.get("ok", 0)), fail + int(counts.get("fail", 0))
    return ok, fail


async def test_ping_reaches_the_receiver_signed_and_leaves_the_status_alone(
    api: Client, sim: Client, receiver: Rec, redis: Redis
) -> None:
    """One signed watch.ping (data: watchId, videoId, metadata) to the receiver, recorded in
    deliveries as one attempt with its own event id; the watch is still watching."""
    rec = receiver[0]
    vid = await sim_video(sim, timeline=NEVER_DONE)
    w = await register(api, receiver, vid, "/ping")
    resp = await api.post(f"/v1/watches/{w['id']}/ping", headers=auth())
    assert resp.status == 202, await resp.text()
    await rec.wait_for(1, timeout=5)
    (event,) = rec.events  # the receiver verified the signature with the watch's secret
    assert event.event["type"] == "watch.ping"
    assert event.event["data"] == {"watchId": w["id"], "videoId": vid, "metadata": {}}
    for _ in range(100):
        records = await deliveries(api, w["id"])
        if records:
            break
        await asyncio.sleep(0.02)
    (record,) = records
    assert record["eventType"] == "watch.ping" and record["attempt"] == 1
    # the OpenAPI document's deliveries answer allows it (a client generated from it with
    # strict enums rejected the list before: a review, 2026-12-06)
    DeliveryOut.model_validate(record)
    assert record["eventId"] == event.webhook_id and record["statusCode"] == 204
    got = await (await api.get(f"/v1/watches/{w['id']}", headers=auth())).json()
    assert got["status"] == "watching" and got["lastEventType"] is None
    assert got["updatedAt"] == w["updatedAt"]
    assert await minute_counts(redis) == (1, 0)  # the dashboard's chart counts it


async def test_ping_of_a_delivered_watch_keeps_its_records_and_status(
    api: Client, worker: Any, sim: Client, receiver: Rec, redis: Redis
) -> None:
    """A failed ping is one recorded attempt (never retried); the watch stays delivered."""
    rec = receiver[0]
    w = await register(api, receiver, await sim_video(sim), "/done")
    assert (await wait_watch(api, w["id"]))["status"] == "delivered"
    rec.script("/done", [500])
    assert (await api.post(f"/v1/watches/{w['id']}/ping", headers=auth())).status == 202
    for _ in range(100):
        records = await deliveries(api, w["id"])
        if len(records) == 2:
            break
        await asyncio.sleep(0.02)
    assert [(r["eventType"], r["statusCode"]) for r in records] == [
        ("clips.ready", 204),
        ("watch.ping", 500),
    ]
    await asyncio.sleep(0.4)  # longer than the retry schedule: a ping is not retried
    assert len([e for e in rec.events if e.event["type"] == "watch.ping"]) == 1
    got = await (await api.get(f"/v1/watches/{w['id']}", headers=auth())).json()
    assert got["status"] == "delivered" and got["lastEventType"] == "clips.ready"
    assert await minute_counts(redis) == (1, 1)  # the event's 2xx, the ping's 500


async def test_a_ping_before_the_event_keeps_its_record_once_the_event_is_sent(
    api: Client, worker: Any, sim: Client, receiver: Rec
) -> None:
    """Register, ping to try the receiver, then the video completes: deliveries lists the
    ping and the event's attempt, oldest first (the event's attempts, numbered from 1 at
    finalize, once wrote over the ping's record)."""
    rec = receiver[0]
    vid = await sim_video(sim, timeline=NEVER_DONE)
    w = await register(api, receiver, vid, "/early")
    assert (await api.post(f"/v1/watches/{w['id']}/ping", headers=auth())).status == 202
    for _ in range(100):
        if await deliveries(api, w["id"]):
            break
        await asyncio.sleep(0.02)
    resp = await sim.post(f"/_sim/videos/{vid}/status", json={"status": "completed"})
    assert resp.status == 200
    assert (await wait_watch(api, w["id"]))["status"] == "delivered"
    records = await deliveries(api, w["id"])
    assert [(r["eventType"], r["attempt"], r["statusCode"]) for r in records] == [
        ("watch.ping", 1, 204),
        ("clips.ready", 1, 204),
    ]
    assert Counter(e.event["type"] for e in rec.events) == {"watch.ping": 1, "clips.ready": 1}


async def test_ping_is_refused_for_cancelled_and_unknown_watches(
    api: Client, sim: Client, receiver: Rec
) -> None:
    """A cancelled watch gets nothing (409); another tenant's watch is 404."""
    w = await register(api, receiver, await sim_video(sim, timeline=NEVER_DONE), "/x")
    other = await api.post(f"/v1/watches/{w['id']}/ping", headers=auth(TENANT_B_KEY))
    assert other.status == 404
    assert (await api.delete(f"/v1/watches/{w['id']}", headers=auth())).status == 204
    resp = await api.post(f"/v1/watches/{w['id']}/ping", headers=auth())
    assert resp.status == 409
    assert (await resp.json())["title"] == "Watch cancelled"


async def test_openapi_documents_recover_ping_and_the_events(api: Client) -> None:
    """The document has both routes and a webhooks section (OpenAPI 3.1) with every event,
    each carrying watchId, videoId and metadata and the Standard Webhooks headers."""
    doc = await (await api.get("/openapi.json")).json()
    assert "202" in doc["paths"]["/v1/watches/recover"]["post"]["responses"]
    assert "202" in doc["paths"]["/v1/watches/{watch_id}/ping"]["post"]["responses"]
    hooks = doc["webhooks"]
    assert set(hooks) == {"clips.ready", "video.failed", "watch.expired", "watch.ping"}
    for name, item in hooks.items():
        schema = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert schema["properties"]["type"] == {"const": name}
        assert {"watchId", "videoId", "metadata"} <= set(schema["properties"]["data"]["required"])
        headers = {p["name"] for p in item["post"]["parameters"]}
        assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}


async def test_a_refused_private_callback_names_relay_callback_allow(make_api: Any) -> None:
    """Registering a callback on localhost with RELAY_CALLBACK_ALLOW empty: the 422 says
    which variable opens it."""
    from relay.settings import CallbackAllow

    api = await make_api(callback_allow=CallbackAllow((), frozenset()))
    for url in ("http://127.0.0.1:9000/hook", "http://localhost:9000/hook"):
        resp = await api.post(
            "/v1/watches", json={"videoId": "v1", "callbackUrl": url}, headers=auth()
        )
        assert resp.status == 422
        (error,) = (await resp.json())["errors"]
        assert error["field"] == "callbackUrl" and "RELAY_CALLBACK_ALLOW" in error["message"]


async def test_recording_a_ping_twice_keeps_one_record(
    api: Client, sim: Client, receiver: Rec
) -> None:
    """record_ping.lua run twice with the same record (a reply lost, the command sent again)
    adds one record, numbered after the last; the status is untouched."""
    from relay.domain import attempts

    w = await register(api, receiver, await sim_video(sim, timeline=NEVER_DONE), "/twice")
    watches = api.app[k.STORE].watches
    record = attempts.ping_record(1_700_000_000_000, 204, None, 1.5, None, "evt_" + "c" * 24)
    assert await watches.record_ping(w["id"], record) == 1
    assert await watches.record_ping(w["id"], record) == 1
    other = attempts.ping_record(1_700_000_001_000, 500, None, 2.5, "no", "evt_" + "d" * 24)
    assert await watches.record_ping(w["id"], other) == 2
    records = await deliveries(api, w["id"])
    assert [(r["eventId"], r["statusCode"]) for r in records] == [
        ("evt_" + "c" * 24, 204),
        ("evt_" + "d" * 24, 500),
    ]
    assert await watches.record_ping("wat_" + "e" * 24, record) is None
    got = await (await api.get(f"/v1/watches/{w['id']}", headers=auth())).json()
    assert got["status"] == "watching"


async def test_pings_in_flight_are_capped_per_tenant(api: Client, sim: Client) -> None:
    """A receiver that never answers holds each ping's connection up to the delivery
    timeout: a tenant gets at most MAX_TENANT_PINGS in flight (then 429 + Retry-After),
    and another tenant's ping still goes. Fails before: every ping started a task (a
    security review: ~750 connections per key from the API process)."""
    from relay.api.pings import MAX_TENANT_PINGS

    hung = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    try:
        vid = await sim_video(sim, timeline=NEVER_DONE)
        made = []
        for key in (None, TENANT_B_KEY):
            resp = await api.post(
                "/v1/watches",
                json={"videoId": vid, "callbackUrl": f"http://127.0.0.1:{port}/hang"},
                headers=auth(key) if key else auth(),
            )
            assert resp.status == 201, await resp.text()
            made.append((await resp.json())["id"])
        a, b = made
        for _ in range(MAX_TENANT_PINGS):
            assert (await api.post(f"/v1/watches/{a}/ping", headers=auth())).status == 202
        refused = await api.post(f"/v1/watches/{a}/ping", headers=auth())
        assert refused.status == 429 and refused.headers["Retry-After"] == "1"
        assert (await refused.json())["type"].endswith("pings-in-flight")
        other = await api.post(f"/v1/watches/{b}/ping", headers=auth(TENANT_B_KEY))
        assert other.status == 202
    finally:
        hung.close()


async def test_a_range_larger_than_one_request_says_more_and_goes_on(
    api: Client, worker: Any, sim: Client, receiver: Rec, monkeypatch: Any
) -> None:
    """A recover whose time runs out before its range's end answers ``"more": true`` with
    what it put back so far; the same request again goes on, and the counts add up to every
    failed watch, each delivered once. Fails before: one request did the whole range, so
    millions of failures ran past the API's 5 s deadline -- a 503 after the work was partly
    done, and the client's retry reported only its own count (a CLI review, 2026-12-06)."""
    from relay.store import recovery

    since = iso(time.time() - 1)
    mine = [await failing_watch(api, sim, receiver, f"/big{i}") for i in range(5)]
    for wid in mine:
        assert (await wait_watch(api, wid))["status"] == "failed"
    monkeypatch.setattr(recovery, "RECOVER_BATCH", 2)
    monkeypatch.setattr(recovery, "RECOVER_BUDGET_S", 0.0)  # one call a request
    answers: list[dict[str, Any]] = []
    body = {"since": since, "until": "2999-01-01T00:00:00Z"}  # (a later until is now)
    asked = time.time()
    while not answers or answers[-1].get("more"):
        resp = await api.post("/v1/watches/recover", json=body, headers=auth())
        assert resp.status == 202
        answers.append(await resp.json())
        body["until"] = answers[-1].get("until", "")  # the range ends where the first did
        assert len(answers) <= 5, answers
    end = answers[0]["until"]
    at = datetime.fromisoformat(end.replace("Z", "+00:00")).timestamp()
    assert asked - 1 <= at <= time.time() + 1, end  # now, not 2999
    assert answers == [{"count": 2, "more": True, "until": end}] * 2 + [{"count": 1}], answers
    for wid in mine:
        assert (await wait_watch(api, wid))["status"] == "delivered"
    assert all(ids_by_path(receiver[0])[f"/big{i}"] == 5 for i in range(5))


def test_a_time_is_read_to_the_exact_millisecond() -> None:
    """The ``until`` an answer gives (``iso_ms``) reads back as the same millisecond, also
    where a float product would round one down (2039: a review found ...903 for .904)."""
    from relay.api.recovery import _time
    from relay.domain.events import iso_ms

    for ms in (2180153776904, 1796563458021, 0, 4102444800999):
        errors: list[dict[str, str]] = []
        assert _time({"t": iso_ms(ms)}, "t", errors) == ms and not errors, ms


async def test_a_ping_that_fails_unexpectedly_is_logged_with_its_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error a ping's task did not expect (not a failed send, which is its attempt's
    record) is logged with the watch's id, and the task is forgotten. Fails before: nothing
    retrieved it -- asyncio's "Task exception was never retrieved", with no watch id, when
    the task was collected (a review, 2026-12-08)."""
    from structlog.testing import capture_logs

    from relay import logs
    from relay.api import pings as pings_module
    from relay.api.pings import Pings

    async def broken() -> None:
        raise RuntimeError("cannot open the secret")

    pings = Pings(client=None)  # type: ignore[arg-type]  # (the task never sends)
    with capture_logs() as lines:
        # (a logger made now: the module's may be cached already, past capture_logs)
        monkeypatch.setattr(pings_module, "log", logs.get("relay.api.pings"))
        pings.start(broken(), "acme", "wat_" + "a" * 24)
        await asyncio.gather(*pings.tasks, return_exceptions=True)
        await asyncio.sleep(0)  # (the done callback runs on the next turn)
    said = [e for e in lines if e["event"] == "ping failed"]
    assert len(said) == 1 and said[0]["watch_id"] == "wat_" + "a" * 24, lines
    assert "RuntimeError: cannot open the secret" in said[0]["error"]
    assert not pings.tasks and not pings.by_tenant
