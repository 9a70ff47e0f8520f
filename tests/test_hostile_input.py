"""Hostile input against the registration API (real HTTP on loopback, real valkey-server).

Every request here is one a careless or malicious client could send. Each must be answered
with a 4xx ``application/problem+json`` that names the problem; none may reach a 500, and
the API must stay healthy afterwards. Requests that an HTTP client library would refuse to
send (invalid UTF-8 in headers, giant headers, chunked bodies) go over a raw socket.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay.devtools.receiver import Receiver
from relay.domain.clock import now_ms
from relay.domain.listing import encode_cursor
from tests.conftest import TENANT_A_KEY, TENANT_B_KEY, WorkerFactory, auth

Client = TestClient[web.Request, web.Application]
CALLBACK = "http://127.0.0.1:9/hook"
PROBLEM = "application/problem+json"
ROUTES = [
    ("GET", "/v1/watches/{}"),
    ("DELETE", "/v1/watches/{}"),
    ("GET", "/v1/watches/{}/deliveries"),
    ("POST", "/v1/watches/{}/redeliver"),
    ("POST", "/v1/watches/{}/rotate-secret"),
]


def body(**overrides: Any) -> dict[str, Any]:
    """A valid registration body."""
    data: dict[str, Any] = {"videoId": "vid_1", "callbackUrl": CALLBACK}
    data.update(overrides)
    return data


def raw_body(extra: bytes = b"") -> bytes:
    """A valid registration body as bytes, with *extra* members spliced in before the end."""
    return b'{"videoId":"vid_1","callbackUrl":"' + CALLBACK.encode() + b'"' + extra + b"}"


class ProductBug(AssertionError):
    """The product answered wrongly (what an xfail here is about, not a broken set-up)."""


class Answer:
    """One HTTP answer read off a raw socket."""

    def __init__(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.status = status
        self.headers = headers
        self.payload = payload

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def json(self) -> Any:
        return orjson.loads(self.payload)

    def __repr__(self) -> str:
        return f"<{self.status} {self.content_type} {self.payload[:300]!r}>"


async def send_raw(api: Client, request: bytes) -> Answer:
    """Send *request* bytes as they are; read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), timeout=10)
    finally:
        writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        out = b""
        while payload:
            size_line, _, rest = payload.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out += rest[:size]
            payload = rest[size + 2 :]
        payload = out
    return Answer(status, headers, payload)


def http(
    method: str,
    target: str,
    payload: bytes = b"",
    headers: dict[str, str | bytes | None] | None = None,
    extra_lines: list[bytes] | None = None,
) -> bytes:
    """An HTTP/1.1 request as bytes; a header given as None is left out."""
    base: dict[str, str | bytes | None] = {
        "Host": "127.0.0.1",
        "Authorization": f"Bearer {TENANT_A_KEY}",
        "Connection": "close",
        "Content-Type": "application/json" if method in ("POST", "PUT") else None,
        "Content-Length": str(len(payload)) if method in ("POST", "PUT") else None,
    }
    base.update(headers or {})
    lines = [f"{method} {target} HTTP/1.1".encode()]
    for name, value in base.items():
        if value is not None:
            lines.append(
                name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
            )
    lines += extra_lines or []
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def check_problem(status: int, content_type: str, data: Any, expected: int | None = None) -> Any:
    """A 4xx problem document (RFC 9457) with a detail; returns it."""
    assert 400 <= status < 500, (status, data)
    if expected is not None:
        assert status == expected, (status, data)
    assert content_type == PROBLEM, (status, content_type, data)
    assert isinstance(data, dict)
    assert {"type", "title", "status", "detail"} <= set(data), data
    assert data["status"] == status
    assert data["detail"]
    return data


async def problem(resp: Any, expected: int | None = None) -> dict[str, Any]:
    """Check an aiohttp client response is a problem document."""
    text = await resp.read()
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        data = text
    result: dict[str, Any] = check_problem(resp.status, resp.content_type, data, expected)
    return result


