"""The API process's drain on stop: not ready first, in-flight requests finish, then exit."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp

from relay.api.serve import serve
from relay.devtools.embedded_redis import free_port
from relay.settings import Settings


async def test_drain_reports_not_ready_then_stops(settings: Settings) -> None:
    port = free_port()
    cfg = dataclasses.replace(settings, host="127.0.0.1", port=port, shutdown_grace=2)
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
