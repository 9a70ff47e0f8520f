"""The registration API: ``create_app()`` and its middlewares."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache
from typing import Any

import structlog
from aiohttp import hdrs, web
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay import logs
from relay.api import appkeys as k
from relay.api.appkeys import Lifecycle
from relay.api.auth import Authenticator
from relay.api.backpressure import Backpressure
from relay.api.pings import pings_ctx
from relay.api.problems import ProblemError, invalid
from relay.api.routes import READS_BODY, READS_QUERY, setup_routes
from relay.api.throttle import RateLimiter
from relay.api.views import WATCH_ID, refuse_body
from relay.constants import MAX_BODY_BYTES, REQUEST_DEADLINE
from relay.domain.crypto import SecretBox, held
from relay.http.dns import Resolver
from relay.http.ssrf import CallbackPolicy
from relay.metrics import HTTP_LATENCY, HTTP_REQUESTS
from relay.settings import Settings
from relay.store import Store, timesync
from relay.store.connection import SOCKET_TIMEOUT, connect, trim_idle
from relay.store.upkeep import say_keys_held
from relay.ui import mount as mount_ui

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TRIM_EVERY_S = 5.0  # how often idle Redis connections beyond a few are closed
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
log = logs.get("relay.api")
# Redis trouble is said a few times a second at most, however many requests meet it (each
# still has its access line, 503): an outage at 1,000 requests a second is not 1,000 error
# lines a second
_REDIS_TROUBLE = logs.Sampled(1.0, burst=3)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id, log one line per request, count it in the metrics."""
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    wid = request.match_info.get("watch_id")
    if wid is not None and WATCH_ID.fullmatch(wid):  # (its line names the watch: API or UI)
        structlog.contextvars.bind_contextvars(watch_id=wid)
    started = time.perf_counter()
    status = 500
    try:
        response = await answer(request, handler)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-Id"] = request_id
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        # (a method outside HTTP's own is one label: a client's made-up methods are not
        # series kept for good -- llhttp refuses most, the pure-Python parser none)
        method = request.method if request.method in hdrs.METH_ALL else "OTHER"
        _counter(name, method, status).inc()
        _latency(name).observe(elapsed)
        if name not in ("/healthz", "/readyz", "/metrics"):
            log.info(
                "request",
                method=request.method,
                path=name,
                status=status,
                ms=round(elapsed * 1000, 2),
            )


@lru_cache(maxsize=512)
def _counter(route: str, method: str, status: int) -> Any:
    return HTTP_REQUESTS.labels(route, method, str(status))


@lru_cache(maxsize=128)
def _latency(route: str) -> Any:
    return HTTP_LATENCY.labels(route)


async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the handler within the request deadline and answer every error as problem+json:
    Redis trouble is 503, never a hang or a 500. (Called by :func:`observe`, so that one
    middleware layer does both.)"""
    try:
        async with asyncio.timeout(REQUEST_DEADLINE):
            return await handler(request)
    except ProblemError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = {413: "too-large", 404: "not-found", 405: "method-not-allowed"}.get(exc.status)
        detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        if exc.status == 413:
            detail = f"the body must be at most {MAX_BODY_BYTES} bytes"
        raise ProblemError(
            exc.status, exc.reason, detail or exc.reason, slug=slug, headers=_keep(exc)
        ) from None
    except (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError) as exc:
        if isinstance(exc, TimeoutError) and request.get(k.READING_BODY):
            # the deadline ended while the body was still coming: the client is slow, not
            # Redis (a review, 2026-12-06: it was answered "storage unreachable")
            raise ProblemError(
                408,
                "Request timeout",
                f"the body did not arrive within {REQUEST_DEADLINE:g} s",
                slug="timeout",
                headers={"Connection": "close"},
            ) from None
        _REDIS_TROUBLE.say(log.error, "redis unavailable", error=type(exc).__name__)
        raise ProblemError(
            503,
            "Service unavailable",
            "the relay's storage is unreachable; try again shortly",
            slug="unavailable",
            headers={"Retry-After": "1"},
        ) from None
    except (OutOfMemoryError, ReadOnlyError) as exc:
        # Redis full (noeviction) or a replica after a failover: nothing was written
        _REDIS_TROUBLE.say(log.error, "redis refused a write", error=type(exc).__name__)
        raise ProblemError(
            503,
            "Service unavailable",
            "the relay's storage cannot take writes right now; try again shortly",
            slug="unavailable",
            headers={"Retry-After": "5"},
        ) from None
    except RedisError as exc:
        # any other error reply (BUSY with a long script, MISCONF on a full disk,
        # MASTERDOWN, ...): Redis' trouble, not the request's
        error = f"{type(exc).__name__}: {exc}"[:200]
        _REDIS_TROUBLE.say(log.error, "redis answered an error", error=error)
        raise ProblemError(
            503,
            "Service unavailable",
            "the relay's storage answered with an error; try again shortly",
            slug="unavailable",
            headers={"Retry-After": "1"},
        ) from None
    except Exception:
        log.exception("unhandled error")
        raise ProblemError(
            500, "Internal error", "the relay failed to handle this request", slug="internal"
        ) from None


def _keep(exc: web.HTTPException) -> dict[str, str]:
    return {h: v for h, v in exc.headers.items() if h in ("Allow", "Retry-After")}


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every ``/v1`` route needs a Bearer key of RELAY_API_KEYS; the rest is public."""
    if not request.path.startswith("/v1/") and request.path != "/v1":
        return await handler(request)
    given = request.headers.getall("Authorization", [])
    who = request.app[k.AUTH].authenticate(given[0]) if len(given) == 1 else None
    if who is None:
        detail = (  # (which key was tried is never said: only whether one came)
            "this API key is not one of the relay's (RELAY_API_KEYS)"
            if len(given) == 1 and given[0].partition(" ")[0].lower() == "bearer"
            else "send one Authorization: Bearer <API key> header"
        )
        raise ProblemError(
            401,
            "Unauthorized",
            detail,
            slug="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="clip-relay"'},
        )
    request[k.PRINCIPAL] = who
    structlog.contextvars.bind_contextvars(tenant=who.tenant)
    if not request.app[k.RATE_LIMITER].allow(who.key_id):
        limit = request.app[k.SETTINGS].rate_limit
        raise ProblemError(
            429,
            "Too many requests",
            f"this API key may make {limit:g} requests per second",
            slug="rate-limited",
            headers={"Retry-After": "1"},
        )
    routed = request.match_info.http_exception is None  # (else a 404 or 405 follows)
    if routed and request.query and request.match_info.handler not in READS_QUERY:
        # (one ignored would be a filter or an option the caller believes applied, as
        # ?limit= on the deliveries)
        raise invalid(
            [
                {"field": name, "message": "unknown query parameter"}
                for name in sorted(request.query)
            ]
        )
    if routed and request.body_exists and request.match_info.handler not in READS_BODY:
        await refuse_body(request)  # (as {"secret": ...} to rotate-secret: not ignored)
    return await handler(request)


