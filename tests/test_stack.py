"""The real commands as an operator runs them: `clip-relay api`, `worker`, `upstream-sim`
and `demo` as processes, configured only by environment variables."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from relay.devtools.embedded_redis import (
    PORT_SHARE_ENV,
    RedisServer,
    ephemeral_range,
    free_port,
    outside_ephemeral,
)
from relay.devtools.receiver import Receiver
from relay.devtools.stack import LocalStack, relay_env, spawn, start_local_stack, wait_http

UPSTREAM_KEY = "sr_live_" + "cd34" * 12
API_KEY = "stack-test-key-42"


@pytest.fixture
async def stack(
    redis_server: RedisServer, redis: Redis, tmp_path: Path
) -> AsyncIterator[LocalStack]:
    # `redis` flushes the database: a stack starts from nothing another test left behind
    running = await asyncio.to_thread(
        start_local_stack,
        redis_server.url,
        tmp_path,
        api_keys=f"stack:{API_KEY}",
        upstream_key=UPSTREAM_KEY,
        extra={"RELAY_POLL_INTERVAL": "0.2", "RELAY_SHUTDOWN_GRACE": "3"},
    )
    yield running
    running.stop(timeout=10)


async def _round_trip(stack: LocalStack, receiver_url: str, rec: Receiver) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(stack.upstream + "/_sim/videos", json={}) as resp:
            video_id = (await resp.json())["id"]
        async with http.post(
            stack.api + "/v1/watches",
            json={"videoId": video_id, "callbackUrl": receiver_url + "/hook", "minScore": 50},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp:
            assert resp.status == 201
            watch: dict[str, Any] = await resp.json()
        rec.add_secret(watch["secret"])
        await rec.wait_for(1, timeout=15)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            async with http.get(
                f"{stack.api}/v1/watches/{watch['id']}",
                headers={"Authorization": f"Bearer {API_KEY}"},
            ) as resp:
                watch = await resp.json()
            if watch["status"] == "delivered":
                return watch
            await asyncio.sleep(0.05)
    raise AssertionError(f"not delivered: {watch}")


async def test_metrics_and_logs_after_a_round_trip(
    stack: LocalStack, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    watch = await _round_trip(stack, url, rec)
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.api + "/metrics") as resp:
            api_metrics = await resp.text()
        async with http.get(stack.metrics + "/metrics") as resp:
            worker_metrics = await resp.text()
    for series in (
        'relay_http_requests_total{method="POST",route="/v1/watches",status="201"}',
        "relay_http_request_duration_seconds_bucket",
        'relay_watches{status="delivered"}',
    ):
        assert series in api_metrics, series
    for series in (
        'relay_upstream_requests_total{code="200",endpoint="status",outcome="ok"}',
        'relay_upstream_requests_total{code="200",endpoint="clips",outcome="ok"}',
        'relay_deliveries_total{outcome="ok"} 1.0',
        "relay_delivery_duration_seconds_count 1.0",
        "relay_callback_connections_opened_total 1.0",
        "relay_notify_latency_seconds_count 1.0",
        'relay_queue_depth{queue="poll"}',
        'relay_queue_due{queue="delivery"} 0.0',
        "relay_redis_up 1.0",
        'relay_dns_lookups_total{result="cached_failed"} 0.0',
        "relay_upstream_rate_limited_total",
    ):
        assert series in worker_metrics, series
    # no *_created series beside each counter and histogram (a timestamp per series)
    assert "_created" not in api_metrics + worker_metrics
    # the two probes answer alike (one parser for both in a monitoring stack)
    async with aiohttp.ClientSession() as http:
        probes = []
        for url in (stack.api, stack.metrics):
            async with http.get(url + "/readyz") as resp:
                probes.append((resp.status, resp.headers["Content-Type"], await resp.read()))
    assert probes[0] == probes[1] == (200, "application/json", b'{"status":"ok"}')
    # each process exports the series it makes: none of the other's, always 0, beside them
    for name in ("relay_upstream_paused", "relay_upstream_requests", "relay_deliveries_total"):
        assert name not in api_metrics, name
    assert "relay_http_requests_total" not in worker_metrics
    # ... and both export what both make: the API checks callbacks (DNS) and sends pings
    for name in ("relay_dns_lookups_total", "relay_callback_connections_opened_total"):
        assert name in api_metrics and name in worker_metrics, name

    for proc in stack.procs[1:]:
        assert proc.stop(timeout=15) == 0, proc.log_text()[-2000:]
    worker_lines = [orjson.loads(line) for line in stack.procs[2].log_text().splitlines()]
    attempts = [line for line in worker_lines if line["event"] == "delivery attempt"]
    assert len(attempts) == 1
    (attempt,) = attempts
    assert attempt["watch_id"] == watch["id"] and attempt["video_id"] == watch["videoId"]
    assert attempt["event_id"].startswith("evt_") and attempt["level"] == "info"
    assert any(line.get("logger", "").startswith("arq") for line in worker_lines)
    api_lines = [orjson.loads(line) for line in stack.procs[1].log_text().splitlines()]
    assert all("request_id" in line for line in api_lines if line["event"] == "request")
    for text in (stack.procs[1].log_text(), stack.procs[2].log_text()):
        assert API_KEY not in text and UPSTREAM_KEY not in text


def test_demo_exits_zero_with_two_verified_events() -> None:
    """Also in a shell whose relay settings are malformed: the demo's processes get an
    environment of their own (a tester saw it stop with exit 2 on one it never used)."""
    result = subprocess.run(
        [sys.executable, "-m", "relay", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "RELAY_RETRY_SCHEDULE": "bogus"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "both events verified" in result.stdout
    assert result.stdout.count("clips.ready") == 2
    assert result.stdout.count("-> ok") == 2


def test_module_loggers_follow_setup_even_when_imported_first() -> None:
    code = (
        "import workers.delivery.logger, relay.api.app\n"  # module-level loggers exist before setup
        "from relay import logs\n"
        "logs.setup('json')\n"
        "workers.delivery.logger.log.info('probe', n=1)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    line = orjson.loads(result.stderr.strip().splitlines()[-1])
    assert line["event"] == "probe" and line["logger"] == "workers.deliverer"
    assert result.stdout == ""


def test_free_ports_picked_for_one_stack_are_never_the_same() -> None:
    # the kernel may give a just-closed port again; two processes of one stack on one port fail
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    # ... nor taken by the kernel meanwhile: none is in its ephemeral range (bind(0) and the
    # local ends of outgoing connections draw from it), where there is room outside it
    low, high = ephemeral_range()
    if outside_ephemeral() is not None:
        assert not any(low <= p <= high for p in ports)


def test_processes_side_by_side_pick_their_free_ports_from_shares_that_never_meet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CLIP_RELAY_PORT_SHARE=k/n (each pytest-xdist worker's, inherited by the processes it
    starts): a process picks only every n-th port from the k-th, so a port one keeps
    unbound for a while (a chaos test's Redis restarting on it) is never another's pick."""
    monkeypatch.setenv(PORT_SHARE_ENV, "0/1")  # (the whole range: under xdist it is a share)
    whole = outside_ephemeral()
    if whole is None:
        pytest.skip("the kernel's ephemeral range leaves no room outside it")
    for k in (0, 1, 2):
        monkeypatch.setenv(PORT_SHARE_ENV, f"{k}/3")
        picked = [free_port() for _ in range(100)]
        assert all((p - whole.start) % 3 == k for p in picked), (k, picked[:5])


