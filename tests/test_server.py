"""The API process's drain on stop: not ready first, in-flight requests finish, then exit."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest

from relay.api.serving import serve
from relay.devtools.embedded_redis import free_port
from relay.settings import Settings


async def test_drain_reports_not_ready_then_stops(settings: Settings) -> None:
    port = free_port()
    cfg = settings.model_copy(update={"host": "127.0.0.1", "port": port, "shutdown_grace": 2})
    stop = asyncio.Event()
    server = asyncio.create_task(serve(cfg, stop))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(url + "/readyz") as resp:
                    assert resp.status == 200
                    break
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.02)
        stop.set()
        await asyncio.sleep(0.1)
        async with http.get(url + "/readyz") as resp:  # still serving, but not ready
            assert resp.status == 503
            assert (await resp.json())["status"] == "draining"
        async with http.get(url + "/healthz") as resp:
            assert resp.status == 200
    await asyncio.wait_for(server, timeout=5)
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(url + "/healthz"):
                raise AssertionError("still listening after the drain")
        except aiohttp.ClientConnectorError:
            pass


SECRET = "Bearer key-never-echoed-0123456789"
REJECTED_BEFORE_ROUTING = {
    "malformed request line": b"GARBAGE\r\n\r\n",
    "request line with an extra word": b"GET /v1/watches HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "header line over 8 KB": (
        b"GET /v1/watches HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + SECRET.encode()
        + b"k" * 20_000
        + b"\r\n\r\n"
    ),
    "too many headers": b"GET /v1/watches HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(300))
    + b"\r\n",
    "bad chunked encoding": (
        b"POST /v1/watches HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    ),
}


async def test_serve_answers_what_aiohttp_rejects_before_routing_with_problems(
    settings: Settings,
) -> None:
    """Guards relay.api.serving's AppRunner: aiohttp (3.14) answers these itself, in plain text
    that repeats the offending line; served as `clip-relay api` serves, they are RFC 9457
    problem documents that echo nothing. Fails if an aiohttp upgrade bypasses the hook."""
    port = free_port()
    cfg = settings.model_copy(update={"host": "127.0.0.1", "port": port, "shutdown_grace": 1})
    stop = asyncio.Event()
    server = asyncio.create_task(serve(cfg, stop))
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.02)
        for case, request in REJECTED_BEFORE_ROUTING.items():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), timeout=5)
            writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            assert lines[0].split(" ")[1] == "400", (case, answer[:300])
            headers = {n.lower(): v.strip() for n, _, v in (x.partition(":") for x in lines[1:])}
            assert headers["content-type"] == "application/problem+json", (case, answer[:300])
            problem = json.loads(body)
            assert problem["status"] == 400, case
            assert problem["title"] == "Bad Request", case
            assert problem["type"].endswith("/bad-request"), case
            assert "could not be parsed" in problem["detail"], case
            assert b"key-never-echoed" not in answer, case
            assert b"GARBAGE" not in body, case
    finally:
        stop.set()
        await asyncio.wait_for(server, timeout=5)


async def test_a_port_in_use_stops_serve_with_nothing_left_running(settings: Settings) -> None:
    """The API's port taken: ``serve`` raises (the CLI says "cannot listen"), and what the
    app's start opened -- its Redis client, the rate limiter's and the idle trimmer's tasks
    -- is closed first, not left running in the process."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    before = set(asyncio.all_tasks())
    cfg = settings.model_copy(update={"host": "127.0.0.1", "port": taken.getsockname()[1]})
    try:
        with pytest.raises(OSError, match="in use"):
            await serve(cfg, asyncio.Event())
    finally:
        taken.close()
    await asyncio.sleep(0.05)
    left = [t.get_name() for t in asyncio.all_tasks() - before if not t.done()]
    assert not left, left


async def test_the_port_logged_is_the_one_bound(settings: Settings) -> None:
    """With RELAY_PORT=0 the system chooses the port: "api listening" names it (it said
    0, a configuration tester found), and the API answers there."""
    from structlog.testing import capture_logs

    cfg = settings.model_copy(update={"host": "127.0.0.1", "port": 0, "shutdown_grace": 1})
    stop = asyncio.Event()
    with capture_logs() as lines:
        server = asyncio.create_task(serve(cfg, stop))
        for _ in range(200):
            said = [e for e in lines if e["event"] == "api listening"]
            if said:
                break
            await asyncio.sleep(0.02)
    port = said[0]["port"]
    assert port != 0
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        assert resp.status == 200
    stop.set()
    await asyncio.wait_for(server, timeout=5)
