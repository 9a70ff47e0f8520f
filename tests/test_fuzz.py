"""Schemathesis against the API's own ``/openapi.json``: zero 5xx, every answer documented.

The API runs in a background thread on a loopback port (real HTTP, real valkey-server) with
NO worker, so a generated callback URL is at most stored, never called. RELAY_CALLBACK_ALLOW
opens only 127.0.0.1/32: generated callback URLs are nearly all refused (422).

The schema is the document ``GET /openapi.json`` serves (``relay.api.openapi.document()``,
checked equal to the served one below); it is loaded at import because schemathesis'
lazy ``from_fixture`` loader does not work with pytest 9 (it sets ``request.node._nodeid``).
Examples are derandomized so CI is reproducible; run with ``derandomize=False`` to explore.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import Case as _Case
from schemathesis.specs.openapi import checks as oa

from relay.api.app import create_app
from relay.api.openapi import document
from relay.api.serving import AppRunner
from relay.devtools.embedded_redis import RedisServer
from relay.settings import ApiKey, CallbackAllow, Settings
from tests.conftest import TENANT_A_KEY, TENANT_B_KEY

if os.environ.get("PYTEST_XDIST_WORKER"):  # (run it on its own: docs/development.md)
    pytest.skip(
        "schemathesis gives every case of test_every_route_conforms one test id, and "
        "pytest-xdist would run only one of them: run this file without -n",
        allow_module_level=True,
    )

AUTH = {"Authorization": f"Bearer {TENANT_A_KEY}"}
Case = _Case[Any]
CALLBACK = "http://127.0.0.1:9/hook"
CHECKS = [
    schemathesis.checks.not_a_server_error,
    oa.status_code_conformance,
    oa.content_type_conformance,
    oa.response_headers_conformance,
    oa.response_schema_conformance,
    oa.negative_data_rejection,
    oa.ignored_auth,
]


class ThreadedApi:
    """The registration API served by an aiohttp runner in its own thread and event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.url = ""

    def start(self) -> None:
        self.thread.start()
        fut: Future[str] = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        self.url = fut.result(timeout=15)

    async def _start(self) -> str:
        self.runner = AppRunner(create_app(self.settings), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=15)
        self.loop.close()


@pytest.fixture(scope="module")
def fuzz_api() -> Iterator[str]:
    """Base URL of an API on its own Redis, no worker, callbacks open to 127.0.0.1 only."""
    redis = RedisServer.start()
    api = ThreadedApi(
        Settings(
            redis_url=redis.url,
            api_keys=(ApiKey("tenant-a", TENANT_A_KEY), ApiKey("tenant-b", TENANT_B_KEY)),
            callback_allow=CallbackAllow((ipaddress.ip_network("127.0.0.1/32"),), frozenset()),
            rate_limit=1_000_000,
            watch_timeout=3600,
            log_format="json",
            metrics_port=0,
        )
    )
    api.start()
    try:
        yield api.url
    finally:
        api.stop()
        redis.stop()


schema = schemathesis.openapi.from_dict(document())


@schema.auth()
class TenantKey:
    """Tenant A's key on every generated case, except those that drop Authorization on
    purpose (schemathesis then expects, and the API gives, a 401)."""

    def get(self, case: Case, ctx: schemathesis.AuthContext) -> str:
        return TENANT_A_KEY

    def set(self, case: Case, data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers["Authorization"] = f"Bearer {data}"


@schema.parametrize()
@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_every_route_conforms(case: Case, fuzz_api: str) -> None:
    """Generated requests (valid and invalid) with a valid key: no 5xx, documented answers."""
    case.call_and_validate(base_url=fuzz_api, checks=CHECKS, timeout=10)


def test_served_document_is_the_generated_one(fuzz_api: str) -> None:
    """The schema fuzzed above is byte for byte what ``GET /openapi.json`` serves."""
    resp = requests.get(f"{fuzz_api}/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == document()


def _loopback_callback(case: Case) -> Case:
    if isinstance(case.body, dict):
        case.body["callbackUrl"] = CALLBACK
    return case


CREATE = schema["/v1/watches"]["POST"]
# rules the JSON Schema cannot say; a valid-by-schema body may still break them (422)
CROSS_FIELD = {"maxScore", "secret", "metadata"}


@given(case=CREATE.as_strategy().map(_loopback_callback))
@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_valid_registrations_are_created(case: Case, fuzz_api: str) -> None:
    """Schema-valid bodies with an allowed callback: 201 (or 200/409 for a reused
    Idempotency-Key), and only cross-field rules may still refuse them."""
    resp = case.call_and_validate(base_url=fuzz_api, checks=CHECKS, timeout=10)
    assert resp.status_code in (200, 201, 409, 422), resp.text
    if resp.status_code == 422:
        fields = {e["field"].split(".")[0] for e in resp.json()["errors"]}
        assert fields <= CROSS_FIELD, resp.text


def _case(path: str, method: str, **kwargs: Any) -> Case:
    return schema[path][method].Case(**kwargs)


def test_routes_on_real_watches_conform(fuzz_api: str) -> None:
    """Every route on watches that exist (success answers too), and on another tenant's."""
    ids = []
    for n in range(3):
        case = _case(
            "/v1/watches",
            "POST",
            body={"videoId": f"fz{n}", "callbackUrl": CALLBACK, "metadata": {"n": n}},
            media_type="application/json",
        )
        resp = case.call_and_validate(base_url=fuzz_api, headers=AUTH, checks=CHECKS)
        assert resp.status_code == 201
        ids.append(resp.json()["id"])
    other = {"Authorization": f"Bearer {TENANT_B_KEY}"}
    routes = [
        ("/v1/watches/{watch_id}", "GET", 200),
        ("/v1/watches/{watch_id}/deliveries", "GET", 200),
        ("/v1/watches/{watch_id}/rotate-secret", "POST", 200),
        ("/v1/watches/{watch_id}/redeliver", "POST", 409),
        ("/v1/watches/{watch_id}", "DELETE", 204),
    ]
    for path, method, expected in routes:
        for wid in ids:
            theirs = _case(path, method, path_parameters={"watch_id": wid})
            resp = theirs.call_and_validate(base_url=fuzz_api, headers=other, checks=CHECKS)
            assert resp.status_code == 404, (path, method, resp.text)
            mine = _case(path, method, path_parameters={"watch_id": wid})
            resp = mine.call_and_validate(base_url=fuzz_api, headers=AUTH, checks=CHECKS)
            assert resp.status_code == expected, (path, method, resp.text)
    cursor = None
    seen: list[str] = []
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        resp = _case("/v1/watches", "GET", query=query).call_and_validate(
            base_url=fuzz_api, headers=AUTH, checks=CHECKS
        )
        assert resp.status_code == 200
        page = resp.json()
        seen += [w["id"] for w in page["data"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert set(ids) <= set(seen)
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        resp = _case(path, "GET").call_and_validate(base_url=fuzz_api, checks=CHECKS)
        assert resp.status_code == 200


def test_api_still_healthy_after_fuzzing(fuzz_api: str) -> None:
    """Nothing the fuzzer sent left the API or its Redis unwell."""
    assert requests.get(f"{fuzz_api}/healthz", timeout=5).status_code == 200
    ready = requests.get(f"{fuzz_api}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"status": "ok"}
    listed = requests.get(f"{fuzz_api}/v1/watches?limit=1", headers=AUTH, timeout=5)
    assert listed.status_code == 200
