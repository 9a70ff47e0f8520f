"""``clip-relay worker``: an arq worker that also runs the poll and delivery pumps and the
retention sweeper.

arq runs the process: signals, its health-check key, the expiry jobs. ``startup`` opens
the shared resources and starts the pumps; ``shutdown`` stops them, giving attempts in
flight RELAY_SHUTDOWN_GRACE seconds. A small HTTP server on RELAY_METRICS_PORT answers
``/healthz`` (alive), ``/readyz`` (Redis and the pumps) and ``/metrics``
(:mod:`workers.health`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from arq import Worker
from arq.worker import func
from redis.exceptions import (
    AuthenticationError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay import constants as c
from relay import logs
from relay.domain.crypto import SecretBox, held
from relay.http.dns import Resolver
from relay.http.ssrf import CallbackPolicy
from relay.http.upstream import UpstreamClient
from relay.http.webhook import WebhookClient
from relay.logs import Every
from relay.settings import Settings
from relay.store import EXPIRE_JOB, Store, timesync
from relay.store.connection import arq_settings, connect
from relay.store.serializer import dumps, loads
from relay.tasks import finish
from workers import health
from workers.delivery import Deliverer
from workers.expirer import Expirer
from workers.jobs import STORE, expire_watch
from workers.poller import Poller
from workers.sweeper import Sweeper
from workers.upstream_budget import UpstreamGate

log = logs.get("workers.worker")
SETTINGS = "settings"
RUNTIME = "runtime"
HEALTH_INTERVAL = 10  # seconds between arq health-check writes (arq's default is an hour)
EARLY = "early"  # ctx: the store and metrics runner RelayWorker.main opened before arq's start
WAIT_TRY_S = 1.0  # a worker waiting for Redis asks this often
WAIT_LOG_S = 10.0  # between two "waiting for redis" lines
OUTAGE_LOG_S = 60.0  # between two "redis unavailable" lines of arq's poll loop
ARQ_CLOSE_S = 5.0  # arq's own cleanup at the stop (its health key, its pool), at most


@dataclass(slots=True)
class Runtime:
    """What a running worker holds, closed in reverse order at shutdown."""

    store: Store
    poller: Poller
    deliverer: Deliverer
    expirer: Expirer
    sweeper: Sweeper
    upstream_session: aiohttp.ClientSession
    callbacks: WebhookClient
    metrics_runner: web.AppRunner | None
    gauges: asyncio.Task[None]
    pauses: asyncio.Task[None]  # the gate following other workers' 429 pauses


async def startup(ctx: dict[str, Any]) -> None:
    """Open Redis and the metrics server, the upstream session and the webhook client;
    start the pumps."""
    settings: Settings = ctx[SETTINGS]
    # (what is open stays in ctx[EARLY] until the runtime takes it over, with no turn of the
    # loop between: a stop during this startup closes it -- before, the metrics server and
    # the Redis pool of a worker stopped here were left open, a review)
    early: tuple[Store, web.AppRunner | None] | None = ctx.get(EARLY)
    if early is not None:  # opened by RelayWorker.main, before arq's own start
        store, runner = early
    else:
        store = Store(connect(settings.redis_url))
        ctx[EARLY] = (store, None)
        # its port first: a port in use stops the worker before any pump has claimed work
        runner = await health.serve(settings, store, lambda: RUNTIME in ctx)
        ctx[EARLY] = (store, runner)
    # Redis' clock before the first time this worker computes (a retry's due time, ...)
    with contextlib.suppress(Exception):  # (Redis away again: the gauges learn it)
        async with asyncio.timeout(1.0):
            await timesync.sync(store.redis)
    policy = CallbackPolicy(settings.callback_allow, Resolver(settings.dns_servers))
    upstream_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.poll_concurrency * 2, ttl_dns_cache=60),
        raise_for_status=False,
    )
    # aiohttp silently re-sends an idempotent request once when the connection drops; each
    # send must spend a token of the shared RELAY_UPSTREAM_RPS budget, so no silent re-send
    # (the next poll tries again). aiohttp's own test client turns it off the same way.
    upstream_session._retry_connection = False
    # callbacks get their own client: it connects only to addresses the SSRF policy allows
    callbacks = WebhookClient(
        policy,
        timeout=settings.delivery_timeout,
        max_idle=2 * settings.delivery_concurrency,
    )
    upstream = UpstreamClient(
        upstream_session,
        settings.scalereach_base_url,
        settings.scalereach_api_key,
        settings.upstream_timeout,
    )
    gate = UpstreamGate(store.limits, settings.upstream_rps)
    poller = Poller(store, upstream, gate, settings)
    deliverer = Deliverer(
        store,
        callbacks,
        settings,
        box=SecretBox(settings.secrets_key),
        upstream=upstream,
        gate=gate,
    )
    fan_out = poller.fan_out  # (the events it makes go to this worker's deliverer first)
    fan_out.on_events = deliverer.offer
    fan_out.room = deliverer.room
    fan_out.pace = deliverer.pace
    fan_out.origin_room = deliverer.origin_room
    fan_out.on_clips = deliverer.keep_clips
    expirer = Expirer(store, lease_s=settings.lease, render_s=settings.render_timeout)
    sweeper = Sweeper(store, retention_s=settings.retention)
    poller.start()
    deliverer.start()
    expirer.start()
    sweeper.start()
    ctx.pop(EARLY, None)  # (taken over: the runtime closes them)
    ctx[STORE] = store
    ctx[RUNTIME] = Runtime(
        store,
        poller,
        deliverer,
        expirer,
        sweeper,
        upstream_session,
        callbacks,
        runner,
        asyncio.create_task(health.gauges(store, settings.lease, held(settings.secrets_key))),
        asyncio.create_task(gate.follow_pauses()),
    )
    log.info(
        "worker started",
        poll_interval=settings.poll_interval,
        upstream=settings.scalereach_base_url,
        metrics_port=settings.metrics_port,
        retention_s=settings.retention,
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    """Stop claiming work; finish what is in flight within the grace; close everything."""
    rt: Runtime | None = ctx.pop(RUNTIME, None)  # (a second call has nothing to stop)
    if rt is None:
        await _close_early(ctx)
        return
    grace = ctx[SETTINGS].shutdown_grace
    log.info("worker stopping", grace_s=grace)
    await asyncio.gather(
        rt.poller.stop(grace),
        rt.deliverer.stop(grace),
        rt.expirer.stop(grace),
        rt.sweeper.stop(grace),
    )
    rt.gauges.cancel()
    await finish(rt.gauges, 1.0)
    rt.poller.gate.stop_following()
    await finish(rt.pauses, 2.0)
    await rt.upstream_session.close()
    await rt.callbacks.close()
    if rt.metrics_runner is not None:
        await rt.metrics_runner.cleanup()
    await rt.store.redis.aclose()
    gate = rt.deliverer.gate
    log.info(
        "worker stopped",
        polls=rt.poller.polls,
        attempts=rt.deliverer.sent,
        purged=rt.sweeper.purged,
        claim_checks=gate.checked,
        claim_check_round_trips=gate.round_trips,
        claims_gone=gate.dropped,
    )


def worker_options(settings: Settings) -> dict[str, Any]:
    """The arq ``Worker`` keyword arguments for *settings* (WorkerSettings, as a function
    because the values come from the environment at start)."""
    return {
        "functions": [func(expire_watch, name=EXPIRE_JOB, max_tries=5)],
        "queue_name": c.ARQ_QUEUE,
        "redis_settings": arq_settings(settings.redis_url),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {SETTINGS: settings},
        "job_serializer": dumps,
        "job_deserializer": loads,
        "health_check_interval": HEALTH_INTERVAL,
        "health_check_key": c.ARQ_HEALTH_KEY,
        "job_timeout": 10,  # expiry jobs are a few Redis calls; keeps crash takeover < 30 s
        "keep_result": 60,
        "max_jobs": 50,
        "poll_delay": 0.25,
    }


class RelayWorker(Worker):
    """arq's Worker, made to ride out a Redis outage instead of exiting on the first error.

    Started during an outage, it serves ``/healthz`` (alive) and ``/readyz`` (not ready)
    and waits for Redis as long as the outage lasts (arq alone gives up after a minute and
    exits, which under Kubernetes turns an outage into a crash loop). Once running, the
    pumps retry on their own, and this keeps arq's own poll loop (expiry jobs and the
    health key) alive until Redis is back.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._outage = Every(OUTAGE_LOG_S)  # arq's poll loop failing: one line a minute

    async def main(self) -> None:
        settings: Settings = self.ctx[SETTINGS]
        store = Store(connect(settings.redis_url))
        try:
            # a port in use: stops here; ready once startup has started the pumps
            runner = await health.serve(settings, store, lambda: RUNTIME in self.ctx)
        except BaseException:
            await store.redis.aclose()
            raise
        self.ctx[EARLY] = (store, runner)
        try:
            await wait_for_redis(store)
        except BaseException:  # stopped while waiting: arq has no pool, runs no shutdown
            await _close_early(self.ctx)
            raise
        await super().main()

    async def close(self) -> None:
        # the pumps first, bounded by their own grace whatever Redis does; then arq's own
        # cleanup (its health key, its pool), whose Redis calls have no timeout of their
        # own: a hung Redis must not keep the process from ending (its on_shutdown finds
        # nothing left to stop)
        await shutdown(self.ctx)
        try:
            async with asyncio.timeout(ARQ_CLOSE_S):
                await super().close()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis unavailable at shutdown", error=type(exc).__name__)

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if self._outage.due():
                log.warning("redis unavailable; retrying", error=type(exc).__name__)
            await asyncio.sleep(1.0)
        except ResponseError as exc:
            # Redis refusing writes -- full (noeviction: OOM), a replica (READONLY: after a
            # failover, or a REDIS_URL naming one), its disk failing (MISCONF) -- refuses
            # arq's health key: the pumps and the sweep go on (the sweep frees memory), so
            # must arq's loop. At error level: a replica or a disk needs an operator. A
            # script running past busy-reply-threshold (BUSY) makes Redis refuse everything
            # until it ends: every worker would exit at once, so they wait it out too.
            if str(exc).startswith("BUSY"):
                if self._outage.due():
                    log.warning("redis busy running a script; retrying", error="BUSY")
                await asyncio.sleep(1.0)
                return
            if not refuses_writes(exc):
                raise
            if self._outage.due():
                log.error(
                    "redis refuses writes; retrying (a full Redis frees itself; a replica "
                    "or a failing disk needs an operator)",
                    error="MISCONF" if str(exc).startswith("MISCONF") else type(exc).__name__,
                )
            await asyncio.sleep(1.0)
        else:
            self._outage.reset()


