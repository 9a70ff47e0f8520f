"""The registration API over real HTTP, backed by a real Redis-protocol server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import TypeAdapter
from redis.asyncio import Redis

from relay import constants as c
from relay.api.models import DeliveryList, WatchCreated, WatchList, WatchOut
from relay.api.openapi import document
from relay.domain.signing import generate_secret, is_valid_secret
from relay.domain.userinfo import shown as shown_url
from tests.conftest import TENANT_B_KEY, ApiFactory, auth

Client = TestClient[web.Request, web.Application]
CALLBACK = "http://127.0.0.1:9/hook"


def body(**overrides: Any) -> dict[str, Any]:
    """A valid registration body."""
    data: dict[str, Any] = {"videoId": "vid_1", "callbackUrl": CALLBACK}
    data.update(overrides)
    return data


async def create(api: Client, key: str | None = None, **overrides: Any) -> dict[str, Any]:
    resp = await api.post(
        "/v1/watches", json=body(**overrides), headers=auth(key) if key else auth()
    )
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    data: dict[str, Any] = await resp.json()
    assert {"type", "title", "status", "detail"} <= set(data)
    assert data["status"] == status
    return data


# --- registration ---------------------------------------------------------------------------


async def test_create_returns_watch_with_secret_and_location(api: Client) -> None:
    resp = await api.post("/v1/watches", json=body(minScore=80), headers=auth())
    assert resp.status == 201
    data = await resp.json()
    WatchCreated.model_validate(data)
    assert data["id"].startswith("wat_")
    assert resp.headers["Location"] == f"/v1/watches/{data['id']}"
    assert is_valid_secret(data["secret"])
    assert data["status"] == "watching"
    assert data["minScore"] == 80
    assert data["maxScore"] is None
    assert data["favoritedOnly"] is False
    assert (data["sortBy"], data["sortOrder"]) == ("score", "desc")
    assert data["metadata"] == {}
    assert data["videoStatus"] is None and data["videoProgress"] is None
    assert data["lastEventType"] is None and data["deliveredAt"] is None


async def test_secret_only_returned_at_creation(api: Client) -> None:
    created = await create(api)
    resp = await api.get(f"/v1/watches/{created['id']}", headers=auth())
    assert "secret" not in await resp.json()


async def test_given_secret_is_kept(api: Client) -> None:
    secret = generate_secret()
    created = await create(api, secret=secret)
    assert created["secret"] == secret


async def test_all_fields_round_trip(api: Client) -> None:
    created = await create(
        api,
        minScore=10.5,
        maxScore=90,
        favoritedOnly=True,
        sortBy="duration",
        sortOrder="asc",
        metadata={"job": 7, "tags": ["a"]},
    )
    resp = await api.get(f"/v1/watches/{created['id']}", headers=auth())
    got = await resp.json()
    WatchOut.model_validate(got)
    assert got["minScore"] == 10.5 and got["maxScore"] == 90
    assert b'"maxScore":90,' in await resp.read()  # (as given: not 90.0)
    assert got["favoritedOnly"] is True
    assert (got["sortBy"], got["sortOrder"]) == ("duration", "asc")
    assert got["metadata"] == {"job": 7, "tags": ["a"]}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"videoId": ""}, "videoId"),
        ({"videoId": "a" * 129}, "videoId"),
        ({"videoId": "has space"}, "videoId"),
        ({"videoId": "slash/inside"}, "videoId"),
        ({"videoId": 123}, "videoId"),
        ({"callbackUrl": "not a url"}, "callbackUrl"),
        ({"callbackUrl": "ftp://example.com/x"}, "callbackUrl"),
        ({"callbackUrl": "/relative"}, "callbackUrl"),
        ({"callbackUrl": "http://127.0.0.1/" + "a" * 2048}, "callbackUrl"),
        ({"minScore": -1}, "minScore"),
        ({"minScore": 100.5}, "minScore"),
        ({"minScore": "80"}, "minScore"),
        ({"minScore": True}, "minScore"),
        ({"maxScore": 101}, "maxScore"),
        ({"minScore": 50, "maxScore": 40}, "maxScore"),
        ({"favoritedOnly": "yes"}, "favoritedOnly"),
        ({"favoritedOnly": 1}, "favoritedOnly"),
        ({"sortBy": "title"}, "sortBy"),
        ({"sortOrder": "up"}, "sortOrder"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"metadata": {"x": "y" * 5000}}, "metadata"),
        ({"secret": "not-a-secret"}, "secret"),
        ({"secret": "whsec_dG9vc2hvcnQ="}, "secret"),
        ({"color": "red"}, "color"),
    ],
)
async def test_validation_errors_name_the_field(
    api: Client, overrides: dict[str, Any], field: str
) -> None:
    resp = await api.post("/v1/watches", json=body(**overrides), headers=auth())
    data = await problem(resp, 422)
    assert field in [e["field"] for e in data["errors"]], data
    assert all(e["message"] for e in data["errors"])


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        ({"metadata": [1, 2]}, "metadata: must be a JSON object"),
        ({"minScore": "80"}, "minScore: must be a number"),
        ({"favoritedOnly": "yes"}, "favoritedOnly: must be true or false"),
        ({"callbackUrl": 7}, "callbackUrl: must be a string"),
    ],
)
async def test_a_wrong_json_type_is_named_in_the_apis_words(
    api: Client, overrides: dict[str, Any], said: str
) -> None:
    """Not pydantic's "Input should be a valid dictionary": the JSON type, as the API's
    own messages name it (a tester, 2026-12-06)."""
    data = await problem(await api.post("/v1/watches", json=body(**overrides), headers=auth()), 422)
    assert data["detail"] == said, data


async def test_missing_required_fields_are_listed(api: Client) -> None:
    resp = await api.post("/v1/watches", json={}, headers=auth())
    data = await problem(resp, 422)
    assert {e["field"] for e in data["errors"]} == {"videoId", "callbackUrl"}


@pytest.mark.parametrize(
    "url", ["nope", "http://10.0.0.1/x", "ftp://127.0.0.1/x", "http:\n//u:p@127.0.0.1:9/x"]
)
async def test_the_callbacks_own_rules_are_listed_beside_other_bad_fields(
    api: Client, url: str
) -> None:
    """Every bad field in one answer: the callback URL's own checks (scheme, SSRF) run even
    when another field failed validation. Fails before: only minScore was listed."""
    resp = await api.post(
        "/v1/watches", json=body(videoId="x y", callbackUrl=url, minScore=200), headers=auth()
    )
    data = await problem(resp, 422)
    assert {e["field"] for e in data["errors"]} == {"videoId", "callbackUrl", "minScore"}


async def test_a_password_in_the_callback_url_is_never_shown(api: Client) -> None:
    """A callback URL's password is sent as Basic authorization: a credential. The API (and
    so the CLI, the SDK and the dashboard, which show its watch shape) shows it as ***."""
    url = "http://hook-user:pw-S3CRET@127.0.0.1:9/hook?a=b@c#x"
    made = await create(api, callbackUrl=url)
    shown = "http://hook-user:***@127.0.0.1:9/hook?a=b@c#x"
    assert made["callbackUrl"] == shown
    got = await api.get(f"/v1/watches/{made['id']}", headers=auth())
    listed = await api.get("/v1/watches", headers=auth())
    for resp in (got, listed):
        text = await resp.text()
        assert "pw-S3CRET" not in text and shown in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1/x", "http://127.0.0.1/x"),
        ("http://tok3n@127.0.0.1/x", "http://***@127.0.0.1/x"),  # a user alone: a token
        ("http://@127.0.0.1/x", "http://***@127.0.0.1/x"),
        ("http://u:p@[::1]:8/x@y", "http://u:***@[::1]:8/x@y"),
        ("https://u:p:q@h", "https://u:***@h"),
        ("http://:p@h/", "http://:***@h/"),
        ("http:\n//u:p@h/", "http://u:***@h/"),  # (stored before such URLs were refused)
        ("http:/\t/u:p@h/", "http://u:***@h/"),
    ],
)
def test_shown_url(url: str, shown: str) -> None:
    assert shown_url(url) == shown


@pytest.mark.parametrize("payload", [b"{", b"nope", b'{"videoId": "a",}', b"\xff\xfe"])
async def test_malformed_json_is_400(api: Client, payload: bytes) -> None:
    resp = await api.post(
        "/v1/watches", data=payload, headers={**auth(), "Content-Type": "application/json"}
    )
    await problem(resp, 400)


@pytest.mark.parametrize("payload", [b"[]", b"42", b'"x"', b"null"])
async def test_non_object_body_is_422(api: Client, payload: bytes) -> None:
    resp = await api.post(
        "/v1/watches", data=payload, headers={**auth(), "Content-Type": "application/json"}
    )
    data = await problem(resp, 422)
    assert data["errors"][0]["field"] == "body"


async def test_wrong_content_type_is_415(api: Client) -> None:
    resp = await api.post(
        "/v1/watches", data=b"videoId=x", headers={**auth(), "Content-Type": "text/plain"}
    )
    await problem(resp, 415)


async def test_oversized_body_is_413(api: Client) -> None:
    big = body(metadata={"x": "y" * 70_000})
    resp = await api.post("/v1/watches", json=big, headers=auth())
    await problem(resp, 413)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://192.168.1.10/hook",
        "http://172.16.0.1/hook",
        "http://[::1]/hook",
        "http://localhost/hook",
        "http://2130706433/hook",
        "http://0x7f.1/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://100.64.0.1/hook",
    ],
)
async def test_private_callbacks_refused(make_api: ApiFactory, url: str) -> None:
    from relay.settings import CallbackAllow

    api = await make_api(callback_allow=CallbackAllow())
    resp = await api.post("/v1/watches", json=body(callbackUrl=url), headers=auth())
    data = await problem(resp, 422)
    assert data["errors"][0]["field"] == "callbackUrl"


async def test_allowlisted_loopback_accepted(api: Client) -> None:
    await create(api, callbackUrl="http://127.0.0.1:8080/x")


# --- auth and tenants -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}, {"Authorization": ""}],
)
async def test_v1_needs_a_key(api: Client, headers: dict[str, str]) -> None:
    for method, path in [
        ("POST", "/v1/watches"),
        ("GET", "/v1/watches"),
        ("GET", "/v1/watches/wat_x"),
        ("DELETE", "/v1/watches/wat_x"),
        ("GET", "/v1/watches/wat_x/deliveries"),
        ("POST", "/v1/watches/wat_x/redeliver"),
        ("POST", "/v1/watches/wat_x/rotate-secret"),
    ]:
        resp = await api.request(method, path, headers=headers, json=body())
        await problem(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_tenants_are_isolated(api: Client) -> None:
    mine = await create(api)
    wid = mine["id"]
    other = auth(TENANT_B_KEY)
    for method, path in [
        ("GET", f"/v1/watches/{wid}"),
        ("DELETE", f"/v1/watches/{wid}"),
        ("GET", f"/v1/watches/{wid}/deliveries"),
        ("POST", f"/v1/watches/{wid}/redeliver"),
        ("POST", f"/v1/watches/{wid}/rotate-secret"),
    ]:
        await problem(await api.request(method, path, headers=other), 404)
    listed = await (await api.get("/v1/watches", headers=other)).json()
    assert listed["data"] == []
    listed = await (await api.get("/v1/watches?videoId=vid_1", headers=other)).json()
    assert listed["data"] == []
    # still intact for its owner
    got = await (await api.get(f"/v1/watches/{wid}", headers=auth())).json()
    assert got["status"] == "watching"


async def test_unknown_watch_is_404(api: Client) -> None:
    await problem(await api.get("/v1/watches/wat_doesnotexist", headers=auth()), 404)


# --- idempotency ----------------------------------------------------------------------------


async def test_idempotency_key_same_body_same_watch(api: Client) -> None:
    headers = {**auth(), "Idempotency-Key": "order-42"}
    first = await api.post("/v1/watches", json=body(minScore=5), headers=headers)
    assert first.status == 201
    again = await api.post("/v1/watches", json=body(minScore=5), headers=headers)
    assert again.status == 200
    a, b = await first.json(), await again.json()
    assert a["id"] == b["id"] and a["secret"] == b["secret"]
    listed = await (await api.get("/v1/watches", headers=auth())).json()
    assert len(listed["data"]) == 1


async def test_idempotency_key_other_body_conflicts(api: Client) -> None:
    headers = {**auth(), "Idempotency-Key": "order-43"}
    assert (await api.post("/v1/watches", json=body(minScore=5), headers=headers)).status == 201
    resp = await api.post("/v1/watches", json=body(minScore=6), headers=headers)
    doc = await problem(resp, 409)
    # the header named, as a 422 names a field (a review: the 409 said why, not where)
    assert doc["errors"] == [{"field": "Idempotency-Key", "message": doc["detail"]}], doc


async def test_idempotency_keys_are_per_tenant(api: Client) -> None:
    a = await api.post("/v1/watches", json=body(), headers={**auth(), "Idempotency-Key": "k"})
    b = await api.post(
        "/v1/watches", json=body(), headers={**auth(TENANT_B_KEY), "Idempotency-Key": "k"}
    )
    assert a.status == b.status == 201
    assert (await a.json())["id"] != (await b.json())["id"]


async def test_idempotency_key_too_long(api: Client) -> None:
    resp = await api.post(
        "/v1/watches", json=body(), headers={**auth(), "Idempotency-Key": "k" * 300}
    )
    data = await problem(resp, 422)
    assert data["errors"][0]["field"] == "Idempotency-Key"


# --- listing --------------------------------------------------------------------------------


async def test_list_newest_first_with_cursor(api: Client) -> None:
    ids = [(await create(api, videoId=f"v{i % 2}"))["id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = "/v1/watches?limit=3" + (f"&cursor={cursor}" if cursor else "")
        resp = await api.get(url, headers=auth())
        assert resp.status == 200
        page = await resp.json()
        WatchList.model_validate(page)
        seen += [w["id"] for w in page["data"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert pages == 3


async def test_list_filters(api: Client) -> None:
    a = await create(api, videoId="alpha")
    await create(api, videoId="beta")
    c = await create(api, videoId="alpha")
    await api.delete(f"/v1/watches/{c['id']}", headers=auth())
    page = await (await api.get("/v1/watches?videoId=alpha", headers=auth())).json()
    assert [w["id"] for w in page["data"]] == [c["id"], a["id"]]
    page = await (await api.get("/v1/watches?status=cancelled", headers=auth())).json()
    assert [w["id"] for w in page["data"]] == [c["id"]]
    page = await (await api.get("/v1/watches?videoId=alpha&status=watching", headers=auth())).json()
    assert [w["id"] for w in page["data"]] == [a["id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("status=sleeping", "status"),
        ("videoId=bad%20id", "videoId"),
        ("cursor=garbage", "cursor"),
        ("colour=red", "colour"),
    ],
)
async def test_list_bad_query(api: Client, query: str, field: str) -> None:
    data = await problem(await api.get(f"/v1/watches?{query}", headers=auth()), 422)
    assert data["errors"][0]["field"] == field


async def test_a_bad_cursor_is_listed_beside_the_other_bad_parameters(api: Client) -> None:
    """Every bad parameter in one answer: the cursor's error was dropped when another
    parameter was bad too (a tester), and came only once the others were fixed."""
    resp = await api.get("/v1/watches?limit=0&status=x&cursor=y", headers=auth())
    data = await problem(resp, 422)
    assert [e["field"] for e in data["errors"]] == ["limit", "status", "cursor"], data
    # a good cursor beside a typo in a filter is not "another listing's" (a review)
    for _ in range(2):
        await create(api)
    page = await (await api.get("/v1/watches?status=watching&limit=1", headers=auth())).json()
    cursor = page["nextCursor"]
    assert cursor
    resp = await api.get(f"/v1/watches?status=watchin&cursor={cursor}", headers=auth())
    data = await problem(resp, 422)
    assert [e["field"] for e in data["errors"]] == ["status"], data


# --- cancel, deliveries, redeliver, rotate ---------------------------------------------------


async def test_cancel(api: Client) -> None:
    created = await create(api)
    resp = await api.delete(f"/v1/watches/{created['id']}", headers=auth())
    assert resp.status == 204
    got = await (await api.get(f"/v1/watches/{created['id']}", headers=auth())).json()
    assert got["status"] == "cancelled"
    # cancelling again is harmless
    assert (await api.delete(f"/v1/watches/{created['id']}", headers=auth())).status == 204


async def test_deliveries_empty_for_new_watch(api: Client) -> None:
    created = await create(api)
    resp = await api.get(f"/v1/watches/{created['id']}/deliveries", headers=auth())
    data = await resp.json()
    DeliveryList.model_validate(data)
    assert data == {"data": []}


async def test_redeliver_needs_a_final_event(api: Client, redis: Redis) -> None:
    """A redeliver refused (the watch has no final event) closes no circuit: its origin is
    shared with other tenants' watches. Fails before: every refused redeliver closed the
    origin's circuit in every worker, so one tenant could keep a dead origin's breaker from
    ever opening (a review, 2026-12-06)."""
    created = await create(api)
    resp = await api.post(f"/v1/watches/{created['id']}/redeliver", headers=auth())
    await problem(resp, 409)
    assert await redis.zcard(c.CIRCUIT_CLOSES_KEY) == 0


async def test_a_body_that_does_not_arrive_in_time_is_408_not_storage_trouble(
    api: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sends its headers and then too little of its body, slowly, runs into
    the request deadline while the body is read: 408, not "the relay's storage is
    unreachable" (503) with a Redis error logged. (A review, 2026-12-06.)"""
    monkeypatch.setattr("relay.api.app.REQUEST_DEADLINE", 0.3)
    url = api.make_url("/v1/watches")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        head = (
            f"POST /v1/watches HTTP/1.1\r\nHost: {url.host}\r\n"
            f"Authorization: {auth()['Authorization']}\r\n"
            'Content-Type: application/json\r\nContent-Length: 56\r\n\r\n{"vid'
        )
        writer.write(head.encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5.0)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive" in answer