def ci_env(
    redis_url: str,
    *,
    port: int | None = None,
    metrics_port: int | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of one API or worker process started by a test (free ports unless
    given; an upstream nobody answers on)."""
    return relay_env(
        redis_url,
        "http://127.0.0.1:9/v1",
        api_keys="ci:" + "k" * 32,
        upstream_key="sr_test",
        port=port or free_port(),
        metrics_port=metrics_port or free_port(),
        extra=extra,
    )


def test_a_process_that_exits_before_answering_names_what_it_logged(tmp_path: Path) -> None:
    # a stack that fails to start says why (CI keeps no log directory): the log's tail
    port = free_port()
    env = ci_env("not-a-url", port=port)
    proc = spawn("api", ["api"], env, tmp_path)
    try:
        why = r"(?s)exited with 2 .*its log ends:.*configuration error.*REDIS_URL"
        with pytest.raises(RuntimeError, match=why):
            wait_http(f"http://127.0.0.1:{port}/healthz", 20, proc)
    finally:
        proc.stop()


def _start_failing(
    command: str, redis_server: RedisServer, tmp_path: Path, extra: dict[str, str]
) -> tuple[int, str]:
    """Run ``clip-relay COMMAND`` with *extra* settings that stop it at the start: its exit
    code and its last line on stderr (after checking there is no traceback)."""
    env = ci_env(redis_server.url, extra={**extra, "PATH": os.environ["PATH"]})
    done = subprocess.run(
        [sys.executable, "-m", "relay", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("busy", ["api RELAY_PORT", "worker RELAY_METRICS_PORT"])
def test_a_port_in_use_is_one_line_and_exit_1(
    busy: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A second process on a port already taken says so in one line (no traceback), as a
    configuration error does, and exits 1."""
    command, variable = busy.split()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        code, last = _start_failing(
            command, redis_server, tmp_path, {variable: str(taken.getsockname()[1])}
        )
    finally:
        taken.close()
    assert code == 1, last
    assert last.startswith(f"clip-relay {command}: cannot listen on 127.0.0.1:"), last
    assert "in use" in last, last


@pytest.mark.parametrize("tool", ["receiver", "upstream-sim"])
def test_a_dev_tools_port_in_use_is_one_line_and_exit_1(tool: str) -> None:
    """The receiver and the simulator on a port already taken say so in one line naming
    --port, and the receiver never claims to be listening (a tester: a traceback after
    "listening on")."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    cli = str(Path(sys.executable).with_name("clip-relay"))
    extra = ["--api-key", "k"] if tool == "upstream-sim" else ["--no-verify"]
    try:
        done = subprocess.run(
            [cli, tool, "--host", "127.0.0.1", "--port", port, *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        taken.close()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "listening" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"clip-relay {tool}: cannot listen") and "--port" in last, last


def test_a_relay_host_of_no_address_here_is_a_bad_value_exit_2(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """RELAY_HOST=999.0.0.1 is a bad value, as the README says of every one: one line
    naming the variable, exit 2 (it was 1, as for a port in use: a newcomer's try)."""
    code, last = _start_failing("api", redis_server, tmp_path, {"RELAY_HOST": "999.0.0.1"})
    assert code == 2, last
    assert "cannot listen on 999.0.0.1" in last and "RELAY_HOST" in last, last


def test_a_worker_started_while_redis_is_away_waits_for_it(tmp_path: Path) -> None:
    """A worker started before Redis: its /healthz answers (alive: nothing to restart) and
    /readyz says 503 at once; it waits, saying so, and once Redis comes up on that port it
    is ready, with no restart (arq alone gave up after a minute and exited). Stopped while
    Redis is away, it still stops cleanly (arq's own cleanup failed with a traceback)."""
    redis_port, metrics = free_port(), free_port()
    env = ci_env(f"redis://127.0.0.1:{redis_port}/0", metrics_port=metrics)
    proc = spawn("worker", ["worker"], env, tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{metrics}/healthz", 20, proc)
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=5)
        assert raised.value.code == 503
        assert json.loads(raised.value.read()) == {"status": "unavailable"}  # Redis, named
        time.sleep(1.5)
        (tmp_path / "redis").mkdir()
        server = RedisServer.start(port=redis_port, workdir=tmp_path / "redis")
        try:
            wait_http(f"http://127.0.0.1:{metrics}/readyz", 20, proc)
            deadline = time.monotonic() + 20
            while "worker started" not in proc.log_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            log = proc.log_text()
            assert proc.alive() and "worker started" in log, log[-2000:]
            assert "waiting for redis" in log and "redis answers" in log
        finally:
            server.stop()
        # stopped while Redis is away again: a clean stop all the same
        assert proc.stop() == 0
        log = proc.log_text()
        assert "Traceback" not in log and "worker stopped" in log, log[-3000:]
    finally:
        proc.stop()


def test_a_worker_stopped_while_redis_hangs_stops_within_its_bounds(tmp_path: Path) -> None:
    """Redis stops answering (SIGSTOP) and the worker gets SIGTERM: it stops -- its pumps
    within their grace, arq's own cleanup bounded -- instead of waiting for Redis for ever
    (arq's pool has no socket timeout)."""
    (tmp_path / "redis").mkdir()
    server = RedisServer.start(workdir=tmp_path / "redis")
    metrics = free_port()
    env = ci_env(server.url, metrics_port=metrics, extra={"RELAY_SHUTDOWN_GRACE": "2"})
    proc = spawn("worker", ["worker"], env, tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{metrics}/readyz", 20, proc)
        server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            code = proc.stop(timeout=40)
            took = time.monotonic() - started
        finally:
            server.process.send_signal(signal.SIGCONT)
        log = proc.log_text()
        assert took < 25, (took, log[-3000:])
        assert code == 0 and "worker stopped" in log and "Traceback" not in log, log[-3000:]
    finally:
        proc.stop()
        server.stop()
