"""Helpers that drive the stack from the harness: registering watches, creating simulated
videos, and running the separate load-generator processes (``loadgen.py``, ``wrk``) and the
registration baseline server."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
PROCESSING: dict[str, Any] = {"timeline": [{"status": "processing", "progress": 42, "after": 0}]}


async def create_videos(
    http: aiohttp.ClientSession, sim: str, prefix: str, count: int
) -> list[str]:
    """Create *count* simulated videos that stay ``processing`` until switched."""
    body = {"count": count, "prefix": prefix, "template": PROCESSING}
    async with http.post(f"{sim}/_sim/videos/bulk", json=body) as resp:
        if resp.status != 201:
            raise RuntimeError(f"bulk create failed: {resp.status} {await resp.text()}")
        ids: list[str] = (await resp.json())["ids"]
        return ids


async def switch_status(
    http: aiohttp.ClientSession, sim: str, video_id: str, status: str = "completed"
) -> float:
    """Switch a simulated video's status now; return the simulator's ``at`` (Unix s)."""
    async with http.post(f"{sim}/_sim/videos/{video_id}/status", json={"status": status}) as r:
        if r.status != 200:
            raise RuntimeError(f"switch failed: {r.status} {await r.text()}")
        return float((await r.json())["at"])


async def sim_clips(http: aiohttp.ClientSession, sim: str, video_id: str) -> list[dict[str, Any]]:
    """The simulator's internal view of a video's clips (id, score, status...)."""
    async with http.get(f"{sim}/_sim/videos/{video_id}") as resp:
        clips: list[dict[str, Any]] = (await resp.json())["clips"]
        return clips


async def register(
    http: aiohttp.ClientSession,
    api: str,
    headers: dict[str, str],
    bodies: Sequence[dict[str, Any]],
    concurrency: int = 64,
) -> list[dict[str, Any]]:
    """POST every body to ``/v1/watches`` at *concurrency*; the created watches, in order.
    Raises RuntimeError on any answer but 201."""
    out: list[dict[str, Any] | None] = [None] * len(bodies)
    next_i = iter(range(len(bodies)))

    async def lane() -> None:
        for i in next_i:
            async with http.post(f"{api}/v1/watches", json=bodies[i], headers=headers) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"registration answered {resp.status}: {await resp.text()}")
                out[i] = await resp.json()

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return [w for w in out if w is not None]


# --- separate processes -------------------------------------------------------------------


@contextlib.contextmanager
def temp_file(data: bytes, suffix: str) -> Iterator[str]:
    """A temporary file holding *data*, removed afterwards; yields its path."""
    with tempfile.NamedTemporaryFile("wb", suffix=suffix, delete=False) as f:
        f.write(data)
    try:
        yield f.name
    finally:
        Path(f.name).unlink(missing_ok=True)


async def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``bench/loadgen.py`` with *spec* in its own process; its JSON result."""
    with temp_file(orjson.dumps(spec), ".json") as path:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "loadgen.py"),
            path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {err.decode()[-2000:]}")
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return result


WRK_SCRIPT = """
local bodies = {%(bodies)s}
local headers = {%(headers)s}
local reqs = {}
local n = 0
init = function(args)
  for i, b in ipairs(bodies) do reqs[i] = wrk.format("POST", "%(path)s", headers, b) end
end
request = function()
  n = n + 1
  return reqs[(n %% #reqs) + 1]
end
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"status_errors":%%d,"connect_errors":%%d,' ..
    '"read_errors":%%d,"write_errors":%%d,"timeouts":%%d,"p50_us":%%d,"p99_us":%%d,' ..
    '"max_us":%%d}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50.0), latency:percentile(99.0), latency.max))
end
"""


def have_wrk() -> bool:
    """Is ``wrk`` on PATH?"""
    return shutil.which("wrk") is not None


def _lua_string(s: str) -> str:
    level = "=" * 3
    if f"]{level}]" in s:
        raise ValueError("body contains the Lua long-bracket terminator")
    return f"[{level}[{s}]{level}]"


async def wrk(
    url: str,
    path: str,
    bodies: Sequence[bytes],
    headers: dict[str, str],
    *,
    concurrency: int,
    duration: float,
) -> dict[str, Any]:
    """Run ``wrk`` (one thread, *concurrency* connections) POSTing *bodies* in turn;
    the same result keys as :func:`loadgen` (``rps``, ``p50_ms``, ``p99_ms``...)."""
    script = WRK_SCRIPT % {
        "bodies": ", ".join(_lua_string(b.decode()) for b in bodies),
        "headers": ", ".join(
            f"[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()
        ),
        "path": path,
    }
    with temp_file(script.encode(), ".lua") as script_path:
        proc = await asyncio.create_subprocess_exec(
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            script_path,
            url + path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate()
    line = next((ln for ln in out.decode().splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out.decode()} {err.decode()}")
    raw = orjson.loads(line.removeprefix("WRKJSON "))
    elapsed = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return {
        "requests": raw["requests"],
        "elapsed": elapsed,
        "rps": raw["requests"] / elapsed,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "non_2xx": raw["status_errors"],
        "errors": errors,
    }