def raw_problem(answer: Answer, expected: int | None = None) -> dict[str, Any]:
    """Check a raw answer is a problem document."""
    assert answer.status < 500, answer
    try:
        data = answer.json()
    except orjson.JSONDecodeError:
        data = answer.payload
    result: dict[str, Any] = check_problem(answer.status, answer.content_type, data, expected)
    return result


def names(data: dict[str, Any], needle: str) -> bool:
    """Does the problem name *needle*: an errors[].field, or words of its detail?"""
    fields = [e["field"] for e in data.get("errors") or []]
    return needle in fields or needle.lower() in data["detail"].lower()


async def assert_healthy(api: Client) -> None:
    """The API answers, Redis is reachable, and a valid registration still works."""
    assert (await api.get("/healthz")).status == 200
    assert (await api.get("/readyz")).status == 200
    resp = await api.post("/v1/watches", json=body(videoId="after"), headers=auth())
    assert resp.status == 201, await resp.text()


async def post_raw(api: Client, payload: bytes, **headers: str | bytes | None) -> Answer:
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    return await send_raw(api, http("POST", "/v1/watches", payload, named))


# --- body size ------------------------------------------------------------------------------


def _chunked(size: int) -> bytes:
    part = b"x" * 8000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for _ in range(size // len(part) + 1))
    return chunks + b"0\r\n\r\n"


@pytest.mark.parametrize(
    ("payload", "headers"),
    [
        (orjson.dumps(body(metadata={"x": "y" * 70_000})), {}),
        (b"x" * 70_000, {}),
        (b"[" * 65_537, {}),
        (gzip.compress(b" " * 20_000_000), {"Content-Encoding": "gzip"}),
    ],
    ids=["json", "junk", "brackets", "gzip-bomb"],
)
async def test_bodies_over_64kb_are_413(
    api: Client, payload: bytes, headers: dict[str, str]
) -> None:
    answer = await post_raw(api, payload, **headers)
    data = raw_problem(answer, 413)
    assert "65536" in data["detail"]
    await assert_healthy(api)


async def test_chunked_body_over_64kb_is_413(api: Client) -> None:
    request = http(
        "POST", "/v1/watches", b"", {"Content-Length": None, "Transfer-Encoding": "chunked"}
    )
    answer = await send_raw(api, request[:-4] + b"\r\n\r\n" + _chunked(80_000))
    raw_problem(answer, 413)
    await assert_healthy(api)


async def test_metadata_size_limit_is_4kb_exactly(api: Client) -> None:
    at_limit = {"x": "y" * (4096 - len(b'{"x":""}'))}
    assert len(orjson.dumps(at_limit)) == 4096
    resp = await api.post("/v1/watches", json=body(metadata=at_limit), headers=auth())
    assert resp.status == 201, await resp.text()
    over = {"x": at_limit["x"] + "y"}
    resp = await api.post("/v1/watches", json=body(metadata=over), headers=auth())
    data = await problem(resp, 422)
    assert names(data, "metadata")
    # multi-byte characters count as their UTF-8 bytes, not as characters
    wide = {"x": "\u00e9" * 2100}
    resp = await api.post("/v1/watches", json=body(metadata=wide), headers=auth())
    assert names(await problem(resp, 422), "metadata")


# --- fields ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["color", "__proto__", "constructor", "video_id", "VideoId"])
async def test_unknown_fields_are_named(api: Client, field: str) -> None:
    resp = await api.post("/v1/watches", json=body(**{field: 1}), headers=auth())
    data = await problem(resp, 422)
    assert {"field": field, "message": "unknown field"} in data["errors"], data


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("videoId", ["a"]),
        ("videoId", {"a": 1}),
        ("videoId", None),
        ("videoId", True),
        ("videoId", 7),
        ("callbackUrl", 42),
        ("callbackUrl", None),
        ("callbackUrl", [CALLBACK]),
        ("minScore", "50"),
        ("minScore", None),
        ("minScore", [50]),
        ("minScore", False),
        ("maxScore", "90"),
        ("maxScore", {"v": 90}),
        ("favoritedOnly", "true"),
        ("favoritedOnly", 0),
        ("favoritedOnly", None),
        ("sortBy", 1),
        ("sortBy", None),
        ("sortBy", ["score"]),
        ("sortOrder", True),
        ("metadata", "a string"),
        ("metadata", 12),
        ("metadata", [1]),
        ("metadata", True),
        ("secret", 1234),
        ("secret", ["whsec_x"]),
    ],
)
async def test_wrong_types_are_named(api: Client, field: str, value: Any) -> None:
    resp = await api.post("/v1/watches", json=body(**{field: value}), headers=auth())
    data = await problem(resp, 422)
    assert field in [e["field"] for e in data["errors"]], data


