"""The client SDK (clients/python, ``clip_relay_client``) against the real API on loopback:
every method of ``Client`` and ``AsyncClient``, errors as problem documents, retries, and
``verify()`` on what the relay really sent (SPEC.md, "Client SDK")."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks import Webhook

from clip_relay_client import (
    ApiError,
    AsyncClient,
    Client,
    ClipRelayError,
    ConnectionFailed,
    Event,
    WebhookVerificationError,
    verify,
)
from relay.devtools.receiver import Receiver
from tests.conftest import TENANT_A_KEY, TENANT_B_KEY, ApiFactory
from tests.test_worker import sim_video

Api = TestClient[web.Request, web.Application]
Rec = tuple[Receiver, str]
NEVER_DONE = [{"status": "analyzing", "progress": 10, "after": 0}]


def base(api: Api) -> str:
    return str(api.make_url("")).rstrip("/")


def exercise_sync(url: str, callback: str, video_ids: list[str], rec: Receiver) -> dict[str, Any]:
    """Every method of the blocking client, in a thread (the API runs in the test's loop)."""
    seen: dict[str, Any] = {}
    with Client(url, TENANT_A_KEY, timeout=5) as relay:
        first = relay.create_watch(
            video_id=video_ids[0],
            callback_url=callback,
            min_score=50,
            metadata={"order": 7},
            idempotency_key="sdk-sync-1",
        )
        again = relay.create_watch(
            video_id=video_ids[0],
            callback_url=callback,
            min_score=50,
            metadata={"order": 7},
            idempotency_key="sdk-sync-1",
        )
        seen["replay"] = (first.id, first.secret, again.id, again.secret)
        seen["first"] = first
        rec.add_secret(first.secret or "")
        for vid in video_ids[1:]:
            relay.create_watch(video_id=vid, callback_url=callback)
        seen["got"] = relay.get_watch(first.id)
        seen["listed"] = [w.id for w in relay.list_watches(page_size=2)]
        seen["listed_big"] = [w.id for w in relay.list_watches(page_size=500)]  # (API: 100)
        first_page = relay.list_watches_page(limit=2)
        seen["pages"] = (
            first_page,
            relay.list_watches_page(limit=2, cursor=first_page.next_cursor),
        )
        seen["from_cursor"] = [w.id for w in relay.list_watches(cursor=first_page.next_cursor)]
        seen["by_video"] = [w.id for w in relay.list_watches(video_id=video_ids[0])]
        seen["rotation"] = relay.rotate_secret(first.id)
        relay.ping(first.id)
        deadline = time.monotonic() + 5
        while not (attempts := relay.deliveries(first.id)) and time.monotonic() < deadline:
            time.sleep(0.02)
        seen["deliveries"] = attempts
        seen["recovered"] = relay.recover(datetime.now(UTC) - timedelta(hours=1))
        with pytest.raises(ApiError) as not_redeliverable:
            relay.redeliver(first.id)
        seen["redeliver_error"] = not_redeliverable.value
        relay.cancel_watch(first.id)
        seen["cancelled"] = relay.get_watch(first.id).status
        with pytest.raises(ApiError) as missing:
            relay.get_watch("wat_" + "a" * 24)
        seen["missing"] = missing.value
        with pytest.raises(ApiError) as bad:
            relay.create_watch(video_id="no spaces", callback_url=callback, min_score=101)
        seen["invalid"] = bad.value
    with Client(url, "not-a-key") as stranger, pytest.raises(ApiError) as denied:
        stranger.get_watch(first.id)
    seen["denied"] = denied.value
    return seen


async def test_every_method_of_the_blocking_client(
    api: Api, sim: Api, receiver: Rec, worker: Any
) -> None:
    """Create (an idempotent replay gives the same id and secret), get, list across pages and
    by video, rotate, ping, deliveries, recover, redeliver, cancel; API errors carry the
    problem document (status, title, detail, errors)."""
    rec, rbase = receiver
    vids = [await sim_video(sim, timeline=NEVER_DONE) for _ in range(5)]
    seen = await asyncio.to_thread(exercise_sync, base(api), rbase + "/sdk", vids, rec)
    a_id, a_secret, b_id, b_secret = seen["replay"]
    assert a_id == b_id and a_secret == b_secret and a_secret.startswith("whsec_")
    first = seen["first"]
    assert first.video_id == vids[0] and first.min_score == 50 and first.metadata == {"order": 7}
    assert first.status == "watching" and first.created_at is not None
    assert seen["got"].id == first.id and seen["got"].secret is None
    assert seen["got"].raw["videoId"] == vids[0]
    assert len(seen["listed"]) == 5 and len(set(seen["listed"])) == 5  # across three pages
    assert seen["listed_big"] == seen["listed"]  # a page size over the API's cap: its cap
    assert "secret" not in repr(first) and first.secret  # (not in a log line by repr)
    assert "secret=" not in repr(seen["rotation"])
    one, two = seen["pages"]  # page by page: the same watches, the same order
    assert [w.id for w in one.data + two.data] == seen["listed"][:4] and one.next_cursor
    assert seen["from_cursor"] == seen["listed"][2:]
    assert seen["by_video"] == [first.id]
    assert seen["rotation"].secret.startswith("whsec_")
    assert seen["rotation"].previous_secret_expires_at is not None
    (ping,) = seen["deliveries"]
    assert ping.event_type == "watch.ping" and ping.attempt == 1 and ping.status_code == 204
    assert seen["recovered"] == 0
    assert seen["redeliver_error"].status == 409
    assert seen["cancelled"] == "cancelled"
    missing = seen["missing"]
    assert missing.status == 404 and missing.title and missing.problem["status"] == 404
    invalid = seen["invalid"]
    assert invalid.status == 422
    assert {e["field"] for e in invalid.errors} >= {"videoId", "minScore"}
    assert seen["denied"].status == 401 and seen["denied"].title == "Unauthorized"
    # the ping reached the receiver, signed with the watch's secrets (both after rotation)
    (raw,) = rec.bodies("/sdk")
    headers = next(e.attempt_headers for e in rec.events if e.path == "/sdk")
    for secret in (a_secret, seen["rotation"].secret):
        event = verify(secret, raw[1], headers)
        assert event.type == "watch.ping" and event.id == ping.event_id


async def test_every_method_of_the_async_client(
    api: Api, sim: Api, receiver: Rec, worker: Any
) -> None:
    """The same methods, awaited; list_watches is an async iterator over every page; a
    delivered watch can be redelivered and its attempts read."""
    rec, rbase = receiver
    async with AsyncClient(base(api), TENANT_A_KEY, timeout=5) as relay:
        vid = await sim_video(sim)
        w = await relay.create_watch(
            video_id=vid, callback_url=rbase + "/async", sort_by="duration"
        )
        rec.add_secret(w.secret or "")
        same = await relay.create_watch(
            video_id=vid, callback_url=rbase + "/async", idempotency_key="sdk-async"
        )
        replay = await relay.create_watch(
            video_id=vid, callback_url=rbase + "/async", idempotency_key="sdk-async"
        )
        assert (same.id, same.secret) == (replay.id, replay.secret)
        deadline = time.monotonic() + 10
        while (got := await relay.get_watch(w.id)).status != "delivered":
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
        assert got.sort_by == "duration" and got.delivered_at is not None
        listed = [x.id async for x in relay.list_watches(page_size=1)]
        assert sorted(listed) == sorted({w.id, same.id})
        page = await relay.list_watches_page(limit=1)
        rest = await relay.list_watches_page(limit=1, cursor=page.next_cursor)
        assert [x.id for x in page.data + rest.data] == listed
        assert w.id in [x.id async for x in relay.list_watches(status="delivered")]
        again = await relay.redeliver(w.id)
        assert again.id == w.id and again.status == "delivering"
        while len(attempts := await relay.deliveries(w.id)) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert {a.event_id for a in attempts} == {attempts[0].event_id}
        assert (await relay.rotate_secret(w.id)).secret.startswith("whsec_")
        await relay.ping(w.id)
        assert await relay.recover("2020-01-01T00:00:00Z", datetime.now(UTC)) == 0
        await relay.cancel_watch(same.id)
        assert (await relay.get_watch(same.id)).status == "cancelled"
        with pytest.raises(ApiError) as missing:
            await relay.get_watch("wat_" + "b" * 24)
        assert missing.value.status == 404
    async with AsyncClient(base(api), TENANT_B_KEY) as other:
        with pytest.raises(ApiError) as hidden:
            await other.get_watch(w.id)
        assert hidden.value.status == 404


async def test_verify_accepts_what_the_relay_sent_and_agrees_with_standardwebhooks(
    api: Api, sim: Api, receiver: Rec, worker: Any
) -> None:
    """verify() accepts a real clips.ready as sent and returns a typed event that reads like
    the JSON; it rejects a tampered body, a wrong secret and a stale or future timestamp,
    exactly where the standardwebhooks package does."""
    rec, rbase = receiver
    async with AsyncClient(base(api), TENANT_A_KEY) as relay:
        w = await relay.create_watch(
            video_id=await sim_video(sim), callback_url=rbase + "/v", metadata={"k": "v"}
        )
    secret = w.secret or ""
    rec.add_secret(secret)
    await rec.wait_for(1, timeout=10)
    (_, body, _), event_seen = rec.bodies("/v")[0], rec.events[0]
    headers = event_seen.attempt_headers
    event = verify(secret, body, headers)
    assert isinstance(event, Event)
    assert event.type == "clips.ready" and event.id == event_seen.webhook_id
    assert event.timestamp.tzinfo is not None
    assert event.data["watchId"] == w.id and event.data["metadata"] == {"k": "v"}
    assert dict(event) == event_seen.event and event["data"]["count"] == len(event.data["clips"])
    assert Webhook(secret).verify(body, headers) == dict(event)

    other = "whsec_" + "QUJD" * 8
    ts = int(headers["webhook-timestamp"])
    bad_cases = [
        (secret, body.replace(b'"count"', b'"coun7"'), headers, None),
        (other, body, headers, None),
        (secret, body, headers, ts + 301.0),  # stale: 5 minutes and a second later
        (secret, body, headers, ts - 301.0),  # from the future
        (secret, body, {k: v for k, v in headers.items() if k != "webhook-id"}, None),
        (secret, body, {**headers, "webhook-signature": "v1,AAAA"}, None),
    ]
    for key, data, hdrs, now in bad_cases:
        with pytest.raises(WebhookVerificationError):
            verify(key, data, hdrs, now=now)
        if now is None:
            with pytest.raises(Exception):  # noqa: B017, PT011 - the library's own error types
                Webhook(key).verify(data, hdrs)
    assert verify(secret, body, headers, now=ts + 299.0).id == event.id
    assert verify([other, secret], body, headers).type == "clips.ready"


def test_verify_accepts_what_standardwebhooks_signs() -> None:
    """A message signed by the standardwebhooks package, among several signatures (a secret
    being rotated), and with upper-case header names."""
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    hook = Webhook(secret)
    body = b'{"type":"watch.ping","timestamp":"2026-11-28T10:00:00Z","data":{"watchId":"w"}}'
    now = datetime.now(UTC)
    sig = hook.sign("evt_1", now, body.decode())
    headers = {
        "Webhook-Id": "evt_1",
        "Webhook-Timestamp": str(int(now.timestamp())),
        "Webhook-Signature": "v1,bm90IGl0 " + sig,
    }
    event = verify(secret, body, headers)
    assert event.type == "watch.ping" and event.data == {"watchId": "w"} and event.id == "evt_1"
    # the prefix may be left off, as the other Standard Webhooks libraries allow
    assert verify(secret.removeprefix("whsec_"), body, headers).id == "evt_1"
    with pytest.raises(ValueError, match="base64"):
        verify("not-a-secret", body, headers)
    # no secret at all (an unset environment variable): the documented ValueError too
    with pytest.raises(ValueError, match="webhook secret"):
        verify(None, body, headers)  # type: ignore[arg-type]
    # a setting half filled in: the same ValueError, not "no matching signature" (a 400 the
    # relay would retry for ever; tester, 2026-12-06)
    with pytest.raises(ValueError, match="empty after whsec_"):
        verify("whsec_", body, headers)
    with pytest.raises(WebhookVerificationError, match=r"(399|400) s in the future"):
        verify(secret, body, headers, now=now.timestamp() - 400)
    # just over the tolerance reads as over it, not as the tolerance itself
    stamp = int(headers["Webhook-Timestamp"])
    with pytest.raises(WebhookVerificationError, match=r"301 s in the future \(tolerance 300"):
        verify(secret, body, headers, now=stamp - 300.5)
    with pytest.raises(WebhookVerificationError, match=r"301 s old"):
        verify(secret, body, headers, now=stamp + 300.5)


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[str, list[str]]]:
    """A real server answering 503 + Retry-After twice, then 200 (a watch document)."""
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        calls.append(request.method + " " + request.path)
        if request.path.endswith("/slow"):
            await asyncio.sleep(1)
        if len(calls) % 3 != 0:
            return web.json_response(
                {"type": "x", "title": "Service unavailable", "status": 503, "detail": "busy"},
                status=503,
                headers={"Retry-After": "0.05"},
                content_type="application/problem+json",
            )
        return web.json_response({"id": "wat_x", "videoId": "v", "status": "watching"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), calls
    await server.close()


async def test_retries_only_calls_that_are_safe_to_repeat(flaky: tuple[str, list[str]]) -> None:
    """503 + Retry-After: a read and a create with an Idempotency-Key are sent again until
    they succeed; a create without one is not (the ApiError says 503)."""
    url, calls = flaky
    async with AsyncClient(url, "k", backoff=0.01) as relay:
        assert (await relay.get_watch("wat_x")).id == "wat_x"
        assert len(calls) == 3
        with pytest.raises(ApiError) as once:
            await relay.create_watch(video_id="v", callback_url="https://x.example/h")
        assert once.value.status == 503 and once.value.retry_after == 0.05
        assert len(calls) == 4
        calls.clear()
        w = await relay.create_watch(
            video_id="v", callback_url="https://x.example/h", idempotency_key="k1"
        )
        assert w.id == "wat_x" and len(calls) == 3


def _refused_then_slow(url: str) -> tuple[float, float]:
    started = time.monotonic()
    with (
        Client("http://127.0.0.1:9", "k", max_retries=2, backoff=0.01) as relay,
        pytest.raises(ConnectionFailed) as refused_error,
    ):
        relay.get_watch("wat_x")
    assert isinstance(refused_error.value.__cause__, httpx.ConnectError)
    assert isinstance(refused_error.value, ClipRelayError)
    refused = time.monotonic() - started
    started = time.monotonic()
    with (
        Client(url, "k", timeout=0.2, max_retries=0) as slow,
        pytest.raises(ConnectionFailed) as slow_error,
    ):
        slow.get_watch("slow")
    assert isinstance(slow_error.value.__cause__, httpx.TimeoutException)
    return refused, time.monotonic() - started


async def test_connection_errors_and_timeouts(flaky: tuple[str, list[str]]) -> None:
    """A refused connection is retried, then raised as ConnectionFailed (a ClipRelayError,
    the transport's error its cause); *timeout* bounds each request."""
    url, calls = flaky
    refused, slow = await asyncio.to_thread(_refused_then_slow, url)
    assert refused < 5 and slow < 0.9 and calls == ["GET /v1/watches/slow"]
    async with AsyncClient("http://127.0.0.1:9", "k", max_retries=1, backoff=0.01) as relay:
        with pytest.raises(ConnectionFailed) as raised:
            await relay.get_watch("wat_x")
    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert isinstance(raised.value, httpx.TransportError)  # (what callers caught before)
    with pytest.raises(ValueError, match="api_key"):
        Client("http://127.0.0.1:9", "")
    # a password in the base URL is not in the error's message (a review, 2026-12-06)
    async with AsyncClient("http://me:s3cr3t-pw@127.0.0.1:9", "k", max_retries=0) as relay:
        with pytest.raises(ConnectionFailed) as raised:
            await relay.get_watch("wat_x")
    assert "s3cr3t-pw" not in str(raised.value) and "me:***@127.0.0.1:9" in str(raised.value)
    async with AsyncClient("http://T0KEN-xyz@127.0.0.1:9", "k", max_retries=0) as relay:
        with pytest.raises(ConnectionFailed) as raised:
            await relay.get_watch("wat_x")
    assert "T0KEN-xyz" not in str(raised.value) and "//***@127.0.0.1:9" in str(raised.value)
    for bad in ("127.0.0.1:8080", "ftp://relay", "http://[::1"):
        with pytest.raises(ValueError, match="base_url"):
            Client(bad, "k")


async def test_an_answer_that_is_not_the_relays_is_a_clip_relay_error() -> None:
    """A proxy's or captive portal's 200 page (not JSON, JSON but not an object, or empty)
    raises ApiError, a ClipRelayError -- never a bare JSON or type error; a NaN is refused
    before sending."""
    pages = iter(
        [("<html>sign in</html>", "text/html"), ("[1, 2]", "application/json")] * 2
        + [("", "application/json")]
        + [('{"status": "error", "message": "bad gateway"}', "application/json")] * 2
    )

    async def handle(request: web.Request) -> web.Response:
        text, kind = next(pages)
        status = 502 if "bad gateway" in text else 200
        return web.Response(text=text, content_type=kind, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        async with AsyncClient(url, "k") as relay:
            for _ in range(2):
                with pytest.raises(ApiError, match="not a JSON object") as raised:
                    await relay.get_watch("wat_x")
                assert isinstance(raised.value, ClipRelayError) and raised.value.status == 200

        def blocking() -> None:
            with Client(url, "k") as relay:
                for _ in range(2):
                    with pytest.raises(ApiError, match="is the base URL the relay's"):
                        relay.get_watch("wat_x")
                with pytest.raises(ApiError, match="not a JSON object"):  # an empty 200
                    relay.get_watch("wat_x")
                with pytest.raises(ValueError, match="min_score must be a finite number"):
                    relay.create_watch(video_id="v", callback_url=url, min_score=float("nan"))
                # a gateway's JSON error whose "status" is no number: the answer's own status
                # (a bare ValueError before; tester, 2026-12-06)
                with Client(url, "k", max_retries=0) as once, pytest.raises(ApiError) as raised:
                    once.get_watch("wat_x")
                assert raised.value.status == 502

        await asyncio.to_thread(blocking)
    finally:
        await server.close()


async def test_recover_sends_again_while_the_relay_says_more() -> None:
    """``recover`` of a range larger than one request: the relay answers ``"more": true``
    with what it put back so far and the range's end it used; the client sends the request
    again with that end until the answer has no ``more``, and returns the total (sync and
    async alike)."""
    end = "2026-12-06T10:00:00.001Z"
    answers = [
        {"count": 200, "more": True, "until": end},
        {"count": 200, "more": True, "until": end},
        {"count": 7},
    ]
    bodies: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response(answers[(len(bodies) - 1) % 3], status=202)

    app = web.Application()
    app.router.add_post("/v1/watches/recover", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        async with AsyncClient(url, "k") as relay:
            assert await relay.recover("2026-12-01T00:00:00Z") == 407
        since = "2026-12-01T00:00:00Z"  # (then the end the relay used: the range stays put)
        assert bodies == [{"since": since}] + [{"since": since, "until": end}] * 2

        def sync_recover() -> int:
            with Client(url, "k") as relay:
                return relay.recover("2026-12-01T00:00:00Z")

        assert await asyncio.to_thread(sync_recover) == 407
        assert len(bodies) == 6
    finally:
        await server.close()


async def test_a_full_tenant_is_an_error_at_once_not_after_minutes_of_retries(
    make_api: ApiFactory, sim: Api, receiver: Rec
) -> None:
    """A tenant at ``RELAY_TENANT_MAX_WATCHES`` answers 429 with ``Retry-After: 60``, more
    than the client's ``max_wait`` (30 s): a create with an Idempotency-Key (retried on
    429) raises at once with ``.retry_after``; before, it waited 3 x ~30 s for the same
    error (a new user's finding). (A short one is still waited out: test_sdk_edges.py.)"""
    api = await make_api(tenant_max_watches=1)
    _, rbase = receiver
    vid = await sim_video(sim, timeline=NEVER_DONE)
    async with AsyncClient(base(api), TENANT_A_KEY, timeout=5) as relay:
        await relay.create_watch(video_id=vid, callback_url=rbase + "/h", idempotency_key="a")
        started = time.monotonic()
        with pytest.raises(ApiError) as raised:
            await relay.create_watch(video_id=vid, callback_url=rbase + "/h", idempotency_key="b")
        assert time.monotonic() - started < 2.0
        assert raised.value.status == 429 and raised.value.retry_after == 60.0
        # (the relay's id of the request, as its log line names it)
        assert re.fullmatch(r"[0-9a-f]{16}", raised.value.request_id or ""), raised.value


async def test_a_base_url_with_its_v1_gets_a_404_that_says_so(api: Api) -> None:
    """``Client("https://relay/v1", ...)`` sends ``/v1/v1/...``: the relay's 404 then says
    the base URL ends in /v1 (a bare "404 Not Found" before: a new user's finding); the
    base URL itself is not refused (a gateway may serve the relay under a /v1 of its own)."""
    async with AsyncClient(base(api) + "/v1/", TENANT_A_KEY, timeout=5) as relay:
        with pytest.raises(ApiError) as raised:
            await relay.get_watch("wat_" + "a" * 24)
    assert raised.value.status == 404
    assert "the base URL ends in /v1" in (raised.value.detail or ""), raised.value
    async with AsyncClient(base(api), TENANT_A_KEY, timeout=5) as relay:
        with pytest.raises(ApiError) as raised:
            await relay.get_watch("wat_" + "a" * 24)
    assert "/v1" not in (raised.value.detail or "")  # (an unknown watch: no such hint)


def test_an_api_error_survives_pickling_and_copying() -> None:
    """An ApiError raised in a process pool's worker comes back whole (an integrator's run:
    it could not be unpickled, and the pool reported itself broken); it carries the
    answer's X-Request-Id, which the relay's logs name the request by."""
    import copy

    from clip_relay_client import ApiError

    error = ApiError(
        422,
        "Validation failed",
        "minScore: too big",
        type="https://clip-relay.dev/problems/validation",
        errors=[{"field": "minScore", "message": "too big"}],
        problem={"status": 422, "title": "Validation failed"},
        retry_after=None,
        request_id="4f2a9c0d1e7b3a65",
    )
    # (pickle and copy rebuild an object by its __reduce__: what a pool's worker sends back)
    factory, args = error.__reduce__()[:2]
    for again in (factory(*args), copy.copy(error), copy.deepcopy(error)):
        assert type(again) is ApiError and str(again) == str(error)
        assert vars(again) == vars(error)


def test_statuses_and_event_types_are_typed_as_the_relay_names_them() -> None:
    """``Watch.status``, ``list_watches(status=)`` and ``Event.type`` carry the relay's
    names as Literal types, so a misspelt status is a type error, not a 422 at run time (an
    integrator's run: they were ``str``). mypy --strict checks this in ``make lint``."""
    from typing import assert_type

    from clip_relay_client import Event, EventType, Watch, WatchStatus

    w = Watch.from_json({"id": "wat_1", "status": "delivered", "lastEventType": "clips.ready"})
    assert assert_type(w.status, WatchStatus) == "delivered"
    assert w.last_event_type == "clips.ready"
    event = Event({"type": "watch.ping", "timestamp": "2026-12-07T10:00:00Z", "data": {}})
    assert assert_type(event.type, EventType) == "watch.ping"


def test_verify_takes_the_headers_every_server_has() -> None:
    """The standard library's ``http.server`` headers (an ``email.message.Message``) are
    accepted by the type of ``verify``'s *headers*, as at run time (an integrator's run:
    mypy refused them), beside a dict and aiohttp's."""
    from email.message import Message

    from multidict import CIMultiDict, CIMultiDictProxy

    from clip_relay_client import TOLERANCE, Headers

    message = Message()
    message["Webhook-Id"] = "evt_1"
    for headers in (message, {"webhook-id": "evt_1"}, CIMultiDictProxy(CIMultiDict(message))):
        typed: Headers = headers
        with pytest.raises(WebhookVerificationError, match="webhook-timestamp"):
            verify("whsec_" + "A" * 32, b"{}", typed)
    assert TOLERANCE == 300
