"""The client SDK's edges (clients/python, ``clip_relay_client``): how often each call is
sent against real servers on loopback that refuse, stall or answer 429/503, the sync and
async twins alike; what ``Retry-After`` and ``max_wait`` do; and ``verify()`` at and past
each of its limits. Each test here was asked for by a mutation review (2026-12-06): the
code it guards could be changed without any other test noticing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import clip_relay_client.webhooks as webhooks
from clip_relay_client import (
    ApiError,
    AsyncClient,
    Client,
    ConnectionFailed,
    WebhookVerificationError,
    verify,
)
from clip_relay_client._core import Call, Core, retry_after
from tests.conftest import serving

WATCH = {"id": "wat_x", "videoId": "v", "status": "watching"}


class Answers:
    """A real server whose every answer is *status* (+ ``Retry-After``), counting the
    requests per method and path; the raw path of each as it arrived."""

    def __init__(self, status: int, retry_after: str | None = "0") -> None:
        self.status = status
        self.retry_after = retry_after
        self.calls: Counter[str] = Counter()
        self.raw_paths: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.calls[f"{request.method} {request.path}"] += 1
        self.raw_paths.append(request.raw_path)
        if self.status < 400:
            return web.json_response(WATCH, status=self.status)
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        return web.json_response(
            {"type": "x", "title": "Busy", "status": self.status, "detail": "busy"},
            status=self.status,
            headers=headers,
            content_type="application/problem+json",
        )


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answers], Awaitable[str]]]:
    servers: list[TestServer] = []

    async def start(answers: Answers) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answers.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


SAFE = {  # call -> sent again on a 503 (max_retries=2: 3 requests) or not (1)
    "get": 3,
    "list": 3,
    "deliveries": 3,
    "cancel": 3,
    "recover": 3,
    "create with a key": 3,
    "create": 1,
    "redeliver": 1,
    "rotate": 1,
    "ping": 1,
}


def _calls(relay: Client | AsyncClient) -> dict[str, Callable[[], Any]]:
    """Each call of *relay* (an AsyncClient's return awaitables)."""
    return {
        "get": lambda: relay.get_watch("w1"),
        "list": lambda: relay.list_watches_page(),
        "deliveries": lambda: relay.deliveries("w2"),
        "cancel": lambda: relay.cancel_watch("w3"),
        "recover": lambda: relay.recover("2026-12-01T00:00:00Z"),
        "create with a key": lambda: relay.create_watch(
            video_id="v", callback_url="https://x.example/h", idempotency_key="k1"
        ),
        "create": lambda: relay.create_watch(video_id="v", callback_url="https://x.example/h"),
        "redeliver": lambda: relay.redeliver("w4"),
        "rotate": lambda: relay.rotate_secret("w5"),
        "ping": lambda: relay.ping("w6"),
    }


@pytest.mark.parametrize("status", [503, 429])
async def test_each_call_is_sent_again_only_when_safe_and_the_twins_agree(
    serve: Callable[[Answers], Awaitable[str]], status: int
) -> None:
    """A relay answering 503 to everything, ``max_retries=2``: reads, cancel, recover and a
    create with an Idempotency-Key are sent 3 times, then raise the ApiError; redeliver,
    rotate-secret, ping and a create without a key once (a 503 may come after the change
    was made: sending them again could rotate twice, or make a second watch). A 429 did
    nothing -- the relay refuses before it acts --, so every call is sent 3 times (an
    integrator's run: pings and rotations raised at once under the rate limit). ``Client``
    and ``AsyncClient`` alike."""
    answers = Answers(status)
    url = await serve(answers)

    def blocking() -> dict[str, int]:
        sent = {}
        with Client(url, "k", max_retries=2, backoff=0.001) as relay:
            for name, call in _calls(relay).items():
                before = answers.calls.total()
                with pytest.raises(ApiError) as raised:
                    call()
                assert raised.value.status == status
                sent[name] = answers.calls.total() - before
        return sent

    expected = SAFE if status == 503 else dict.fromkeys(SAFE, 3)
    assert await asyncio.to_thread(blocking) == expected
    sent = {}
    async with AsyncClient(url, "k", max_retries=2, backoff=0.001) as relay:
        for name, call in _calls(relay).items():
            before = answers.calls.total()
            with pytest.raises(ApiError) as raised:
                await call()
            assert raised.value.status == status
            sent[name] = answers.calls.total() - before
    assert sent == expected


class StartsOnTheSecondTry(httpx.AsyncHTTPTransport):
    """A real transport; before its second request it starts *start* (the server the first
    one found no listener for)."""

    def __init__(self, start: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self.tries = 0
        self.start = start

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.tries += 1
        if self.tries == 2:
            await self.start()
        return await super().handle_async_request(request)


async def test_a_refused_connection_is_tried_again_even_for_a_create_without_a_key() -> None:
    """Nothing reached a relay that refused the connection, so any call may go again, a
    create without an Idempotency-Key too: it succeeds once the relay listens."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the port is ours, nobody listens yet: refused
    port = sock.getsockname()[1]
    answers = Answers(201)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answers.handle)
    runner = web.AppRunner(app)
    await runner.setup()

    async def start() -> None:
        await web.SockSite(runner, sock).start()

    transport = StartsOnTheSecondTry(start)
    try:
        async with AsyncClient(
            f"http://127.0.0.1:{port}", "k", max_retries=2, backoff=0.001, transport=transport
        ) as relay:
            watch = await relay.create_watch(video_id="v", callback_url="https://x.example/h")
        assert watch.id == "wat_x" and transport.tries == 2
        assert answers.calls == Counter({"POST /v1/watches": 1})
    finally:
        await runner.cleanup()


async def test_a_create_without_a_key_that_timed_out_is_not_sent_again() -> None:
    """A create without an Idempotency-Key whose answer did not come in time may have made
    the watch: it is not sent again (ConnectionFailed after one request); a read is."""
    calls: list[str] = []

    async def stall(request: web.Request) -> web.Response:
        calls.append(request.method)
        await asyncio.sleep(1)
        return web.json_response(WATCH, status=201)

    async with (
        serving(stall) as url,
        AsyncClient(url, "k", timeout=0.2, max_retries=2, backoff=0.001) as relay,
    ):
        with pytest.raises(ConnectionFailed) as raised:
            await relay.create_watch(video_id="v", callback_url="https://x.example/h")
        assert isinstance(raised.value.__cause__, httpx.TimeoutException)
        assert calls == ["POST"]
        with pytest.raises(ConnectionFailed):
            await relay.get_watch("w")
        assert calls == ["POST", "GET", "GET", "GET"]


def test_the_wait_before_a_retry_follows_retry_after_up_to_max_wait() -> None:
    """``Retry-After`` in seconds or as an HTTP date sets the least wait, with the jittered
    backoff on top (callers told the same Retry-After came back together, and a tester's
    600 creates 20 at a time saw 13 fail on 429 after every retry), capped by
    ``max_wait``; one longer than ``max_wait`` is not waited out at all (a full tenant's 60
    s kept a create waiting ~1.5 min for the error it then raised: a new user's finding);
    a negative one is no wait."""
    core = Core("http://127.0.0.1:9", "k", backoff=0.001, max_wait=30.0)
    slow = Core("http://127.0.0.1:9", "k", backoff=20.0, max_wait=30.0)
    get = Call("GET", "/v1/watches/w", True)

    def answer(value: str) -> httpx.Response:
        return httpx.Response(503, headers={"retry-after": value})

    assert 2.0005 <= (core.wait_before_retry(get, 1, answer("2"), None) or 0) <= 2.001
    spread = Core("http://127.0.0.1:9", "k", backoff=0.5)
    waits = {spread.wait_before_retry(get, 1, answer("1"), None) for _ in range(20)}
    assert all(w is not None and 1.25 <= w <= 1.5 for w in waits) and len(waits) > 10, waits
    for asked in ("29.9", "30"):  # the backoff on top, capped by max_wait: never below it
        waits = {slow.wait_before_retry(get, 3, answer(asked), None) for _ in range(50)}
        assert all(w is not None and float(asked) <= w <= 30.0 for w in waits), waits
    capped = slow.wait_before_retry(get, 3, None, httpx.ConnectError("x"))  # (none asked)
    assert capped is not None and 24.0 <= capped <= 30.0, capped  # spread out below it
    assert core.wait_before_retry(get, 1, answer("3600"), None) is None  # more: the error
    assert core.wait_before_retry(get, 1, answer("31"), None) is None
    assert retry_after(answer("-5")) == 0.0
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    wait = retry_after(answer(soon))
    assert wait is not None and 0.5 < wait <= 2.5
    assert retry_after(answer("whenever")) is None
    assert retry_after(answer("nan")) is None and retry_after(answer("inf")) is None
    # not retried: a create without a key, or past max_retries
    assert core.wait_before_retry(Call("POST", "/v1/watches", False), 1, answer("0"), None) is None
    assert core.wait_before_retry(get, core.max_retries + 1, answer("0"), None) is None


def test_what_a_create_cannot_send_as_asked_is_refused_before_sending() -> None:
    """An empty Idempotency-Key was dropped (no key, no retry) where the relay refuses
    one; a NaN score raised json's "Out of range float values", naming no field; metadata
    that is no mapping raised dict()'s TypeError. (A tester, 2026-12-06.)"""
    from clip_relay_client._core import create_call

    args: dict[str, Any] = dict(
        video_id="v",
        callback_url="https://example.com/h",
        min_score=None,
        max_score=None,
        favorited_only=None,
        sort_by=None,
        sort_order=None,
        metadata=None,
        secret=None,
        idempotency_key=None,
    )
    with pytest.raises(ValueError, match="idempotency_key must not be empty"):
        create_call(**{**args, "idempotency_key": ""})
    with pytest.raises(ValueError, match="min_score must be a finite number"):
        create_call(**{**args, "min_score": float("nan")})
    with pytest.raises(ValueError, match="max_score must be a finite number"):
        create_call(**{**args, "max_score": float("inf")})
    # sent as it is: the relay's 422 names the field
    assert create_call(**{**args, "metadata": [1, 2]}).body == {
        "videoId": "v",
        "callbackUrl": "https://example.com/h",
        "metadata": [1, 2],
    }


async def test_watch_ids_stay_in_their_path_and_times_must_be_aware(
    serve: Callable[[Answers], Awaitable[str]],
) -> None:
    """A watch id is quoted into its own path segment (``w/deliveries`` never reaches
    another route), ``.`` and ``..`` are refused before any request, and a naive datetime
    is refused (it would be sent as local time without an offset)."""
    answers = Answers(200)
    url = await serve(answers)
    async with AsyncClient(url, "k") as relay:
        await relay.get_watch("w/deliveries")
        assert answers.raw_paths == ["/v1/watches/w%2Fdeliveries"]
        for bad in (".", ".."):
            with pytest.raises(ValueError, match="not a watch id"):
                await relay.get_watch(bad)
            with pytest.raises(ValueError, match="not a watch id"):
                await relay.cancel_watch(bad)
        with pytest.raises(ValueError, match="aware"):
            await relay.recover(datetime(2026, 1, 1))  # (naive on purpose)
    assert len(answers.raw_paths) == 1


async def test_arguments_of_the_wrong_type_are_refused_before_anything_is_sent(
    serve: Callable[[Answers], Awaitable[str]],
) -> None:
    """A black-box tester's finds (2026-12-07): a watch id or a time of the wrong type, a
    client setting that is not a number of seconds (a string read from the environment, a
    negative retry count), and headers that are not a mapping are each a clear error
    naming what is wrong -- not an AttributeError from inside the SDK, nor an error at the
    first call."""
    answers = Answers(200)
    url = await serve(answers)
    with Client(url, "k") as relay:
        for bad_id in (None, 123, b"wat_x"):
            with pytest.raises(TypeError, match="a watch id is a string"):
                relay.redeliver(bad_id)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="a watch id is a string"):
                relay.deliveries(bad_id)  # type: ignore[arg-type]
        for since in (5, None, b"2026-01-01T00:00:00Z"):
            with pytest.raises(TypeError, match="aware datetime or an RFC 3339 string"):
                relay.recover(since)  # type: ignore[arg-type]
    async with AsyncClient(url, "k") as arelay:
        with pytest.raises(TypeError, match="aware datetime"):
            await arelay.recover(datetime(2026, 1, 1, tzinfo=UTC), until=7)  # type: ignore[arg-type]
    assert answers.raw_paths == []
    settings: list[dict[str, Any]] = [
        {"timeout": "x"},
        {"timeout": -1},
        {"timeout": 0},
        {"timeout": float("nan")},
        {"backoff": -0.5},
        {"max_wait": "30"},
        {"max_retries": -1},
        {"max_retries": "3"},
        {"max_retries": True},
        {"max_retries": 1.5},
    ]
    for bad in settings:
        (name,) = bad
        with pytest.raises(ValueError, match=name):
            Client(url, "k", **bad)
        with pytest.raises(ValueError, match=name):
            AsyncClient(url, "k", **bad)
    with Client(url, "k", timeout=0.5, max_retries=0, backoff=0, max_wait=0):
        pass
    async with AsyncClient(url, "k", timeout=None) as arelay:  # (as httpx: no timeout)
        await arelay.get_watch("wat_x")
    async with AsyncClient(url, "k", timeout=httpx.Timeout(2.0, connect=1.0)) as arelay:
        await arelay.get_watch("wat_x")
    assert len(answers.raw_paths) == 2
    with pytest.raises(TypeError, match="headers"):
        verify(SECRET, BODY, None)  # type: ignore[arg-type]


async def test_recover_stops_when_the_relay_says_no_more(
    serve: Callable[[Answers], Awaitable[str]],
) -> None:
    """An answer with an ``until`` but ``"more": false`` ends the recover (one request)."""
    bodies: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response({"count": 3, "more": False, "until": "2026-12-06T00:00:00Z"})

    app = web.Application()
    app.router.add_post("/v1/watches/recover", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with AsyncClient(str(server.make_url("")).rstrip("/"), "k") as relay:
            assert await relay.recover("2026-12-01T00:00:00Z") == 3
        assert len(bodies) == 1
    finally:
        await server.close()


async def test_an_error_page_that_is_not_json_still_gives_a_problem() -> None:
    """A gateway's HTML 502 raises an ApiError whose ``problem`` holds its status and
    reason; a password in the base URL is masked in the blocking client's errors too."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text="<html>bad gateway</html>", status=502, content_type="text/html")

    def blocking(url: str) -> None:
        with Client(url, "k", max_retries=0) as relay, pytest.raises(ApiError) as raised:
            relay.get_watch("w")
        assert raised.value.status == 502
        assert raised.value.problem == {"status": 502, "title": "Bad Gateway"}
        # (not the relay's answer, which is always a problem document: it says so)
        assert "is the base URL the relay's" in str(raised.value), raised.value
        with (
            Client("http://me:s3cr3t-pw@127.0.0.1:9", "k", max_retries=0) as relay,
            pytest.raises(ConnectionFailed) as failed,
        ):
            relay.get_watch("w")
        assert "s3cr3t-pw" not in str(failed.value) and "me:***@127.0.0.1:9" in str(failed.value)

    async with serving(handle) as url:
        await asyncio.to_thread(blocking, url)


async def test_a_json_404_of_another_server_is_said_not_to_be_the_relays() -> None:
    """FastAPI's or DRF's ``{"detail": "Not Found"}`` (application/json, not a problem
    document) read as the relay's "no such watch": the hint is added to its detail."""

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"detail": "Not Found"}, status=404)

    def blocking(url: str) -> None:
        with Client(url, "k", max_retries=0) as relay, pytest.raises(ApiError) as raised:
            relay.get_watch("wat_x")
        said = str(raised.value)
        assert "Not Found" in said and "is the base URL the relay's" in said, said

    async with serving(handle) as url:
        await asyncio.to_thread(blocking, url)


def test_an_api_errors_text_names_each_field_once() -> None:
    """The relay's 422 puts its first field error in ``detail`` too: the message says it
    once, then the others."""
    doc = {
        "title": "Validation failed",
        "status": 422,
        "detail": "videoId: must be 1-128 characters",
        "errors": [
            {"field": "videoId", "message": "must be 1-128 characters"},
            {"field": "minScore", "message": "must be <= 100"},
        ],
    }
    raised = ApiError(422, doc["title"], doc["detail"], errors=doc["errors"])  # type: ignore[arg-type]
    text = str(raised)
    assert text.count("videoId") == 1 and "[minScore: must be <= 100]" in text


# -- verify() at its limits ------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
BODY = b'{"type":"watch.ping","timestamp":"2026-12-06T10:00:00Z","data":{"watchId":"w"}}'
TS = 1_796_000_000


def _sign(secret: str, body: bytes = BODY, msg_id: str = "evt_1", ts: int = TS) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_") + "=" * (-len(secret) % 4))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def _headers(signature: str, msg_id: str = "evt_1", ts: str = str(TS)) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": signature}