async def test_body_must_be_an_object(api: Client) -> None:
    for payload in (b"[]", b"1", b'"s"', b"null", b"true"):
        answer = await post_raw(api, payload)
        assert names(raw_problem(answer, 422), "body")


# --- numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "status", "needle"),
    [
        (b',"minScore":1e400', 400, "range"),
        (b',"maxScore":-1e400', 400, "range"),
        (b',"metadata":{"n":1e400}', 400, "range"),
        (b',"minScore":' + str(2**70).encode(), 422, "minScore"),
        (b',"metadata":{"n":' + str(2**70).encode() + b"}", 422, "metadata"),
        (b',"minScore":' + b"9" * 5000, 400, "digits"),
        (b',"minScore":1e308', 422, "minScore"),
        (b',"minScore":-1', 422, "minScore"),
        (b',"minScore":0x10', 400, "json"),
        (b',"minScore":01', 400, "json"),
        (b',"minScore":.5', 400, "json"),
    ],
    ids=[
        "1e400",
        "-1e400",
        "1e400-in-metadata",
        "2**70",
        "2**70-in-metadata",
        "5000-digits",
        "1e308",
        "negative",
        "hex",
        "leading-zero",
        "bare-fraction",
    ],
)
async def test_huge_and_malformed_numbers(
    api: Client, extra: bytes, status: int, needle: str
) -> None:
    data = raw_problem(await post_raw(api, raw_body(extra)), status)
    assert names(data, needle), data
    await assert_healthy(api)


@pytest.mark.parametrize("zero", [b"-0", b"-0.0", b"0e5", b"-0E-3"])
async def test_negative_zero_is_zero(api: Client, zero: bytes) -> None:
    answer = await post_raw(api, raw_body(b',"minScore":' + zero))
    assert answer.status == 201, answer
    assert answer.json()["minScore"] == 0


# --- nesting --------------------------------------------------------------------------------


def _nested_metadata(levels: int) -> bytes:
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


@pytest.mark.parametrize(
    "payload",
    [
        raw_body(b',"metadata":' + _nested_metadata(1000)),
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        raw_body(b',"metadata":{"x":' + b"[" * 3000 + b"]" * 3000 + b"}"),
    ],
    ids=["metadata-1000-deep", "10000-arrays", "10000-objects", "array-in-metadata"],
)
async def test_deep_nesting_is_refused(api: Client, payload: bytes) -> None:
    data = raw_problem(await post_raw(api, payload))
    assert names(data, "nest") or names(data, "deep") or names(data, "metadata"), data
    await assert_healthy(api)


async def test_metadata_depth_limit(api: Client) -> None:
    ok = await post_raw(api, raw_body(b',"metadata":' + _nested_metadata(8)))
    assert ok.status == 201, ok
    data = raw_problem(await post_raw(api, raw_body(b',"metadata":' + _nested_metadata(9))), 422)
    assert names(data, "metadata")


async def test_brackets_inside_strings_are_not_nesting(api: Client) -> None:
    text = '\\"[{' * 300
    answer = await post_raw(api, raw_body(b',"metadata":{"s":"' + text.encode() + b'"}'))
    assert answer.status == 201, answer
    assert answer.json()["metadata"] == {"s": '"[{' * 300}


# --- encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b'{"videoId":"a\xff","callbackUrl":"' + CALLBACK.encode() + b'"}',
        b'{"videoId":"a\xc0\xaf","callbackUrl":"' + CALLBACK.encode() + b'"}',
        b'{"videoId":"a\xed\xa0\x80","callbackUrl":"' + CALLBACK.encode() + b'"}',
        b'{"videoId":"a\xe2\x82","callbackUrl":"' + CALLBACK.encode() + b'"}',
        raw_body(b',"metadata":{"k\xfe":1}'),
    ],
    ids=["ff", "overlong", "utf8-surrogate", "truncated", "in-key"],
)
async def test_invalid_utf8_is_400(api: Client, payload: bytes) -> None:
    data = raw_problem(await post_raw(api, payload), 400)
    assert names(data, "utf-8"), data


