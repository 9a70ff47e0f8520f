"""Chaos harness: the relay as real processes on loopback, to kill, stop and restart.

- :class:`ChaosRedis` is the suite's own Redis-protocol server, started with
  ``config/redis.conf`` (AOF, ``appendfsync everysec``) on a port and data directory that stay
  the same across restarts, so a test can SIGKILL, SIGTERM, SIGSTOP and start it again.
- :class:`Stack` runs API and worker processes (``relay.devtools.stack.spawn`` +
  ``relay.devtools.stack.relay_env``) against an upstream simulator process (the session's,
  reset, or
  one of its own), a verifying receiver in the test's event loop (plus answers a receiver may
  give that it has no script for: long bodies, redirects, HTTP-date Retry-After), an HTTP
  session and a Redis client to observe the relay's state.
- :func:`wait_until` polls a condition with a deadline; :func:`report` prints one line per
  scenario (events due, delivered, duplicates, lost, time to recover) and keeps it for the
  terminal summary.

Every wait is asynchronous: the receiver shares the test's loop and must keep answering.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from relay import constants as c
from relay.devtools.embedded_redis import RedisServer, free_port
from relay.devtools.receiver import Receiver
from relay.devtools.receiver import create_app as receiver_app
from relay.devtools.stack import Proc, relay_env, spawn
from relay.store.connection import connect

ROOT = Path(__file__).resolve().parents[2]
REDIS_CONF = ROOT / "config" / "redis.conf"
UPSTREAM_KEY = "sr_live_" + "c4a05e" * 8
API_KEY = "chaos-tenant-key-0123456789abcdef"
TENANT = "chaos"
SECRET = "whsec_" + base64.b64encode(b"clip-relay chaos suite secret, 32+ b").decode()
AUTH = {"Authorization": f"Bearer {API_KEY}"}
FINAL = frozenset({"delivered", "failed", "disabled", "cancelled"})

# Scaled-down settings shared by the chaos tests (each test overrides what it is about).
FAST_ENV: dict[str, str] = {
    "RELAY_POLL_INTERVAL": "0.5",
    "RELAY_RATE_LIMIT": "100000",
    "RELAY_UPSTREAM_RPS": "1000",
    "RELAY_RETRY_SCHEDULE": "0.5,1,1,2,2,2",
    "RELAY_LEASE": "3",
    "RELAY_DELIVERY_TIMEOUT": "2",
    "RELAY_UPSTREAM_TIMEOUT": "2",
    "RELAY_SHUTDOWN_GRACE": "3",
    "RELAY_RENDER_TIMEOUT": "20",
    "RELAY_WATCH_TIMEOUT": "300",
    "RELAY_SECRET_GRACE": "600",
}

RESULTS: list[str] = []  # one line per scenario, printed again in the terminal summary
_STACKS = itertools.count(1)  # numbers the stacks of a session (simulated video ids)


# --- waiting --------------------------------------------------------------------------------


async def wait_until(
    condition: Callable[[], Awaitable[bool] | bool],
    timeout: float,
    *,
    interval: float = 0.05,
    what: str = "condition",
) -> float:
    """Poll *condition* (sync or async) until it holds; return when it did (``time.time()``).

    AssertionError naming *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return time.time()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:g} s")
        await asyncio.sleep(interval)


async def wait_http(url: str, timeout: float, proc: Proc | None = None) -> None:
    """Until *url* answers 200 (AssertionError when *proc* exits first or time runs out)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
        while True:
            if proc is not None and not proc.alive():
                raise AssertionError(
                    f"{proc.name} exited with {proc.popen.returncode}:\n{tail(proc)}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer 200 within {timeout:g} s")
            await asyncio.sleep(0.05)


def tail(proc: Proc, lines: int = 25) -> str:
    """The last lines of a process's log."""
    return "\n".join(proc.log_text().splitlines()[-lines:])


# --- reporting --------------------------------------------------------------------------------


def report(
    scenario: str,
    *,
    due: int,
    delivered: int,
    duplicates: int,
    lost: int,
    recover_s: float | None,
    **extra: object,
) -> str:
    """Print (and keep) one scenario line: events due, delivered, duplicates, lost, recovery."""
    rec = "-" if recover_s is None else f"{recover_s:.2f}s"
    more = "".join(
        f" {k}={v:.2f}" if isinstance(v, float) else f" {k}={v}" for k, v in extra.items()
    )
    line = (
        f"[chaos] {scenario:<24} due={due} delivered={delivered} duplicates={duplicates} "
        f"lost={lost} recover={rec}{more}"
    )
    print(line, flush=True)
    RESULTS.append(line)
    return line