async def test_a_callback_on_port_0_is_refused(api: Client) -> None:
    resp = await api.post(
        "/v1/watches", json=body(callbackUrl="http://127.0.0.1:0/hook"), headers=auth()
    )
    assert "port" in str(await problem(resp, 422))


async def test_rotate_secret(api: Client) -> None:
    created = await create(api)
    resp = await api.post(f"/v1/watches/{created['id']}/rotate-secret", headers=auth())
    assert resp.status == 200
    data = await resp.json()
    assert is_valid_secret(data["secret"]) and data["secret"] != created["secret"]
    assert data["previousSecretExpiresAt"].endswith("Z")


async def test_rotate_secret_of_a_cancelled_watch_conflicts(api: Client) -> None:
    """Nothing is signed for a cancelled watch again: a rotation is refused, and the
    secrets stay as they were."""
    created = await create(api)
    assert (await api.delete(f"/v1/watches/{created['id']}", headers=auth())).status in (200, 204)
    resp = await api.post(f"/v1/watches/{created['id']}/rotate-secret", headers=auth())
    assert "not rotated" in (await problem(resp, 409))["detail"]


# --- health, openapi, errors ----------------------------------------------------------------


async def test_health_and_ready(api: Client) -> None:
    assert (await api.get("/healthz")).status == 200
    resp = await api.get("/readyz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_ready_fails_without_redis(make_api: ApiFactory) -> None:
    from structlog.testing import capture_logs

    from relay.devtools.embedded_redis import free_port

    api = await make_api(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with capture_logs() as lines:
        for _ in range(3):
            resp = await api.get("/readyz")
            assert resp.status == 503
    # why, once (the probe runs every few seconds): it said nothing before (a review found
    # the runbook's NOAUTH nowhere in the logs)
    said = [e for e in lines if e["event"] == "not ready: redis"]
    assert [e["error"] for e in said] == ["ConnectionError"], lines
    # and a request that needs Redis is a 503 problem, not a 500 or a hang
    await problem(await api.get("/v1/watches", headers=auth()), 503)


async def test_a_hung_redis_leaves_metrics_served_and_readyz_quick(
    make_api: ApiFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis accepts connections and never answers (a SIGSTOPped server): /metrics still
    serves its series and /readyz says 503, each within about a second, not at the
    request's 5 s deadline; the rate limiter's failing syncs are logged once, not 20
    times a second."""
    hung = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    try:
        api = await make_api(redis_url=f"redis://127.0.0.1:{port}/0")
        t0 = time.monotonic()
        resp = await api.get("/metrics")
        assert resp.status == 200 and "relay_http_requests_total" in await resp.text()
        assert (await api.get("/readyz")).status == 503
        assert time.monotonic() - t0 < 4
        await asyncio.sleep(1.0)
        logged = capsys.readouterr().out.count("rate limit sync failed")
        assert logged <= 2, logged  # (at most one per API started: one)
    finally:
        hung.close()


async def test_unknown_route_and_method_are_problems(api: Client) -> None:
    await problem(await api.get("/nope"), 404)
    await problem(await api.put("/v1/watches", headers=auth()), 405)
    for method in ("GET", "DELETE"):  # (not a watch called "recover")
        resp = await api.request(method, "/v1/watches/recover", headers=auth())
        await problem(resp, 405)
        assert resp.headers["Allow"] == "POST"


async def test_methods_outside_http_are_one_metrics_label(api: Client) -> None:
    """A client's methods beyond HTTP's own (WebDAV's, which llhttp parses) are counted as
    "OTHER": every method a client makes up is not a series kept for the process' life."""
    for method in ("PROPFIND", "MKCOL", "PURGE"):
        await problem(await api.request(method, "/v1/watches", headers=auth()), 405)
    text = await (await api.get("/metrics")).text()
    assert 'method="OTHER",route="unmatched",status="405"} 3.0' in text
    assert "PROPFIND" not in text and "PURGE" not in text


async def test_openapi_describes_every_route(api: Client) -> None:
    resp = await api.get("/openapi.json")
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    routes = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }
    for resource in api.app.router.routes():
        path = resource.resource.canonical if resource.resource else ""
        if resource.method == "HEAD" or path == "/ui" or path.startswith("/ui/"):
            continue  # (the dashboard's pages are HTML, not part of the API's document)
        assert (resource.method, path) in routes, (resource.method, path)
    # the request schema is the validating model's own schema
    create_schema = doc["components"]["schemas"]["WatchCreate"]
    assert create_schema["additionalProperties"] is False
    assert set(create_schema["required"]) == {"videoId", "callbackUrl"}
    assert document() == doc


async def test_responses_match_documented_models(api: Client) -> None:
    created = await create(api)
    adapter = TypeAdapter(WatchOut)
    got = await (await api.get(f"/v1/watches/{created['id']}", headers=auth())).json()
    adapter.validate_python(got)


async def test_rate_limit_per_key(make_api: ApiFactory) -> None:
    api = await make_api(rate_limit=5)
    codes = [(await api.get("/v1/watches", headers=auth())).status for _ in range(12)]
    assert codes.count(429) >= 1 and codes[:5] == [200] * 5
    resp = await api.get("/v1/watches", headers=auth())
    if resp.status == 429:
        data = await problem(resp, 429)
        assert resp.headers["Retry-After"] == "1" and "5" in data["detail"]
    # another key has its own budget
    assert (await api.get("/v1/watches", headers=auth(TENANT_B_KEY))).status == 200


async def test_a_final_status_lists_from_its_index_page_by_page(api: Client) -> None:
    """A final status is listed from the tenant's index of it: newest to reach it first,
    every one once across pages, none of another status or tenant."""
    made = [(await create(api))["id"] for _ in range(7)]
    await create(api)  # watching
    await create(api, key=TENANT_B_KEY)
    for wid in made:
        assert (await api.delete(f"/v1/watches/{wid}", headers=auth())).status == 204
    seen: list[dict[str, Any]] = []
    cursor = ""
    while True:
        url = "/v1/watches?status=cancelled&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await (await api.get(url, headers=auth())).json()
        assert all(w["status"] == "cancelled" for w in page["data"])
        seen += page["data"]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert sorted(w["id"] for w in seen) == sorted(made)
    times = [w["updatedAt"] for w in seen]  # when each was cancelled (ties: any order)
    assert times == sorted(times, reverse=True)
