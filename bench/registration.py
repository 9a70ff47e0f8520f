"""Scenario 2: registration throughput and latency.

``POST /v1/watches`` at concurrency 64 with valid bodies (64 bodies in turn, one per
simulated video), against the same load on the baseline server (``baseline_server.py``:
``orjson.loads`` + one Redis ``SET`` on the same Redis, its own process). The load generator
is ``wrk`` when it is installed (one thread), else ``loadgen.py``; both are also run against
a trivial 204 handler to show what the client alone can do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from common import PROFILER, Checks, CpuSet
from stack import HERE, TENANT, Stack, spawn_script
from tools import create_videos, have_wrk, loadgen, wrk

from relay.devtools.embedded_redis import free_port
from relay.devtools.stack import wait_port

CONCURRENCY = 64
SECONDS = 5.0
CLIENT_SECONDS = 3.0
VIDEOS = 64


@dataclass
class RegistrationRun:
    """What one run measured (throughputs in requests/s, latencies in ms)."""

    api_rps: float = 0.0
    api_p50: float = 0.0
    api_p99: float = 0.0
    base_rps: float = 0.0
    base_p50: float = 0.0
    base_p99: float = 0.0
    client_rps: float = 0.0  # the chosen load generator against a trivial handler
    py_client_rps: float = 0.0  # loadgen.py against the trivial handler
    raw: dict[str, Any] = field(default_factory=dict)


class Load:
    """The load generator: ``wrk`` if installed, else ``loadgen.py``; same for every target."""

    def __init__(self) -> None:
        self.name = "wrk -t1" if have_wrk() else "loadgen.py (aiohttp)"

    async def run(
        self, url: str, path: str, bodies: list[bytes], headers: dict[str, str], seconds: float
    ) -> dict[str, Any]:
        """POST *bodies* in turn to *url* + *path* for *seconds* at the concurrency."""
        if have_wrk():
            return await wrk(url, path, bodies, headers, concurrency=CONCURRENCY, duration=seconds)
        return await python_load(url + path, bodies, headers, seconds)


async def python_load(
    url: str, bodies: list[bytes], headers: dict[str, str], seconds: float
) -> dict[str, Any]:
    """``loadgen.py`` in ``bodies`` mode; the result with ``non_2xx`` and ``errors``."""
    result = await loadgen(
        {
            "mode": "bodies",
            "url": url,
            "concurrency": CONCURRENCY,
            "duration": seconds,
            "bodies": [b.decode() for b in bodies],
            "headers": headers,
        }
    )
    statuses = {int(k): v for k, v in result["statuses"].items()}
    result["non_2xx"] = sum(v for k, v in statuses.items() if k >= 300)
    result["errors"] = statuses.get(-1, 0)
    return result


async def run_all(
    stack: Stack, http: aiohttp.ClientSession, reps: int, workdir: Path, checks: Checks
) -> tuple[list[RegistrationRun], str]:
    """*reps* interleaved runs of the API, the baseline and the client alone."""
    videos = await create_videos(http, stack.sim, "reg", VIDEOS)
    bodies = [
        orjson.dumps(
            {
                "videoId": vid,
                "callbackUrl": f"{stack.receiver}/hooks/registration",
                "minScore": 50 + (k % 50),
                "metadata": {"bench": "registration", "k": k},
            }
        )
        for k, vid in enumerate(videos)
    ]
    json_headers = {"Content-Type": "application/json"}
    load = Load()
    port = free_port()
    base = spawn_script(
        "baseline-server",
        HERE / "baseline_server.py",
        ["--port", str(port), "--redis", stack.redis.url],
        {},
        workdir,
    )
    wait_port(port)
    base_url = f"http://127.0.0.1:{port}"
    runs: list[RegistrationRun] = []
    total = 0
    try:
        for rep in range(reps):
            run = RegistrationRun()
            cpus = CpuSet(stack.pids() | {"baseline": base.pid})  # other: incl. the load
            cpus.start()
            with PROFILER.window(f"registration-{rep}", {"api": stack.procs["api"].pid}):
                api = await load.run(
                    stack.api, "/v1/watches", bodies, {**json_headers, **stack.auth}, SECONDS
                )
            api["cores"] = cpus.cores()
            total += api["requests"]
            checks.expect(
                api["non_2xx"] == 0 and api["errors"] == 0,
                f"registration run {rep}: {api['non_2xx']} non-2xx, {api['errors']} errors",
            )
            cpus = CpuSet(stack.pids() | {"baseline": base.pid})
            cpus.start()
            b = await load.run(base_url, "/watches", bodies, json_headers, SECONDS)
            b["cores"] = cpus.cores()
            client = await load.run(base_url, "/trivial", bodies, json_headers, CLIENT_SECONDS)
            py = await python_load(f"{base_url}/trivial", bodies, json_headers, CLIENT_SECONDS)
            run.api_rps, run.api_p50, run.api_p99 = api["rps"], api["p50_ms"], api["p99_ms"]
            run.base_rps, run.base_p50, run.base_p99 = b["rps"], b["p50_ms"], b["p99_ms"]
            run.client_rps, run.py_client_rps = client["rps"], py["rps"]
            run.raw = {"api": api, "baseline": b, "client": client, "python_client": py}
            runs.append(run)
    finally:
        base.stop(timeout=10)
    redis = stack.redis_client()
    try:
        created = int(await redis.zcard(f"cr:t:{TENANT}:w"))
    finally:
        await redis.aclose()
    checks.expect(created >= total, f"registration: {created} watches stored, {total} answered 201")
    return runs, load.name
