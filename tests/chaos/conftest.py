"""Fixtures of the chaos suite: its own Redis (AOF, fixed port and data directory) for the
whole session, and a fresh :class:`~tests.chaos.harness.Stack` per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest

from relay.devtools.embedded_redis import free_port
from relay.devtools.stack import spawn, wait_http
from tests.chaos.harness import RESULTS, UPSTREAM_KEY, ChaosRedis, Stack


@pytest.fixture(scope="session")
def chaos_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosRedis]:
    """A Redis the suite may kill, stop, freeze and restart on the same port and data."""
    server = ChaosRedis(tmp_path_factory.mktemp("chaos-redis"))
    server.start()
    yield server
    server.thaw()
    server.stop()


@pytest.fixture(scope="session")
def chaos_sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One simulator process for the session (each test resets it)."""
    port = free_port()
    args = ["upstream-sim", "--port", str(port), "--api-key", UPSTREAM_KEY]
    sim = spawn("sim", args, {}, tmp_path_factory.mktemp("chaos-sim"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_sim/stats", 20, sim)
        yield url
    finally:
        sim.kill()


@pytest.fixture
async def stack(
    chaos_redis: ChaosRedis, chaos_sim_url: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    """Receiver, the reset simulator and a flushed chaos Redis; tests start API and workers."""
    s = Stack(chaos_redis, tmp_path / "logs")
    await s.start(chaos_sim_url)
    yield s
    await s.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test's scenario lines travel on its report (from an xdist worker too), to be
    repeated at the end of the run (``tests/conftest.py``)."""
    report = yield
    if call.when == "call":
        report.user_properties += [("chaos", line) for line in RESULTS]
        RESULTS.clear()
    return report
