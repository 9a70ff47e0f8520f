"""Fixtures of the chaos suite: its own Redis (AOF, fixed port and data directory) for the
whole session, and a fresh :class:`~tests.chaos.harness.Stack` per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import RESULTS, ChaosRedis, Stack


@pytest.fixture(scope="session")
def chaos_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosRedis]:
    """A Redis the suite may kill, stop, freeze and restart on the same port and data."""
    server = ChaosRedis(tmp_path_factory.mktemp("chaos-redis"))
    server.start()
    yield server
    server.thaw()
    server.stop()


@pytest.fixture
async def stack(chaos_redis: ChaosRedis, tmp_path: Path) -> AsyncIterator[Stack]:
    """Simulator process and receiver on a flushed chaos Redis; tests start API and workers."""
    s = Stack(chaos_redis, tmp_path / "logs")
    await s.start()
    yield s
    await s.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat the scenario lines at the end of the run."""
    if RESULTS:
        terminalreporter.section("chaos scenarios")
        for line in RESULTS:
            terminalreporter.write_line(line)
