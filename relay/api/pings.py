"""``POST /v1/watches/{id}/ping``, and the dashboard's ping button.

A ping is sent by the API process itself, not by the worker: one attempt, never retried,
so it needs none of the worker's schedule, claims or lanes. The view answers 202 and a
background task (kept in a set the app awaits on shutdown) signs the ``watch.ping`` event
with the watch's secrets, POSTs it through the SSRF-checking webhook client, and appends
the attempt to the watch's records (``record_ping.lua``) without touching its status.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ChainMapProxy, web
from yarl import URL

from relay import logs
from relay.api import appkeys as k
from relay.api import views
from relay.api.problems import ProblemError
from relay.domain import attempts
from relay.domain.clock import now_ms
from relay.domain.events import ping_body
from relay.domain.ids import new_event_id
from relay.domain.signing import secret_bytes, sign_headers
from relay.domain.watch import Watch
from relay.http.webhook import SEND_FAILURES, Target, WebhookClient, failure_text

log = logs.get("relay.api.pings")

MAX_PINGS = 64  # pings in flight per API process, at most ...
MAX_TENANT_PINGS = 8  # ... and per tenant (one tenant's pings never hold all of them)


class Pings:
    """The API's webhook client for pings and the pings in flight: at most MAX_PINGS, of
    which MAX_TENANT_PINGS of one tenant (each holds a connection up to
    RELAY_DELIVERY_TIMEOUT: unbounded, a tenant could hold hundreds, or flood a host)."""

    def __init__(self, client: WebhookClient) -> None:
        self.client = client
        self.tasks: set[asyncio.Task[None]] = set()
        self.by_tenant: Counter[str] = Counter()

    def refusal(self, tenant: str) -> str | None:
        """Why a ping of *tenant* may not start now (None: it may)."""
        if self.by_tenant[tenant] >= MAX_TENANT_PINGS:
            return f"at most {MAX_TENANT_PINGS} pings of a tenant are sent at once"
        if len(self.tasks) >= MAX_PINGS:
            return f"at most {MAX_PINGS} pings are sent at once by this API process"
        return None

    def start(self, coro: Any, tenant: str, watch_id: str) -> None:
        """Run *coro* (the ping of *watch_id*) in the background, kept until done (awaited
        on shutdown); an error it did not expect is logged with the watch's id."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        self.by_tenant[tenant] += 1

        def done(finished: asyncio.Task[None]) -> None:
            self.tasks.discard(finished)
            self.by_tenant[tenant] -= 1
            if self.by_tenant[tenant] <= 0:
                del self.by_tenant[tenant]
            # (retrieved, else asyncio's "Task exception was never retrieved", with no watch
            # id and no attempt record -- a review)
            exc = None if finished.cancelled() else finished.exception()
            if exc is not None:
                log.error(
                    "ping failed", watch_id=watch_id, error=f"{type(exc).__name__}: {exc}"[:300]
                )

        task.add_done_callback(done)


PINGS = web.AppKey("pings", Pings)
Config = web.Application | ChainMapProxy  # (the API app, or a request's view of it)


async def pings_ctx(app: web.Application) -> AsyncIterator[None]:
    """The ping client for the app's life; pings in flight finish (or time out) first."""
    settings = app[k.SETTINGS]
    client = WebhookClient(app[k.POLICY], timeout=settings.delivery_timeout, max_idle=16)
    app[PINGS] = pings = Pings(client)
    yield
    if pings.tasks:
        await asyncio.wait(list(pings.tasks), timeout=settings.delivery_timeout + 1)
    await client.close()


async def ping(request: web.Request) -> web.Response:
    """``POST /v1/watches/{id}/ping``: one signed ``watch.ping`` to the receiver, in the
    background; 202 at once."""
    watch = await views._own_watch(request)
    views.refuse_cancelled(watch)
    # (its attempt must be recorded: near full, none is sent -- a tester's 202 whose record
    # was refused by Redis, so deliveries never showed it)
    await request.config_dict[k.BACKPRESSURE].check("pings")
    full = start_ping(request.config_dict, watch)
    if full is not None:
        raise ProblemError(
            429,
            "Too many pings in flight",
            f"{full}; retry when they have answered",
            slug="pings-in-flight",
            headers={"Retry-After": "1"},
        )
    return views.json_response({"watchId": watch.id}, status=202)


def start_ping(app: Config, w: Watch) -> str | None:
    """Start one ``watch.ping`` of *w* in the background -- the API's route and the
    dashboard's button alike, within the same bounds: None when it started, else why not
    (the pings of its tenant, or of this process, in flight at their bound)."""
    pings = app[PINGS]
    full = pings.refusal(w.tenant)
    if full is None:
        pings.start(send_ping(app, w), w.tenant, w.id)
    return full


async def send_ping(app: Config, w: Watch) -> None:
    """Sign and POST one ``watch.ping`` to the watch's callback; record the attempt."""
    at = now_ms()  # (Redis' clock: the secrets' grace, the stamp and the record)
    started = time.monotonic()
    ping_id = new_event_id()
    code: int | None = None
    error: str | None = None
    answer = ""
    try:
        body = ping_body(w, at)
        box = app[k.SECRET_BOX]
        keys = [secret_bytes(box.open(s.sealed)) for s in w.signing_secrets(at)]
        headers = sign_headers(keys, ping_id, at // 1000, body)
        reply = await app[PINGS].client.post(
            Target.of(URL(w.callback_for_sending(box.open))), headers.items(), body
        )
        code = reply.status
        answer = reply.body.decode(errors="replace")
    except SEND_FAILURES as exc:  # e.g. a timeout, or a callback refused by the SSRF policy
        error = failure_text(exc)
    latency_ms = round((time.monotonic() - started) * 1000, 2)
    record = attempts.ping_record(at, code, error, latency_ms, answer or None, ping_id)
    try:
        ok = code is not None and 200 <= code < 300
        await app[k.STORE].watches.record_ping(w.id, record, w.tenant, ok)
    except Exception as exc:  # the attempt was made; only its record is lost
        log.warning("ping not recorded", watch_id=w.id, error=type(exc).__name__)
    log.info("ping", watch_id=w.id, event_id=ping_id, status_code=code, error=error)
