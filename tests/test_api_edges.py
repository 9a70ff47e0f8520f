"""The API at its edges, each asked for by a mutation review or a tester (2026-12-06): a
change to the code each guards went unnoticed by every other test. Real API, real Redis."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import constants as c
from relay.api import auth as auth_module
from relay.api.auth import Authenticator
from relay.settings import ApiKey
from tests.conftest import auth
from tests.test_api import body, create, problem

Client = TestClient[web.Request, web.Application]


async def test_equal_min_and_max_scores_are_a_valid_range(api: Client) -> None:
    created = await create(api, minScore=50, maxScore=50)
    assert created["minScore"] == created["maxScore"] == 50


async def test_a_json_media_type_with_a_suffix_is_json(api: Client) -> None:
    """``application/vnd.api+json`` (RFC 6839's ``+json``) is read as JSON, not a 415."""
    resp = await api.post(
        "/v1/watches",
        data=json.dumps(body()),
        headers={**auth(), "Content-Type": "application/vnd.api+json"},
    )
    assert resp.status == 201, await resp.text()


async def test_a_problems_detail_names_the_field(api: Client) -> None:
    """The detail names the field; a pattern's rule is said in words (a tester found
    pydantic's regular expression there)."""
    resp = await api.post("/v1/watches", json=body(videoId="not a video id"), headers=auth())
    doc = await problem(resp, 422)
    assert doc["detail"] == "videoId: must be 1-128 characters of A-Z, a-z, 0-9, _ and -", doc
    resp = await api.post("/v1/watches", json=body(secret="not-whsec"), headers=auth())
    doc = await problem(resp, 422)
    assert doc["errors"][0]["field"] == "secret" and "whsec_" in doc["detail"], doc
    assert "^" not in doc["detail"], doc


async def test_a_wrong_key_is_told_from_a_missing_header(api: Client) -> None:
    wrong = await api.get("/v1/watches", headers={"Authorization": "Bearer not-a-key-of-ours"})
    assert "not one of the relay's" in (await problem(wrong, 401))["detail"]
    missing = await api.get("/v1/watches")
    assert "send one Authorization" in (await problem(missing, 401))["detail"]


async def test_recover_with_until_equal_to_since_names_until(api: Client) -> None:
    t = "2026-12-04T10:00:00Z"
    resp = await api.post("/v1/watches/recover", json={"since": t, "until": t}, headers=auth())
    doc = await problem(resp, 422)
    assert doc["errors"] == [{"field": "until", "message": "must be later than since"}]


async def test_an_idempotent_retry_spelling_a_score_otherwise_is_the_same_request(
    api: Client,
) -> None:
    """``-0.0`` then ``0`` (or ``50`` then ``50.0``) with one Idempotency-Key: the same
    watch (200), not a 409."""
    headers = {**auth(), "Idempotency-Key": "spelled-otherwise"}
    first = await api.post("/v1/watches", json=body(minScore=-0.0), headers=headers)
    assert first.status == 201, await first.text()
    again = await api.post("/v1/watches", json=body(minScore=0), headers=headers)
    assert again.status == 200, await again.text()
    assert (await again.json())["id"] == (await first.json())["id"]


async def test_a_key_recorded_by_an_older_release_replays(api: Client, redis: Redis) -> None:
    """A record written by a release before 2026-12-06 holds only ``fp`` (the body's sorted
    JSON): the same body with that key replays the watch during a rolling update."""
    made = await create(api)
    sent = body(videoId="vid_old")
    key = "from-an-older-release"
    record = {
        "fp": hashlib.sha256(orjson.dumps(sent, option=orjson.OPT_SORT_KEYS)).hexdigest(),
        "watchId": made["id"],
    }
    idem = c.IDEMPOTENCY_KEY.format("tenant-a", hashlib.sha256(key.encode()).hexdigest())
    await redis.set(idem, json.dumps(record), ex=3600)
    resp = await api.post("/v1/watches", json=sent, headers={**auth(), "Idempotency-Key": key})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["id"] == made["id"]


async def test_two_idempotency_keys_are_refused_naming_the_header(api: Client) -> None:
    """Two ``Idempotency-Key`` headers are ambiguous (which one would a retry send?): a
    422 naming the header, nothing made. Before: the first was used, the second dropped."""
    resp = await api.post(
        "/v1/watches",
        json=body(),
        headers=[
            ("Authorization", auth()["Authorization"]),
            ("Idempotency-Key", "a"),
            ("Idempotency-Key", "b"),
        ],
    )
    doc = await problem(resp, 422)
    assert doc["errors"][0]["field"] == "Idempotency-Key"
    listed = await (await api.get("/v1/watches", headers=auth())).json()
    assert listed["data"] == []


async def test_a_forged_untagged_cursor_is_refused(api: Client) -> None:
    """An untagged cursor (as handed out before cursors named their listing) must still
    name a watch id: a forged one is a 422 naming ``cursor``."""
    forged = base64.urlsafe_b64encode(b"1700000000000:abc").decode().rstrip("=")
    resp = await api.get(f"/v1/watches?cursor={forged}", headers=auth())
    doc = await problem(resp, 422)
    assert doc["errors"][0]["field"] == "cursor"


async def test_a_cursor_cut_short_is_not_a_cursor_of_this_api(api: Client) -> None:
    """A cursor whose end was lost in copying is "not a cursor returned by this API", not
    one "of another listing" (a tester read the latter as a tenant or filter mix-up)."""
    await create(api)
    await create(api)
    page = await (await api.get("/v1/watches?limit=1", headers=auth())).json()
    cursor = page["nextCursor"]
    resp = await api.get(f"/v1/watches?cursor={cursor[:-2]}", headers=auth())
    doc = await problem(resp, 422)
    assert doc["errors"][0]["field"] == "cursor"
    assert "not a cursor returned by this API" in doc["errors"][0]["message"]
    whole = await api.get(f"/v1/watches?cursor={cursor}", headers=auth())
    assert whole.status == 200


def test_a_key_is_compared_with_every_key_whichever_matched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first of three keys matches, and still all three are compared (stopping at the
    match would tell, by the time taken, which key it was)."""
    compared: list[int] = []
    real = hmac.compare_digest

    class Counting:
        @staticmethod
        def compare_digest(a: bytes, b: bytes) -> bool:
            compared.append(1)
            return real(a, b)

    monkeypatch.setattr(auth_module, "hmac", Counting)
    keys = [ApiKey(tenant=f"t{i}", key=f"key-number-{i}-0123456789") for i in range(3)]
    principal = Authenticator(keys).authenticate("Bearer key-number-0-0123456789")
    assert principal is not None and principal.tenant == "t0"
    assert len(compared) == 3


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/watches/{id}?x=1"),
        ("GET", "/v1/watches/{id}/deliveries?limit=1"),
        ("DELETE", "/v1/watches/{id}?force=1"),
        ("POST", "/v1/watches/{id}/redeliver?now=1"),
        ("POST", "/v1/watches?videoId=vid_1"),
    ],
)
async def test_a_query_parameter_a_route_does_not_take_is_refused(
    api: Client, method: str, path: str
) -> None:
    """As the list's unknown parameters are: a 422 naming it, nothing done (a tester found
    ``deliveries?limit=1`` answering every attempt and ``DELETE ?force=1`` accepted)."""
    created = await create(api)
    resp = await api.request(method, path.format(id=created["id"]), json=body(), headers=auth())
    doc = await problem(resp, 422)
    assert doc["errors"][0]["message"] == "unknown query parameter", doc
    got = await (await api.get(f"/v1/watches/{created['id']}", headers=auth())).json()
    assert got["status"] == "watching"
    listed = await (await api.get("/v1/watches", headers=auth())).json()
    assert len(listed["data"]) == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/watches/{id}/rotate-secret"),
        ("POST", "/v1/watches/{id}/redeliver"),
        ("POST", "/v1/watches/{id}/ping"),
        ("DELETE", "/v1/watches/{id}"),
    ],
)
async def test_a_body_a_route_does_not_take_is_refused(
    api: Client, redis: Redis, method: str, path: str
) -> None:
    """``{"secret": ...}`` sent to rotate-secret was ignored: a new secret came back and the
    caller's was never used. A route that takes no body names each field it was sent (422),
    and does nothing; an empty body or ``{}`` is still accepted."""
    created = await create(api)
    url = path.format(id=created["id"])
    secrets_before = await redis.hget(c.WATCH_PREFIX + created["id"], "secrets")
    mine = {"secret": "whsec_" + base64.b64encode(b"m" * 32).decode(), "force": True}
    doc = await problem(await api.request(method, url, json=mine, headers=auth()), 422)
    assert [e["field"] for e in doc["errors"]] == ["force", "secret"], doc
    assert "takes no body" in doc["detail"]
    assert "whsec_" not in json.dumps(doc)
    text = await api.request(method, url, data=b"now please", headers=auth())
    assert (await problem(text, 422))["errors"] == [
        {"field": "body", "message": "this route takes no body"}
    ]
    assert await redis.hget(c.WATCH_PREFIX + created["id"], "secrets") == secrets_before
    got = await (await api.get(f"/v1/watches/{created['id']}", headers=auth())).json()
    assert got["status"] == "watching"
    # what clients that always send JSON send is taken as no body
    resp = await api.request(method, url, json={}, headers=auth())
    assert resp.status < 500 and resp.status != 422, await resp.text()
    resp = await api.request(method, url, data=b"", headers=auth())
    assert resp.status < 500 and resp.status != 422, await resp.text()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/anything?x=1", 404),
        ("GET", "/v1/v1/watches?limit=1", 404),
        ("PUT", "/v1/watches?x=1", 405),
        ("POST", "/v1/nowhere", 404),
    ],
)
async def test_an_unknown_route_is_a_404_or_405_whatever_it_carries(
    api: Client, method: str, path: str, status: int
) -> None:
    """A base URL ending in /v1 made every call a 422 "unknown query parameter" (a tester):
    an unknown route or method is a 404 or 405, with a query or a body."""
    resp = await api.request(method, path, json={"x": 1}, headers=auth())
    await problem(resp, status)