@pytest.mark.parametrize(
    "field", ["videoId", "callbackUrl", "secret", "sortBy", "sortOrder", "metadata", "key"]
)
async def test_lone_surrogates_are_refused(api: Client, field: str) -> None:
    if field == "metadata":
        extra = b',"metadata":{"k":"\\ud800"}'
    elif field == "key":
        extra = b',"\\udc00x":1'
    else:
        extra = b',"' + field.encode() + b'":"a\\ud800b"'
    data = raw_problem(await post_raw(api, raw_body(extra)))
    if field != "key":
        assert names(data, field), data
    await assert_healthy(api)


async def test_surrogate_pairs_are_fine(api: Client) -> None:
    answer = await post_raw(api, raw_body(b',"metadata":{"e":"\\ud83d\\ude00"}'))
    assert answer.status == 201, answer
    assert answer.json()["metadata"] == {"e": "\U0001f600"}


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b'{"videoId":"a","videoId":"b","callbackUrl":"' + CALLBACK.encode() + b'"}', "videoId"),
        (raw_body(b',"metadata":{"k":1,"k":2}'), "'k'"),
        (raw_body(b',"minScore":1,"minScore":1'), "minScore"),
    ],
    ids=["top-level", "in-metadata", "same-value"],
)
async def test_duplicate_keys_are_named(api: Client, payload: bytes, needle: str) -> None:
    data = raw_problem(await post_raw(api, payload))
    assert "duplicate" in data["detail"].lower() and needle.lower() in data["detail"].lower()


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"])
async def test_nan_and_infinity_literals_are_400(api: Client, literal: bytes) -> None:
    raw_problem(await post_raw(api, raw_body(b',"minScore":' + literal)), 400)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"\xef\xbb\xbf" + raw_body(), "byte-order"),
        (raw_body().decode().encode("utf-16"), "utf-8"),
        (raw_body().decode().encode("utf-32"), "utf-8"),
    ],
    ids=["utf8-bom", "utf16", "utf32"],
)
async def test_bom_and_other_encodings_are_400(api: Client, payload: bytes, needle: str) -> None:
    data = raw_problem(await post_raw(api, payload), 400)
    assert names(data, needle), data


@pytest.mark.parametrize(
    ("payload", "headers"),
    [
        (b"", {}),
        (b"   \n\t ", {}),
        (b"", {"Content-Type": None}),
        (raw_body() + b" trailing", {}),
        (raw_body() + b"\x00", {}),
        (b'{"videoId":"a",}', {}),
    ],
    ids=["empty", "whitespace", "empty-no-type", "trailing-data", "trailing-nul", "comma"],
)
async def test_empty_and_malformed_bodies_are_400(
    api: Client, payload: bytes, headers: dict[str, str | None]
) -> None:
    raw_problem(await post_raw(api, payload, **headers), 400)


@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
        "application/octet-stream",
        None,
    ],
)
async def test_wrong_content_types_are_415(api: Client, ctype: str | None) -> None:
    raw_problem(await post_raw(api, raw_body(), Content_Type=ctype), 415)