async def _upkeep(redis: Redis, keys_held: str, every_s: float = TRIM_EVERY_S) -> None:
    """Every *every_s*: learn Redis' clock again (the times this replica writes are Redis'),
    say which RELAY_SECRETS_KEY keys it holds (for `secrets reseal`) and close the Redis
    connections a burst of requests left idle, beyond a few. Each step goes on when another
    fails (a full Redis refuses the note, not the clock); a failure is logged once a minute
    (before, never: an API whose note failed was unseen by `secrets reseal`, a review)."""
    trouble = logs.Every(60.0)
    while True:
        await asyncio.sleep(every_s)
        steps: tuple[tuple[str, Callable[[], Awaitable[object]]], ...] = (
            ("clock", lambda: timesync.sync(redis)),
            ("keys held", lambda: say_keys_held(redis, keys_held)),
            ("idle connections", lambda: trim_idle(redis)),
        )
        for what, step in steps:
            try:
                # (each with a deadline: this client has no read timeout, and a reply that
                # never comes must not end what this replica says of its keys)
                async with asyncio.timeout(SOCKET_TIMEOUT):
                    await step()
            except Exception as exc:  # (Redis away or refusing: the next round tries again)
                if trouble.due():
                    log.warning(
                        "redis upkeep failed; tried again every few seconds",
                        step=what,
                        error=f"{type(exc).__name__}: {exc}"[:300],
                    )


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    # every request has a deadline (REQUEST_DEADLINE), so reads need no socket timeout
    redis = connect(app[k.SETTINGS].redis_url, read_timeout=None)
    app[k.REDIS] = redis
    app[k.STORE] = store = Store(redis)
    app[k.RATE_LIMITER] = limiter = RateLimiter(store.limits, app[k.SETTINGS].rate_limit)
    app[k.BACKPRESSURE] = Backpressure(store.limits, app[k.SETTINGS].redis_high_water)
    keys_held = held(app[k.SETTINGS].secrets_key)
    with contextlib.suppress(Exception):  # (Redis away: learnt on the first upkeep round)
        async with asyncio.timeout(1.0):
            await timesync.sync(redis)
            await say_keys_held(redis, keys_held)
    limiter.start()
    trimmer = asyncio.create_task(_upkeep(redis, keys_held), name="redis-upkeep")
    yield
    trimmer.cancel()
    await asyncio.gather(trimmer, return_exceptions=True)
    await limiter.stop()
    await redis.aclose()


async def _drain(app: web.Application) -> None:
    app[k.LIFECYCLE].draining = True


def create_app(settings: Settings) -> web.Application:
    """The registration API application for *settings*."""
    app = web.Application(middlewares=[observe, authenticate], client_max_size=MAX_BODY_BYTES)
    app[k.SETTINGS] = settings
    app[k.AUTH] = Authenticator(settings.api_keys)
    app[k.POLICY] = CallbackPolicy(settings.callback_allow, Resolver(settings.dns_servers))
    app[k.SECRET_BOX] = SecretBox(settings.secrets_key)
    app[k.LIFECYCLE] = Lifecycle()
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(pings_ctx)  # after Redis: pings in flight are recorded first
    app.on_shutdown.append(_drain)
    setup_routes(app)
    if settings.ui:
        mount_ui(app, settings)  # the dashboard at /ui/ (RELAY_UI=0: none)
    return app