# --- the chaos Redis ----------------------------------------------------------------------------


class ChaosRedis:
    """A Redis-protocol server with ``config/redis.conf`` on a fixed port and data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.server: RedisServer | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL; the same across restarts."""
        return f"redis://127.0.0.1:{self.port}/0"

    def alive(self) -> bool:
        """Whether the server process runs."""
        return self.server is not None and self.server.process.poll() is None

    def start(self) -> None:
        """Start (or restart) the server on the same port and data: it loads the AOF."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server = RedisServer.start(port=self.port, workdir=self.data_dir, config=REDIS_CONF)

    def kill(self) -> None:
        """SIGKILL: a crash; what the AOF had not fsynced yet is lost."""
        if self.server is not None and self.alive():
            self.server.process.kill()
            self.server.process.wait()

    def stop(self) -> None:
        """SIGTERM: Redis writes the AOF out and exits."""
        if self.server is not None:
            self.server.stop()

    def freeze(self) -> None:
        """SIGSTOP: the server hangs (connections stay open, nothing answers)."""
        if self.server is not None:
            os.kill(self.server.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self.server is not None:
            os.kill(self.server.process.pid, signal.SIGCONT)

    def ensure(self) -> None:
        """Start the server when a previous test left it stopped."""
        if not self.alive():
            self.start()


# --- receiver tallies -----------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What the receiver got for a set of watches."""

    due: int
    ids_by_watch: dict[str, set[str]]  # webhook ids seen per watch
    ok_by_id: Counter[str]  # 2xx answers per webhook id
    hits_by_id: Counter[str]  # every recorded POST per webhook id

    @property
    def delivered(self) -> int:
        """Watches whose event got at least one 2xx."""
        return sum(1 for ids in self.ids_by_watch.values() if any(self.ok_by_id[i] for i in ids))

    @property
    def lost(self) -> int:
        """Watches with no successful delivery."""
        return self.due - self.delivered

    @property
    def duplicates(self) -> int:
        """2xx deliveries beyond the first of each webhook id."""
        return sum(n - 1 for n in self.ok_by_id.values() if n > 1)

    def dup_ids(self) -> list[str]:
        """Webhook ids delivered (2xx) more than once."""
        return [i for i, n in self.ok_by_id.items() if n > 1]

    def multi_id_watches(self) -> dict[str, set[str]]:
        """Watches that got more than one distinct webhook id (must not happen)."""
        return {w: ids for w, ids in self.ids_by_watch.items() if len(ids) > 1}


# --- the stack ----------------------------------------------------------------------------


@dataclass(slots=True)
class Registered:
    """A watch the API acknowledged."""

    id: str
    video_id: str
    acked_at: float  # time.time() when the 201 arrived
    path: str


Special = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Hit:
    """A request answered by a special receiver route (any method)."""

    path: str
    webhook_id: str
    at: float