async def test_media_type_names_are_case_insensitive(api: Client) -> None:
    answer = await post_raw(api, raw_body(), Content_Type="Application/JSON; charset=UTF-8")
    assert answer.status == 201, answer


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("key", [TENANT_A_KEY, "no-such-key"], ids=["signed-in", "unknown-key"])
async def test_undecodable_compressed_body_is_400_and_no_error_in_the_log(
    api: Client, caplog: pytest.LogCaptureFixture, encoding: str, key: str
) -> None:
    """Rule: a body its Content-Encoding does not decode is the client's fault: a 400
    problem -- and, whatever was answered (a 401 first, too), no "Unhandled exception" with
    a traceback in the error log, which any client could fill (a black-box run: aiohttp
    reads the rest of such a body after the answer and logged its failure as ours)."""
    caplog.set_level("WARNING")
    answer = await post_raw(
        api, raw_body(), Content_Encoding=encoding, Authorization=f"Bearer {key}"
    )
    raw_problem(answer, 400 if key == TENANT_A_KEY else 401)
    # the dashboard's forms too: its sign-in page answers 400, not its 500 page
    ui = await send_raw(
        api,
        http(
            "POST",
            "/ui/login",
            b"apiKey=x",
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Content-Encoding": encoding,
                "Authorization": None,
            },
        ),
    )
    assert ui.status == 400, ui
    await asyncio.sleep(0.05)  # (the lingering read after each answer)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], [
        r.getMessage() for r in caplog.records
    ]


# --- headers --------------------------------------------------------------------------------


async def test_large_but_legal_headers(api: Client) -> None:
    resp = await api.get("/v1/watches", headers={"Authorization": "Bearer " + "k" * 8000})
    await problem(resp, 401)
    resp = await api.post(
        "/v1/watches", json=body(), headers={**auth(), "Idempotency-Key": "k" * 8000}
    )
    assert names(await problem(resp, 422), "Idempotency-Key")
    resp = await api.get("/v1/watches", headers={**auth(), "X-Request-Id": "r" * 8000})
    assert resp.status == 200
    # an id that is not 1-64 of [A-Za-z0-9._-] is replaced, not truncated
    assert re.fullmatch(r"[0-9a-f]{16}", resp.headers["X-Request-Id"])


@pytest.mark.parametrize("kind", ["giant-header", "giant-authorization", "many-headers"])
async def test_oversized_header_sections_are_problems(api: Client, kind: str) -> None:
    if kind == "giant-header":
        request = http("GET", "/v1/watches", headers={"X-Big": "a" * 20_000})
    elif kind == "giant-authorization":
        request = http("GET", "/v1/watches", headers={"Authorization": "Bearer " + "k" * 20_000})
    else:
        request = http("GET", "/v1/watches", headers={f"X-H{i}": "v" for i in range(300)})
    answer = await send_raw(api, request)
    assert answer.status in (400, 431), answer
    raw_problem(answer)
    await assert_healthy(api)


async def test_authorization_with_invalid_utf8_is_401(api: Client) -> None:
    answer = await send_raw(
        api, http("GET", "/v1/watches", headers={"Authorization": b"Bearer \xff\xfe"})
    )
    raw_problem(answer, 401)


async def test_two_authorization_headers_are_refused(api: Client) -> None:
    request = http(
        "GET",
        "/v1/watches",
        headers={"Authorization": None},
        extra_lines=[
            f"Authorization: Bearer {TENANT_A_KEY}".encode(),
            f"Authorization: Bearer {TENANT_B_KEY}".encode(),
        ],
    )
    answer = await send_raw(api, request)
    assert answer.status in (400, 401), answer
    raw_problem(answer)


@pytest.mark.parametrize(
    "value",
    ["Bearer", "Bearer ", "Basic " + TENANT_A_KEY, TENANT_A_KEY, f"Bearer {TENANT_A_KEY} x"],
)
async def test_malformed_authorization_is_401(api: Client, value: str) -> None:
    resp = await api.get("/v1/watches", headers={"Authorization": value})
    await problem(resp, 401)


@pytest.mark.parametrize(
    "target",
    [
        "//v1/watches",
        "/v1//watches",
        "/V1/watches",
        "/v1/watches/",
        "/%761/watches",
        "/v1%2Fwatches",
        "/./v1/watches",
        "/x/../v1/watches",
        "/healthz/../v1/watches",
        "/v1/watches;x",
        "/v1/watches%00",
        "http://127.0.0.1/v1/watches",
    ],
)
async def test_no_path_spelling_skips_authentication(api: Client, target: str) -> None:
    answer = await send_raw(api, http("GET", target, headers={"Authorization": None}))
    assert answer.status in (400, 401, 404), answer
    raw_problem(answer)


