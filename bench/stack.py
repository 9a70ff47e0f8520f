"""The benchmark's stack: real processes on loopback, started with :mod:`relay.devtools.stack`.

One Redis-protocol server (the product's ``config/redis.conf``: AOF, ``appendfsync
everysec``; ``BENCH_REDIS_NO_AOF=1``: the server's defaults), one upstream simulator, one
receiver sink (``bench/sink.py``, its own process, verifying every signature like
``clip-relay receiver`` but parsing bodies only afterwards), one API and one or more
workers (each its own ``clip-relay worker`` process with its own
``RELAY_METRICS_PORT``). The workers are restarted per scenario because their poll interval
and budgets are read from the environment at start; between scenarios Redis is flushed, the
simulator reset and the receiver emptied. A scenario may add processes of its own (the scale
scenario's recorders, :meth:`Stack.start_script`); :meth:`Stack.stop` stops every process
the stack started, by pid.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from relay.devtools.embedded_redis import RedisServer, free_port
from relay.devtools.stack import Ports, Proc, relay_env, spawn, wait_http
from relay.domain.signing import generate_secret

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REDIS_CONF = ROOT / "config" / "redis.conf"
TENANT = "bench"

# What every relay process of the benchmark gets; scenarios add their own on top.
COMMON_ENV: dict[str, str] = {
    "RELAY_RATE_LIMIT": "1000000",  # the registration run would hit the default 50/s
    "RELAY_UPSTREAM_RPS": "5000",  # the polling run schedules 1,000/s
    "RELAY_SHUTDOWN_GRACE": "2",
    "RELAY_CALLBACK_ALLOW": "127.0.0.1/32",
    "LOG_FORMAT": "json",
}


@dataclass
class Stack:
    """The running processes and how to reach them."""

    workdir: Path
    redis: RedisServer
    ports: Ports
    upstream_key: str
    api_key: str
    secret: str
    procs: dict[str, Proc] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    # starting and stopping run in threads (asyncio.to_thread); a stop waits for a start that
    # a cancelled scenario left running, so no process it spawns is missed
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # --- addresses -----------------------------------------------------------------------

    @property
    def api(self) -> str:
        """Base URL of the API."""
        return f"http://127.0.0.1:{self.ports.api}"

    @property
    def sim(self) -> str:
        """Base URL of the upstream simulator."""
        return f"http://127.0.0.1:{self.ports.upstream}"

    @property
    def receiver(self) -> str:
        """Base URL of the receiver sink."""
        return f"http://127.0.0.1:{self.ports.receiver}"

    @property
    def auth(self) -> dict[str, str]:
        """Headers of an authenticated API request."""
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def worker(self) -> Proc:
        """The (first) worker process."""
        return self.procs["worker"]

    @property
    def workers(self) -> list[Proc]:
        """Every worker process, the first first."""
        return [p for name, p in self.procs.items() if _is_worker(name)]

    # --- lifecycle -----------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path) -> Stack:
        """Start Redis, the simulator, the receiver and the API (the worker comes per
        scenario, see :meth:`start_worker`)."""
        redis_dir = workdir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        # BENCH_REDIS_NO_AOF=1: the server's defaults instead (what AOF costs, measured)
        config = None if os.environ.get("BENCH_REDIS_NO_AOF") else REDIS_CONF
        redis = RedisServer.start(workdir=redis_dir, config=config)
        stack = cls(
            workdir=workdir,
            redis=redis,
            ports=Ports(),
            upstream_key="sr_live_" + secrets.token_hex(24),
            api_key="bench_" + secrets.token_urlsafe(18),
            secret=generate_secret(),
        )
        try:
            stack._start_tools()
            stack.procs["api"] = spawn("api", ["api"], stack.relay_env({}), workdir)
            wait_http(f"{stack.api}/healthz", 20.0, stack.procs["api"])
        except BaseException:
            stack.stop()
            raise
        return stack

    def _start_tools(self) -> None:
        self.procs["upstream-sim"] = spawn(
            "upstream-sim",
            ["upstream-sim", "--port", str(self.ports.upstream), "--api-key", self.upstream_key],
            {},
            self.workdir,
        )
        self.procs["receiver"] = spawn_script(
            "sink",
            HERE / "sink.py",
            ["--port", str(self.ports.receiver)],
            {"SINK_SECRETS": self.secret},
            self.workdir,
        )
        wait_http(f"{self.sim}/_sim/stats", 20.0, self.procs["upstream-sim"])
        wait_http(f"{self.receiver}/_events", 20.0, self.procs["receiver"])

    def relay_env(self, extra: Mapping[str, str], metrics_port: int = 0) -> dict[str, str]:
        """The environment of an API or worker process of this stack (*metrics_port*: the
        worker's, default the stack's)."""
        return relay_env(
            self.redis.url,
            self.sim,
            api_keys=f"{TENANT}:{self.api_key}",
            upstream_key=self.upstream_key,
            port=self.ports.api,
            metrics_port=metrics_port or self.ports.metrics,
            extra={**COMMON_ENV, **extra},
        )

    def start_worker(self, extra: Mapping[str, str]) -> Proc:
        """(Re)start one worker with *extra* on top of the common environment."""
        return self.start_workers(1, extra)[0]

    def start_workers(self, count: int, extra: Mapping[str, str]) -> list[Proc]:
        """(Re)start *count* workers (``worker``, ``worker-2``...), each its own process with
        its own metrics port, and wait until each answers ``/readyz`` (its pumps running).
        When one does not come up, the ones started are stopped and the error raised."""
        with self._lock:
            return self._start_workers(count, extra)

    def _start_workers(self, count: int, extra: Mapping[str, str]) -> list[Proc]:
        self.stop_worker()
        self.worker_env = self.relay_env(extra)
        started: list[tuple[Proc, int]] = []
        try:
            for n in range(count):
                name = "worker" if n == 0 else f"worker-{n + 1}"
                port = free_port()
                if n == 0:
                    self.ports.metrics = port
                proc = spawn(name, ["worker"], self.relay_env(extra, port), self.workdir)
                self.procs[name] = proc
                started.append((proc, port))
            for proc, port in started:
                wait_http(f"http://127.0.0.1:{port}/readyz", 30.0, proc)
        except BaseException:
            self.stop_worker()
            raise
        return [proc for proc, _ in started]

    def stop_worker(self) -> None:
        """Stop every worker that runs (all at once: each gets its shutdown grace)."""
        with self._lock:
            names = [name for name in self.procs if _is_worker(name)]
            _stop_all([self.procs.pop(name) for name in names])

    def start_script(self, name: str, script: Path, args: list[str]) -> Proc:
        """Start a bench tool ``python <script> <args>`` as a process of this stack (stopped
        by :meth:`stop_script` or :meth:`stop`)."""
        with self._lock:
            self.stop_script(name)
            proc = spawn_script(name, script, args, {}, self.workdir)
            self.procs[name] = proc
            return proc

    def stop_script(self, name: str) -> None:
        """Stop the process *name* if it runs."""
        with self._lock:
            proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop(timeout=15)

    def stop(self) -> None:
        """Stop every process the stack started (workers first, Redis last)."""
        try:
            self.stop_worker()
            with self._lock:
                rest = [self.procs.pop(n) for n in list(self.procs) if n != "upstream-sim"]
            _stop_all(rest)
            sim = self.procs.pop("upstream-sim", None)
            if sim is not None:
                sim.stop(timeout=15)
        finally:
            self.redis.stop()

    def pids(self) -> dict[str, int]:
        """Process ids of the stack (for CPU accounting)."""
        out = {name: proc.pid for name, proc in self.procs.items()}
        out["redis"] = self.redis.process.pid
        return out

    async def reset_redis_stats(self) -> None:
        """``CONFIG RESETSTAT``: zero Redis's per-command counters."""
        redis = self.redis_client()
        try:
            await redis.config_resetstat()
        finally:
            await redis.aclose()

    async def redis_calls(self) -> dict[str, int]:
        """Calls per command since the last reset (``INFO commandstats``)."""
        redis = self.redis_client()
        try:
            stats = await redis.info("commandstats")
        finally:
            await redis.aclose()
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    # --- state between scenarios -----------------------------------------------------------

    def redis_client(self) -> Redis:
        """A Redis client (str values) for checks; the caller closes it."""
        return Redis.from_url(self.redis.url, decode_responses=True)

    async def reset(self, http: aiohttp.ClientSession) -> None:
        """Empty Redis, the simulator and the receiver (run with the worker stopped)."""
        redis = self.redis_client()
        try:
            await redis.execute_command("FLUSHALL", "SYNC")  # (freed now: the empty memory
        finally:  # figure read next is not inflated by a lazy free still under way)
            await redis.aclose()
        await (await http.post(f"{self.sim}/_sim/reset")).release()
        await self.clear_events(http)

    async def clear_events(self, http: aiohttp.ClientSession) -> None:
        """Forget what the receiver recorded."""
        await (await http.delete(f"{self.receiver}/_events")).release()

    async def events(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """What the receiver recorded: ``{"events": [...], "unique", "duplicates"}``."""
        async with http.get(f"{self.receiver}/_events") as resp:
            data: dict[str, Any] = orjson.loads(await resp.read())
            return data

    async def wait_events(self, http: aiohttp.ClientSession, count: int, within: float) -> bool:
        """Wait until *count* distinct events arrived (False after *within* seconds); a
        long-poll, so the sink does no extra work meanwhile."""
        params = {"count": str(count), "timeout": repr(within)}
        client_timeout = aiohttp.ClientTimeout(total=within + 10)
        async with http.get(
            f"{self.receiver}/_wait", params=params, timeout=client_timeout
        ) as resp:
            return resp.status == 200

    async def sim_log(
        self, http: aiohttp.ClientSession, since: float
    ) -> list[tuple[float, str, str, int]]:
        """The simulator's request log since *since*: ``(at, path, video_id, status)``."""
        async with http.get(f"{self.sim}/_sim/stats", params={"since": repr(since)}) as resp:
            data = orjson.loads(await resp.read())
        return [(float(a), str(p), str(v), int(s)) for a, p, v, s in data["log"]]

    def worker_log_lines(self, event: str) -> list[dict[str, Any]]:
        """Parsed JSON log lines of the worker whose ``event`` is *event*."""
        out = []
        needle = f'"{event}"'
        for line in self.worker.log_text().splitlines():
            if needle in line:
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if row.get("event") == event:
                    out.append(row)
        return out


def _is_worker(name: str) -> bool:
    return name == "worker" or name.startswith("worker-")


def _stop_all(procs: list[Proc]) -> None:
    """Stop *procs* concurrently (SIGTERM, then SIGKILL after 15 s), each by its pid."""
    if not procs:
        return
    with ThreadPoolExecutor(max_workers=len(procs)) as pool:
        list(pool.map(lambda p: p.stop(timeout=15), procs))


def spawn_script(
    name: str, script: Path, args: list[str], env: Mapping[str, str], log_dir: Path
) -> Proc:
    """Start ``python <script> <args>`` (a bench tool) like :func:`relay.devtools.stack.spawn`."""
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    popen = subprocess.Popen(
        [sys.executable, str(script), *args],
        env={**base, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return Proc(name, popen, log_path, log)


def log_time(row: Mapping[str, Any]) -> float:
    """The Unix time of a structlog JSON line (its ISO ``timestamp``)."""
    return datetime.fromisoformat(str(row["timestamp"])).timestamp()


def pid_of(proc: Proc) -> int:
    """The pid of a stack process (for psutil and py-spy)."""
    return proc.pid