@dataclass
class Stack:
    """Simulator, API and worker processes on one :class:`ChaosRedis`, plus a receiver."""

    redis: ChaosRedis
    log_dir: Path
    url_ttl: float = 3600.0
    procs: dict[str, Proc] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # process name -> command
    api_ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    receiver: Receiver = field(default_factory=lambda: Receiver([SECRET]))
    special: dict[str, Special] = field(default_factory=dict)
    special_hits: list[Hit] = field(default_factory=list)
    sim_url: str = ""
    receiver_url: str = ""
    _http: aiohttp.ClientSession | None = None
    _db: Redis | None = None
    _runner: web.AppRunner | None = None
    _seq: int = 0
    serial: int = field(default_factory=lambda: next(_STACKS))

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, sim_url: str | None = None) -> Stack:
        """Flush the chaos Redis, start the receiver, and use the simulator at *sim_url*
        (reset) or start one of its own."""
        await asyncio.to_thread(self.redis.ensure)
        await self.db.flushall()
        app = receiver_app(self.receiver)
        app.middlewares.append(self._special_middleware)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.receiver_url = f"http://127.0.0.1:{port}"
        if sim_url is None:
            await self.start_sim(free_port())
        else:
            self.sim_url = sim_url
            async with self.http.post(f"{sim_url}/_sim/reset") as resp:
                assert resp.status == 204
        return self

    async def start_sim(self, port: int, url_ttl: float | None = None) -> None:
        """Start a simulator process of this stack's own on *port* (before the API and the
        workers); its signed links live *url_ttl* seconds."""
        if url_ttl is not None:
            self.url_ttl = url_ttl
        old = self.procs.get("sim")
        if old is not None and old.alive():
            old.kill()
        args = ["upstream-sim", "--port", str(port), "--api-key", UPSTREAM_KEY]
        sim = spawn("sim", [*args, "--url-ttl", str(self.url_ttl)], {}, self.log_dir)
        self.procs["sim"] = sim
        self.sim_url = f"http://127.0.0.1:{port}"
        await wait_http(f"{self.sim_url}/_sim/stats", 20, sim)

    async def close(self) -> None:
        """SIGKILL every process still running (tests stop gracefully what they check);
        close the receiver and the clients."""
        for proc in self.procs.values():
            if proc.alive():
                proc.kill()
            else:
                proc.stop(timeout=0)  # already exited: reap it, close its log
        if self._http is not None:
            await self._http.close()
        if self._db is not None:
            with contextlib.suppress(Exception):
                await self._db.aclose()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def http(self) -> aiohttp.ClientSession:
        """A client session for the API, the simulator and the receiver."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._http

    @property
    def db(self) -> Redis:
        """A Redis client for observing (and, for time travel, editing) the relay's state."""
        if self._db is None:
            self._db = connect(self.redis.url)
        return self._db

    def _env(self, name: str, extra: Mapping[str, str | None]) -> dict[str, str]:
        port = self.api_ports.setdefault(name, free_port())
        metrics = self.metrics_ports.setdefault(name, free_port())
        merged: dict[str, str | None] = {**FAST_ENV, **extra}
        return relay_env(
            self.redis.url,
            self.sim_url,
            api_keys=f"{TENANT}:{API_KEY}",
            upstream_key=UPSTREAM_KEY,
            port=port,
            metrics_port=metrics,
            extra={k: v for k, v in merged.items() if v is not None},  # None: product default
        )

    def _spawn(self, name: str, command: str, extra: Mapping[str, str | None]) -> Proc:
        old = self.procs.get(name)
        if old is not None:
            assert not old.alive(), f"{name} is still running"
            old.stop(timeout=0)  # reap it, close its log (the new one appends to the file)
        proc = spawn(name, [command], self._env(name, extra), self.log_dir)
        self.procs[name] = proc
        self.kinds[name] = command
        return proc

    async def start_api(self, name: str = "api", **extra: str | None) -> Proc:
        """Start ``clip-relay api`` and wait for ``/healthz``."""
        proc = self._spawn(name, "api", extra)
        await wait_http(f"{self.api(name)}/healthz", 20, proc)
        return proc

    async def start_worker(self, name: str = "worker", **extra: str | None) -> Proc:
        """Start ``clip-relay worker`` and wait for its ``/readyz`` (pumps running)."""
        proc = self._spawn(name, "worker", extra)
        await wait_http(f"http://127.0.0.1:{self.metrics_ports[name]}/readyz", 20, proc)
        return proc

    def api(self, name: str = "api") -> str:
        """Base URL of an API process."""
        return f"http://127.0.0.1:{self.api_ports[name]}"

    def kill(self, name: str) -> float:
        """SIGKILL a process; returns when (``time.time()``)."""
        proc = self.procs[name]
        assert proc.alive(), f"{name} is not running:\n{tail(proc)}"
        at = time.time()
        proc.kill()
        return at

    async def terminate(self, name: str, timeout: float) -> tuple[int | None, float]:
        """SIGTERM a process and wait up to *timeout* s: (exit code or None, seconds taken)."""
        proc = self.procs[name]
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        try:
            code: int | None = await asyncio.to_thread(proc.popen.wait, timeout)
        except subprocess.TimeoutExpired:
            code = None
            proc.kill()
        return code, time.monotonic() - started

    async def quiesce(self, timeout: float = 15.0) -> None:
        """SIGTERM every running worker and wait for it: what they had in flight has landed,
        so counting what the receiver got is final (a late duplicate cannot arrive later)."""
        names = [n for n, k in self.kinds.items() if k == "worker" and self.procs[n].alive()]
        results = await asyncio.gather(*(self.terminate(n, timeout) for n in names))
        for name, (code, _) in zip(names, results, strict=True):
            assert code == 0, f"{name} exited with {code}:\n{tail(self.procs[name])}"

    # --- the simulator --------------------------------------------------------------------

    async def videos(self, count: int, **template: Any) -> list[str]:
        """Create *count* simulated videos from one template; returns their ids (unique in
        the session: a shared simulator may still log a previous test's requests)."""
        self._seq += 1
        body = {"count": count, "prefix": f"s{self.serial}v{self._seq}", "template": template}
        async with self.http.post(f"{self.sim_url}/_sim/videos/bulk", json=body) as resp:
            assert resp.status == 201, await resp.text()
            ids: list[str] = (await resp.json())["ids"]
            return ids

    async def video(self, **spec: Any) -> str:
        """Create one simulated video."""
        async with self.http.post(f"{self.sim_url}/_sim/videos", json=spec) as resp:
            assert resp.status == 201, await resp.text()
            return str((await resp.json())["id"])

    async def fault(self, kind: str, **options: Any) -> None:
        """Inject a simulator fault (options: path, videoId, times, retryAfter, delay)."""
        async with self.http.post(
            f"{self.sim_url}/_sim/faults", json={"kind": kind, **options}
        ) as resp:
            assert resp.status == 201, await resp.text()

    async def clear_faults(self) -> None:
        """Remove every injected fault."""
        async with self.http.delete(f"{self.sim_url}/_sim/faults") as resp:
            assert resp.status == 204

    async def sim_log(self, since: float | None = None) -> list[tuple[float, str, str, int]]:
        """The simulator's request log: (time, status|clips, video id, HTTP status or 0)."""
        url = f"{self.sim_url}/_sim/stats" + ("" if since is None else f"?since={since}")
        async with self.http.get(url) as resp:
            data = await resp.json()
        return [(float(t), str(p), str(v), int(s)) for t, p, v, s in data["log"]]

    # --- the API ------------------------------------------------------------------------------

    async def register(
        self,
        video_ids: Iterable[str],
        *,
        path: str = "/hooks/a",
        api: str | Sequence[str] = "api",
        concurrency: int = 16,
        base: str | None = None,
        **fields: Any,
    ) -> list[Registered]:
        """Register one watch per video id (repeat ids for several), calling back
        ``base + path`` (default: the receiver); spread over the *api* processes."""
        apis = [api] if isinstance(api, str) else list(api)
        sem = asyncio.Semaphore(concurrency)

        async def one(n: int, vid: str) -> Registered:
            body = {
                "videoId": vid,
                "callbackUrl": (base or self.receiver_url) + path,
                "secret": SECRET,
                **fields,
            }
            async with (
                sem,
                self.http.post(
                    f"{self.api(apis[n % len(apis)])}/v1/watches", json=body, headers=AUTH
                ) as resp,
            ):
                assert resp.status == 201, f"{resp.status}: {await resp.text()}"
                data = await resp.json()
                return Registered(data["id"], vid, time.time(), path)

        return list(await asyncio.gather(*(one(n, v) for n, v in enumerate(video_ids))))

    async def get_watch(self, watch_id: str, api: str = "api") -> tuple[int, dict[str, Any]]:
        """``GET /v1/watches/{id}``: (status, body)."""
        async with self.http.get(f"{self.api(api)}/v1/watches/{watch_id}", headers=AUTH) as r:
            return r.status, await r.json(content_type=None)

    async def deliveries(self, watch_id: str, api: str = "api") -> list[dict[str, Any]]:
        """Every recorded attempt of a watch."""
        async with self.http.get(
            f"{self.api(api)}/v1/watches/{watch_id}/deliveries", headers=AUTH
        ) as resp:
            assert resp.status == 200, await resp.text()
            data: list[dict[str, Any]] = (await resp.json())["data"]
            return data

    async def redeliver(self, watch_id: str, api: str = "api") -> tuple[int, dict[str, Any]]:
        """``POST /v1/watches/{id}/redeliver``: (status, body)."""
        async with self.http.post(
            f"{self.api(api)}/v1/watches/{watch_id}/redeliver", headers=AUTH
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    # --- Redis observations -------------------------------------------------------------------

    async def statuses(self, watch_ids: Sequence[str]) -> dict[str, str | None]:
        """Each watch's status as stored (None: no such watch)."""
        pipe = self.db.pipeline(transaction=False)
        for wid in watch_ids:
            pipe.hget(c.WATCH_KEY.format(wid), "st")  # status|attempt|... (relay.store.codec)
        rows = await pipe.execute()
        return {
            w: st.split("|", 1)[0] if st else None for w, st in zip(watch_ids, rows, strict=True)
        }

    async def all_final(self, watch_ids: Sequence[str]) -> bool:
        """Whether every watch reached a final status."""
        return all(s in FINAL for s in (await self.statuses(watch_ids)).values())

    async def wait_final(self, watch_ids: Sequence[str], timeout: float) -> float:
        """Wait until every watch is final; returns when (AssertionError lists stragglers)."""
        try:
            return await wait_until(
                lambda: self.all_final(watch_ids), timeout, interval=0.1, what="all final"
            )
        except AssertionError:
            st = await self.statuses(watch_ids)
            stuck = {w: s for w, s in st.items() if s not in FINAL}
            raise AssertionError(
                f"{len(stuck)} of {len(watch_ids)} watches not final after {timeout:g} s: "
                f"{dict(list(stuck.items())[:5])} (logs: {self.log_dir})"
            ) from None

    async def ahead(self, beyond_s: float = 0.0) -> dict[tuple[str, str], float]:
        """Members of both schedules whose score is later than now + *beyond_s*:
        (schedule, member) -> score. A claimed member's score is its lease deadline, so with
        *beyond_s* above the poll interval and retry gaps these are the claims; with 0 they
        are the claims and everything scheduled for later."""
        horizon = (time.time() + beyond_s) * 1000
        out: dict[tuple[str, str], float] = {}
        for key in (c.POLL_SCHEDULE_KEY, c.DELIVERY_SCHEDULE_KEY):
            for member, score in await self.db.zrangebyscore(
                key, f"({horizon}", "+inf", withscores=True
            ):
                out[(key, member)] = score
        return out

    async def taken_over(self, held: Mapping[tuple[str, str], float]) -> bool:
        """Whether every member of *held* (see :meth:`ahead`) was claimed again (its score
        moved) or is done (gone from its schedule)."""
        for (key, member), score in held.items():
            now = await self.db.zscore(key, member)
            if now is not None and now == score:
                return False
        return True

    # --- the receiver ---------------------------------------------------------------------------

    def tally(self, watch_ids: Iterable[str], *, since: int = 0) -> Tally:
        """What the receiver got for these watches (from its *since*-th recorded POST on)."""
        wanted = set(watch_ids)
        ids_by_watch: dict[str, set[str]] = defaultdict(set)
        ok: Counter[str] = Counter()
        hits: Counter[str] = Counter()
        for ev in self.receiver.events[since:]:
            wid = ev.event.get("data", {}).get("watchId")
            if wid not in wanted:
                continue
            ids_by_watch[wid].add(ev.webhook_id)
            hits[ev.webhook_id] += 1
            if 200 <= ev.status < 300:
                ok[ev.webhook_id] += 1
        return Tally(len(wanted), dict(ids_by_watch), ok, hits)

    def received(self, watch_ids: Iterable[str]) -> int:
        """How many of these watches got a recorded delivery (any answer)."""
        wanted = set(watch_ids)
        return len({e.event["data"]["watchId"] for e in self.receiver.events} & wanted)

    async def listen(self, port: int) -> None:
        """Let the receiver also answer on *port* (e.g. one that refused connections so far)."""
        assert self._runner is not None
        await web.TCPSite(self._runner, "127.0.0.1", port).start()

    async def attempts(self, watch_id: str) -> int:
        """How many delivery attempts are recorded for a watch."""
        st = await self.db.hget(c.WATCH_KEY.format(watch_id), "st")  # type: ignore[misc]
        return int(st.split("|")[2]) if st else 0  # status|attempt|records|... (codec)

    async def has_received(self, watch_ids: Iterable[str], count: int) -> bool:
        """Whether at least *count* of these watches got a recorded delivery."""
        return self.received(watch_ids) >= count

    @web.middleware
    async def _special_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        special = self.special.get(request.path)
        if special is None:
            return await handler(request)
        self.special_hits.append(
            Hit(request.path, request.headers.get("webhook-id", ""), time.time())
        )
        return await special(request)