@pytest.mark.parametrize(
    "key",
    ["", "   ", "k" * 256],
    ids=["empty", "blank", "256"],
)
async def test_bad_idempotency_keys_are_named(api: Client, key: str) -> None:
    resp = await api.post("/v1/watches", json=body(), headers={**auth(), "Idempotency-Key": key})
    assert names(await problem(resp, 422), "Idempotency-Key")


@pytest.mark.parametrize(
    "key",
    ["k" * 255, "ключ-🔑", "a:b*c?d", "../../etc", "wat_x:att"],
    ids=["255", "unicode", "glob", "dots", "key-suffix"],
)
async def test_odd_but_valid_idempotency_keys_replay(api: Client, key: str) -> None:
    headers = {**auth(), "Idempotency-Key": key}
    first = await api.post("/v1/watches", json=body(minScore=3), headers=headers)
    assert first.status == 201, await first.text()
    again = await api.post("/v1/watches", json=body(minScore=3), headers=headers)
    assert again.status == 200
    assert (await again.json())["id"] == (await first.json())["id"]


async def test_idempotency_key_ignores_member_order_not_values(api: Client) -> None:
    headers = {"Idempotency-Key": "order-1"}
    one = await post_raw(
        api, b'{"videoId":"v","callbackUrl":"' + CALLBACK.encode() + b'"}', **headers
    )
    two = await post_raw(
        api, b'{"callbackUrl":"' + CALLBACK.encode() + b'","videoId":"v"}', **headers
    )
    assert (one.status, two.status) == (201, 200)
    assert one.json()["id"] == two.json()["id"]
    three = await post_raw(
        api, b'{"callbackUrl":"' + CALLBACK.encode() + b'","videoId":"w"}', **headers
    )
    raw_problem(three, 409)


async def test_idempotency_key_replays_the_same_watch_however_it_is_spelled(
    api: Client,
) -> None:
    """50 and 50.0, a default spelled out or left out, metadata {} or absent: the same
    watch, so the same key replays it; another value is another watch (409)."""
    headers = {**auth(), "Idempotency-Key": "spelled-1"}
    first = await api.post("/v1/watches", json=body(minScore=50), headers=headers)
    assert first.status == 201, await first.text()
    made = (await first.json())["id"]
    for same in (
        body(minScore=50.0),
        body(minScore=50, sortBy="score", sortOrder="desc", favoritedOnly=False),
        body(minScore=50.0, metadata={}, maxScore=None),
    ):
        again = await api.post("/v1/watches", json=same, headers=headers)
        assert again.status == 200, (same, await again.text())
        assert (await again.json())["id"] == made
    other = await api.post("/v1/watches", json=body(minScore=50.5), headers=headers)
    await problem(other, 409)