def test_verify_accepts_the_tolerance_itself_in_both_directions() -> None:
    headers = _headers("v1," + _sign(SECRET))
    assert verify(SECRET, BODY, headers, now=TS + 300).id == "evt_1"
    assert verify(SECRET, BODY, headers, now=TS - 300).id == "evt_1"


def test_verify_refuses_a_tolerance_or_a_now_that_would_let_any_timestamp_pass() -> None:
    """Rule: a tolerance or a time that is not a finite number (NaN compares false, so an
    old event would pass) or a negative tolerance is the caller's error, not a pass."""
    headers = _headers("v1," + _sign(SECRET))  # signed 10^6 s before 'now'
    for tolerance in (float("nan"), float("inf"), -1.0, True, 10**400, "300"):
        with pytest.raises(ValueError, match="tolerance"):
            verify(SECRET, BODY, headers, tolerance=tolerance, now=TS + 10**6)  # type: ignore[arg-type]
    for now in (float("nan"), float("inf"), float("-inf"), True, 10**400):
        with pytest.raises(ValueError, match="now"):
            verify(SECRET, BODY, headers, now=now)
    with pytest.raises(ValueError, match="tolerance"):  # (before the headers are looked at)
        verify(SECRET, BODY, {}, tolerance=float("nan"))
    with pytest.raises(WebhookVerificationError, match="old"):
        verify(SECRET, BODY, headers, tolerance=0, now=TS + 1)
    assert verify(SECRET, BODY, headers, tolerance=0, now=TS).id == "evt_1"


