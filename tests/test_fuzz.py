"""Schemathesis against the API's own ``/openapi.json``: zero 5xx, every answer documented.

The API runs in a background thread on a loopback port (real HTTP, real valkey-server) with
NO worker, so a generated callback URL is at most stored, never called. RELAY_CALLBACK_ALLOW
opens only 127.0.0.1/32: generated callback URLs are nearly all refused (422).
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.specs.openapi import checks as oa

from relay.app import create_app
from relay.openapi import document
from relay.redis_server import RedisServer
from relay.settings import ApiKey, CallbackAllow, Settings
from tests.conftest import TENANT_A_KEY, TENANT_B_KEY

AUTH = {"Authorization": f"Bearer {TENANT_A_KEY}"}
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
        self.runner = web.AppRunner(create_app(self.settings), access_log=None)
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


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_every_route_conforms(case: Case, fuzz_api: str) -> None:
    """Generated requests (valid and invalid) with a valid key: no 5xx, documented answers."""
    case.call_and_validate(base_url=fuzz_api, headers=AUTH, checks=CHECKS, timeout=10)


def test_served_document_is_the_generated_one(fuzz_api: str) -> None:
    resp = requests.get(f"{fuzz_api}/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == document()