async def test_keys_replay_across_a_rolling_update_in_both_directions(
    api: Client, redis: Redis
) -> None:
    """Releases before 2026-12-06 record, and compare, the fingerprint of the body's JSON
    (members sorted) as 'fp'. A record made here keeps that beside the watch's own ('wfp'),
    so an older replica replays the same body; and an older replica's record (no 'wfp')
    replays here with the same body, while another body still conflicts."""
    headers = {**auth(), "Idempotency-Key": "upgrade-1"}
    sent = body(minScore=7)
    first = await api.post("/v1/watches", json=sent, headers=headers)
    assert first.status == 201, await first.text()
    [key] = [k async for k in redis.scan_iter(match="cr:idem:*")]
    record = orjson.loads(await redis.get(key))
    old_fp = hashlib.sha256(orjson.dumps(sent, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert record["fp"] == old_fp  # what an older replica compares
    await redis.set(key, orjson.dumps({"fp": old_fp, "watchId": record["watchId"]}), keepttl=True)
    again = await api.post("/v1/watches", json=sent, headers=headers)
    assert again.status == 200, await again.text()
    assert (await again.json())["id"] == record["watchId"]
    await problem(await api.post("/v1/watches", json=body(minScore=8), headers=headers), 409)


async def test_refused_request_does_not_burn_its_idempotency_key(api: Client) -> None:
    headers = {**auth(), "Idempotency-Key": "retry-me"}
    bad = await api.post("/v1/watches", json=body(minScore=500), headers=headers)
    await problem(bad, 422)
    good = await api.post("/v1/watches", json=body(), headers=headers)
    assert good.status == 201, await good.text()


async def test_idempotency_key_with_invalid_utf8_is_named(api: Client) -> None:
    answer = await post_raw(api, raw_body(), Idempotency_Key=b"k\xff\xfe")
    assert names(raw_problem(answer, 422), "Idempotency-Key")
    await assert_healthy(api)


# --- path ids and query strings ---------------------------------------------------------------


ODD_IDS = [
    "%00",
    "wat_%00x",
    "%ff",
    "%ed%a0%80",
    "%F0%9F%92%A9",
    "..%2F..%2Fhealthz",
    "a%2Fdeliveries",
    "%2e%2e",
    "%25",
    "%3F",
    "*",
    "wat_" + "a" * 5000,
    "wat_%E2%80%AEtxt",
    "' OR 1=1 --",
    "wat_x:att",
]


@pytest.mark.parametrize("wid", ODD_IDS)
async def test_odd_path_ids_are_404(api: Client, wid: str) -> None:
    for method, path in ROUTES:
        answer = await send_raw(api, http(method, path.format(wid.replace(" ", "%20"))))
        raw_problem(answer, 404)
    await assert_healthy(api)


@pytest.mark.parametrize(
    "query",
    [
        "limit=1&limit=100",
        "status=watching&status=cancelled",
        "videoId=a&videoId=b",
        "cursor={c}&cursor={c}",
    ],
)
async def test_repeated_query_params_are_named(api: Client, query: str) -> None:
    query = query.format(c=encode_cursor(now_ms(), "wat_" + "z" * 24))
    resp = await api.get(f"/v1/watches?{query}", headers=auth())
    data = await problem(resp, 422)
    assert names(data, query.split("=")[0]), data


@pytest.mark.parametrize("limit", ["1_0", "%2B5", "%205", "%EF%BC%91"])
async def test_limit_must_be_plain_digits(api: Client, limit: str) -> None:
    resp = await api.get(f"/v1/watches?limit={limit}", headers=auth())
    assert names(await problem(resp, 422), "limit")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=", "limit"),
        ("limit=-1", "limit"),
        ("limit=1.5", "limit"),
        ("limit=1e2", "limit"),
        ("limit=" + "9" * 5000, "limit"),
        ("status=", "status"),
        ("status=WATCHING", "status"),
        ("videoId=", "videoId"),
        ("videoId=%ff", "videoId"),
        ("videoId=" + "a" * 129, "videoId"),
        ("cursor=%ff", "cursor"),
        ("cursor=" + "A" * 5000, "cursor"),
        ("%ff=1", "\ufffd"),
    ],
)
async def test_bad_query_values_are_named(api: Client, query: str, field: str) -> None:
    resp = await api.get(f"/v1/watches?{query}", headers=auth())
    data = await problem(resp, 422)
    assert field in [e["field"] for e in data["errors"]], data


# --- tenants ----------------------------------------------------------------------------------


async def _create(api: Client, key: str, **overrides: Any) -> dict[str, Any]:
    resp = await api.post("/v1/watches", json=body(**overrides), headers=auth(key))
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def test_a_cursor_reveals_nothing_to_another_tenant(api: Client) -> None:
    a_ids, b_ids = [], []
    for n in range(6):
        a_ids.append((await _create(api, TENANT_A_KEY, videoId="shared"))["id"])
        if n % 2:
            b_ids.append((await _create(api, TENANT_B_KEY, videoId="shared"))["id"])
    for query in ("limit=2", "limit=2&videoId=shared", "limit=2&status=watching"):
        page = await (await api.get(f"/v1/watches?{query}", headers=auth())).json()
        cursor = page["nextCursor"]
        assert cursor
        resp = await api.get(f"/v1/watches?{query}&cursor={cursor}", headers=auth(TENANT_B_KEY))
        assert resp.status in (200, 422), await resp.text()
        if resp.status == 200:
            seen = [w["id"] for w in (await resp.json())["data"]]
            assert set(seen) <= set(b_ids), (seen, b_ids)