def test_verify_compares_every_signature_with_every_secret_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two secrets, two signatures: four constant-time comparisons, whichever matched
    (stopping at a match would tell the time of it); the matching secret may be first."""
    other = "whsec_" + base64.b64encode(b"o" * 24).decode()
    compared: list[int] = []
    real = hmac.compare_digest

    class CountingHmac:
        new = staticmethod(hmac.new)

        @staticmethod
        def compare_digest(a: bytes, b: bytes) -> bool:
            compared.append(1)
            return real(a, b)

    monkeypatch.setattr(webhooks, "hmac", CountingHmac)
    headers = _headers(f"v1,{_sign(SECRET)} v1,{_sign(other, msg_id='x')}")
    assert verify([SECRET, other], BODY, headers, now=TS).id == "evt_1"
    assert len(compared) == 4


def test_verify_refuses_what_is_not_a_v1_signature_of_an_event() -> None:
    good = _sign(SECRET)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(SECRET, BODY, _headers("v2," + good), now=TS)  # another scheme's label
    with pytest.raises(WebhookVerificationError, match="missing header webhook-id"):
        verify(SECRET, BODY, _headers("v1," + _sign(SECRET, msg_id=""), msg_id=""), now=TS)
    not_event = b'{"data":{}}'
    with pytest.raises(WebhookVerificationError, match="not an event"):
        verify(SECRET, not_event, _headers("v1," + _sign(SECRET, not_event)), now=TS)
    with pytest.raises(WebhookVerificationError, match="invalid webhook-timestamp"):
        verify(SECRET, BODY, _headers("v1," + good, ts="9" * 5000), now=TS)
    with pytest.raises(ValueError, match="at least one"):
        verify([], BODY, _headers("v1," + good), now=TS)


def test_verify_reads_secrets_with_or_without_padding_and_refuses_a_typo() -> None:
    """A secret whose base64 lost its ``=`` padding (a 16-byte key) still verifies; one
    with a stray character pasted in is a ValueError, not a secret that matches nothing."""
    padded = "whsec_" + base64.b64encode(b"s" * 16).decode()
    assert padded.endswith("==")
    unpadded = padded.rstrip("=")
    headers = _headers("v1," + _sign(padded))
    assert verify(unpadded, BODY, headers, now=TS).id == "evt_1"
    with pytest.raises(ValueError, match="base64"):
        verify(padded + "!", BODY, headers, now=TS)