def refuses_writes(exc: ResponseError) -> bool:
    """Whether Redis refused a write for its state, not for the command: full (OOM), a
    replica (READONLY), or a disk it cannot save to (MISCONF)."""
    return isinstance(exc, OutOfMemoryError | ReadOnlyError) or str(exc).startswith("MISCONF")


async def wait_for_redis(store: Store) -> None:
    """Return once Redis answers a PING, logging at the first miss and every WAIT_LOG_S
    while it does not (at error level when Redis refuses the worker: REDIS_URL's
    credentials or database, a mistake of the configuration rather than an outage)."""
    log_every = Every(WAIT_LOG_S)
    tries = 0
    while True:
        try:
            async with asyncio.timeout(WAIT_TRY_S):
                await store.redis.ping()
        except (AuthenticationError, ResponseError) as exc:
            if log_every.due():
                log.error(
                    "redis refuses the worker: check REDIS_URL's credentials and database",
                    error=type(exc).__name__,
                )
        except (RedisError, OSError, TimeoutError) as exc:
            if log_every.due():
                log.warning("waiting for redis", error=type(exc).__name__, tries=tries + 1)
        else:
            if tries:
                log.info("redis answers", tries=tries)
            return
        tries += 1
        await asyncio.sleep(WAIT_TRY_S)


async def _close_early(ctx: dict[str, Any]) -> None:
    """Close what RelayWorker.main opened if startup never took it over."""
    early: tuple[Store, web.AppRunner | None] | None = ctx.pop(EARLY, None)
    if early is None:
        return
    store, runner = early
    if runner is not None:
        await runner.cleanup()
    await store.redis.aclose()


def run(settings: Settings) -> int:
    """Run the worker until SIGINT/SIGTERM."""
    worker = RelayWorker(**worker_options(settings))
    worker.run()
    return 0


__all__ = ["RelayWorker", "Runtime", "run", "shutdown", "startup", "worker_options"]