async def test_a_cursor_belongs_to_its_listing(api: Client) -> None:
    """A cursor used with other filters than the listing that handed it out, or by another
    tenant, is refused naming the cursor (a final status is ordered by when watches became
    final, the others by when they were made: read as a position in another index it would
    skip or repeat watches); with its own filters it goes on; a cursor made before cursors
    named their listing is still read as a position."""
    made = [(await _create(api, TENANT_A_KEY, videoId="v1"))["id"] for _ in range(3)]
    for wid in made:
        assert (await api.delete(f"/v1/watches/{wid}", headers=auth())).status == 204
    listing = "/v1/watches?status=cancelled"
    first = await (await api.get(f"{listing}&limit=1", headers=auth())).json()
    cursor = first["nextCursor"]
    assert cursor
    for query in ("", "status=watching&", "videoId=v1&status=cancelled&", "videoId=v1&"):
        resp = await api.get(f"/v1/watches?{query}cursor={cursor}", headers=auth())
        data = await problem(resp, 422)
        assert names(data, "cursor") and "other filters" in str(data), data
    theirs = await api.get(f"{listing}&cursor={cursor}", headers=auth(TENANT_B_KEY))
    assert names(await problem(theirs, 422), "cursor")
    every = [w["id"] for w in (await (await api.get(listing, headers=auth())).json())["data"]]
    rest = await (await api.get(f"{listing}&cursor={cursor}", headers=auth())).json()
    assert [w["id"] for w in first["data"] + rest["data"]] == every and sorted(every) == sorted(
        made
    )
    old = encode_cursor(now_ms() + 60_000, "wat_" + "z" * 24)
    resp = await api.get(f"{listing}&cursor={old}", headers=auth())
    assert [w["id"] for w in (await resp.json())["data"]] == every
    for empty in ("cursor=", "cursor"):  # (as the other parameters: named, not ignored)
        resp = await api.get(f"{listing}&{empty}", headers=auth())
        assert names(await problem(resp, 422), "cursor")


async def test_another_tenants_watch_looks_like_no_watch(api: Client, redis: Redis) -> None:
    mine = await _create(api, TENANT_A_KEY)
    before = await redis.hgetall(f"cr:w:{mine['id']}")  # type: ignore[misc]
    for method, path in ROUTES:
        theirs = await api.request(method, path.format(mine["id"]), headers=auth(TENANT_B_KEY))
        unknown = await api.request(
            method, path.format("wat_" + "0" * 24), headers=auth(TENANT_B_KEY)
        )
        assert theirs.status == unknown.status == 404
        assert await theirs.read() == await unknown.read()
    after = await redis.hgetall(f"cr:w:{mine['id']}")  # type: ignore[misc]
    assert after == before  # nothing rotated, cancelled or rescheduled


async def test_key_suffixes_in_path_ids_stay_404(
    api: Client,
    make_worker: WorkerFactory,
    sim: Client,
    receiver: tuple[Receiver, str],
) -> None:
    """``wat_x:r`` names the Redis key of x's registration (and ``wat_x:att`` named its
    attempt list before the attempts moved into the watch's hash): no such id reaches a key."""
    await make_worker()
    resp = await sim.post("/_sim/videos", json={})
    vid = (await resp.json())["id"]
    rec, base = receiver
    made = await _create(api, TENANT_A_KEY, videoId=vid, callbackUrl=base + "/h")
    rec.add_secret(made["secret"])
    await rec.wait_for(1, timeout=10)
    for _ in range(100):
        attempts = await api.get(f"/v1/watches/{made['id']}/deliveries", headers=auth())
        if (await attempts.json())["data"]:
            break
        await asyncio.sleep(0.05)
    assert (await attempts.json())["data"], "precondition: the watch has an attempt list"
    answers = []
    for key in (TENANT_A_KEY, TENANT_B_KEY):
        for suffix in (":r", ":att"):
            for method, path in ROUTES:
                url = path.format(made["id"] + suffix)
                resp = await api.request(method, url, headers=auth(key))
                answers.append((method, path, resp.status, resp.content_type))
    await assert_healthy(api)
    if any(a[2:] != (404, PROBLEM) for a in answers):
        raise ProductBug(answers)
