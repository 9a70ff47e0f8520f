"""The dashboard's pages. Thin, like the API's views: read the form, call the store, render.
Every page shows the signed-in tenant's watches only; another tenant's watch is a 404."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from relay.api import appkeys as k
from relay.api.pings import start_ping
from relay.api.problems import ProblemError
from relay.api.remote import client_address, limit_bucket
from relay.api.views import VIDEO_ID, WATCH_ID, watch_json
from relay.constants import REDELIVERABLE_STATUSES, WATCH_STATUSES
from relay.domain import events
from relay.domain.clips import ClipSet
from relay.domain.clock import now_ms
from relay.domain.listing import CursorError
from relay.domain.signing import generate_secret
from relay.domain.watch import Watch
from relay.store import Store
from relay.store.watches import StaleRotation, secret_tag
from relay.ui import chart
from relay.ui.guard import (
    SESSION,
    SESSIONS,
    SIGNED_IN,
    back_to,
    dashboard,
    principal,
    render,
    session,
)
from relay.ui.session import done_action, done_tag, new_session, session_id

PAGE_SIZE = 50
SIGN_INS_PER_MINUTE = 10  # per client address (an IPv6 one: per /64)
NOTICES = {
    "redelivered": "The last event is on its way again, with its webhook-id.",
    "cancelled": "The watch is cancelled: nothing is delivered from now on.",
    "pinged": "A signed watch.ping is on its way to the receiver: its answer shows among the"
    " attempts once it has come (reload).",
}


def _store(request: web.Request) -> Store:
    return request.config_dict[k.STORE]


# --- signing in and out -----------------------------------------------------------------


async def login_form(request: web.Request) -> web.StreamResponse:
    """``GET /ui/login``: the form (signed in already: the page it was asked for on the way
    in, else the overview)."""
    back = back_to(request.query.get("next"))
    if SIGNED_IN in request:
        raise web.HTTPSeeOther(back)
    response = render(request, "login.html", {"error": None, "next": back})
    request.app[SESSIONS].write(request, response, session(request))
    return response


async def login(request: web.Request) -> web.StreamResponse:
    """``POST /ui/login``: a key of RELAY_API_KEYS signs in as its tenant."""
    address = client_address(request, request.config_dict[k.SETTINGS].trusted_proxies)
    tries = await dashboard(request).sign_in_attempt(limit_bucket(address), now_ms())
    if tries > SIGN_INS_PER_MINUTE:
        raise web.HTTPTooManyRequests(
            text=f"at most {SIGN_INS_PER_MINUTE} sign-in attempts a minute; try again shortly",
            headers={"Retry-After": "60"},
        )
    form = await request.post()
    key = form.get("apiKey", "")
    auth = request.config_dict[k.AUTH]
    who = auth.authenticate(f"Bearer {key.strip()}") if isinstance(key, str) else None
    if who is None:  # (the form again, with the form's session: a live one is not re-sealed)
        form_session = request.app[SESSIONS].read_form(request) or new_session()
        request[SESSION] = form_session
        context = {"error": "That key is not valid.", "next": back_to(form.get("next"))}
        response = render(request, "login.html", context, status=401)
        request.app[SESSIONS].write(request, response, form_session)
        return response
    response = web.HTTPSeeOther(back_to(form.get("next")))
    request.app[SESSIONS].write(request, response, new_session(who.tenant, who.key_id))
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """``POST /ui/logout``: the session ends, also for any copy of its cookie. (No GET: the
    cookie goes with links from other sites, so a link must not sign anyone out.)"""
    current = session(request)
    if SIGNED_IN in request:
        await dashboard(request).end_session(session_id(current), request.app[SESSIONS].lifetime_s)
    response = web.HTTPSeeOther("/ui/login")
    request.app[SESSIONS].clear(request, response)
    raise response


# --- pages --------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.StreamResponse:
    """``GET /ui/``: the tenant's watches per status and the last hour's attempts."""
    tenant = principal(request).tenant
    counts, minutes = await asyncio.gather(
        _store(request).watches.tenant_counts(tenant),
        dashboard(request).attempts_per_minute(tenant, now_ms(), 60),
    )
    return render(
        request,
        "overview.html",
        {"counts": counts, "statuses": WATCH_STATUSES, "chart": chart.layout(minutes)},
    )


async def watch_list(request: web.Request) -> web.StreamResponse:
    """``GET /ui/watches?status=&videoId=&cursor=``: newest first, a page at a time."""
    q = request.query
    status = q.get("status") or None
    video_id = (q.get("videoId") or "").strip() or None
    cursor = q.get("cursor") or None
    errors = []
    if status is not None and status not in WATCH_STATUSES:
        errors.append("Status must be one of " + ", ".join(WATCH_STATUSES) + ".")
    if video_id is not None and not VIDEO_ID.fullmatch(video_id):
        errors.append("A video id is 1-128 characters of A-Z, a-z, 0-9, _ and -.")
    watches: list[Watch] = []
    next_url = None
    if not errors:
        try:
            page = await _store(request).watches.page(
                principal(request).tenant,
                video_id=video_id,
                status=status,
                limit=PAGE_SIZE,
                cursor=cursor,
            )
        except CursorError:
            errors.append("That page link is not valid any more: start from the first page.")
        else:
            watches = page.watches
            if page.next_cursor:
                params = {"status": status or "", "videoId": video_id or ""}
                params = {name: v for name, v in params.items() if v}
                next_url = "/ui/watches?" + urlencode({**params, "cursor": page.next_cursor})
    return render(
        request,
        "watches.html",
        {
            "rows": [watch_json(w) for w in watches],
            "statuses": WATCH_STATUSES,
            "status": status or "",
            "video_id": video_id or "",
            "errors": errors,
            "next_url": next_url,
            "paged": cursor is not None,
        },
        status=400 if errors else 200,
    )


async def _own_watch(request: web.Request) -> Watch:
    watch_id = request.match_info["watch_id"]
    if not WATCH_ID.fullmatch(watch_id):
        raise web.HTTPNotFound(text="no such watch")
    watch = await _store(request).watches.get(watch_id)
    if watch is None or watch.tenant != principal(request).tenant:
        raise web.HTTPNotFound(text="no such watch")
    return watch


async def _event_body(store: Store, w: Watch) -> str | None:
    """The body of the watch's event as it is sent (pretty-printed), or None."""
    if not w.event_type:
        return None
    clips = None
    if w.event_type == "clips.ready":
        stored = await store.deliveries.clips_doc(w.video_id, w.final_ms or 0)
        if stored is None:
            return None
        clips = ClipSet.from_doc(stored[0])
    raw = events.body(w, clips)
    return orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode()


async def _watch_page(request: web.Request, watch: Watch, **extra: Any) -> web.StreamResponse:
    store = _store(request)
    attempts, body = await asyncio.gather(store.watches.attempts(watch), _event_body(store, watch))
    done = done_action(session(request), watch.id, request.query.get("done", ""))
    notice = NOTICES.get(done or "")
    return render(
        request,
        "watch.html",
        {
            "w": watch_json(watch),
            "event_id": watch.event_id,
            "metadata": orjson.dumps(watch.metadata, option=orjson.OPT_INDENT_2).decode(),
            "attempts": attempts,
            "body": body,
            "notice": notice,
            "secrets": len(watch.secrets),
            "secret_tag": secret_tag(watch.secrets),
            "new_secret": None,
            "redeliverable": watch.status in REDELIVERABLE_STATUSES,
            **extra,
        },
    )


def _done(request: web.Request, watch: Watch, action: str) -> web.HTTPSeeOther:
    """The redirect after *action* to the watch's page, which says it was done."""
    tag = done_tag(session(request), watch.id, action)
    return web.HTTPSeeOther(f"/ui/watches/{watch.id}?{urlencode({'done': tag})}")


async def watch_page(request: web.Request) -> web.StreamResponse:
    """``GET /ui/watches/{id}``: fields, attempts, the event's body, the actions."""
    return await _watch_page(request, await _own_watch(request))


async def redeliver(request: web.Request) -> web.StreamResponse:
    """``POST /ui/watches/{id}/redeliver``."""
    watch = await _own_watch(request)
    result = await _store(request).watches.redeliver(watch)
    if result != "ok":
        raise web.HTTPConflict(text=f"The watch is {result}: nothing to redeliver.")
    raise _done(request, watch, "redelivered")


async def cancel(request: web.Request) -> web.StreamResponse:
    """``POST /ui/watches/{id}/cancel``."""
    watch = await _own_watch(request)
    await _store(request).watches.cancel(watch)
    raise _done(request, watch, "cancelled")


async def ping(request: web.Request) -> web.StreamResponse:
    """``POST /ui/watches/{id}/ping``: one signed ``watch.ping`` to the receiver, as ``POST
    /v1/watches/{id}/ping`` sends it -- the API's pings, within its bounds: the signed-in
    key's request rate (RELAY_RATE_LIMIT) and the pings in flight."""
    watch = await _own_watch(request)
    if watch.status == "cancelled":
        raise web.HTTPConflict(text="The watch is cancelled: nothing is sent to it.")
    config = request.config_dict
    if not config[k.RATE_LIMITER].allow(principal(request).key_id):
        raise web.HTTPTooManyRequests(
            text="Not sent: this API key is at its requests per second. Try again in a moment.",
            headers={"Retry-After": "1"},
        )
    try:
        await config[k.BACKPRESSURE].check("pings")
    except ProblemError as exc:
        raise web.HTTPServiceUnavailable(
            text=f"Not sent: {exc.detail}.", headers={"Retry-After": exc.headers["Retry-After"]}
        ) from None
    full = start_ping(config, watch)
    if full is not None:
        raise web.HTTPTooManyRequests(
            text=f"Not sent: {full}. Try again when they have answered.",
            headers={"Retry-After": "1"},
        )
    raise _done(request, watch, "pinged")


async def rotate(request: web.Request) -> web.StreamResponse:
    """``POST /ui/watches/{id}/rotate-secret``: the new secret, shown on this answer only."""
    watch = await _own_watch(request)
    if watch.status == "cancelled":
        raise web.HTTPConflict(text="The watch is cancelled: nothing is signed for it again.")
    tag = (await request.post()).get("secretTag")  # which secrets the page showed
    if not isinstance(tag, str) or not tag.isascii() or not tag.isdigit():
        # (without it every reload rotated again, retiring the secrets still in their grace)
        raise web.HTTPBadRequest(
            text="This form is not the watch page's (it has no secret tag): nothing was "
            "rotated. Open the watch's page to rotate its secret."
        )
    secret = generate_secret()
    box, settings = request.config_dict[k.SECRET_BOX], request.config_dict[k.SETTINGS]
    try:
        entries = await _store(request).watches.rotate_secret(
            watch.id, box.seal(secret), settings.secret_grace, seen=tag
        )
    except StaleRotation:
        raise web.HTTPConflict(
            text="The secret was rotated since this page was shown (a reload sends the form "
            "again): nothing was rotated now. Open the watch's page to rotate it again."
        ) from None
    if entries is None:
        raise web.HTTPNotFound(text="no such watch")
    fresh = await _store(request).watches.get(watch.id)
    return await _watch_page(request, fresh or watch, new_secret=secret)


# --- recover --------------------------------------------------------------------------------

TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:\d{2})?", re.ASCII
)


def recover_call(store: Store) -> Callable[[str, int, int], Awaitable[tuple[int, bool]]] | None:
    """The store's call that puts a tenant's failed watches back, the one behind ``POST
    /v1/watches/recover`` (``store.watches.recover(tenant, since_ms, until_ms)``), if this
    relay has it."""
    call = getattr(store.watches, "recover", None)
    return call if callable(call) else None


def parse_time(raw: str) -> int | None:
    """An RFC 3339 timestamp (without a zone: UTC; seconds optional) as ms, or None."""
    text = raw.strip()
    if not TIME.fullmatch(text):
        return None
    try:
        when = datetime.fromisoformat(text.upper().replace(" ", "T").replace("Z", "+00:00"))
    except ValueError:  # e.g. month 13
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return events.ms_of(when)


async def recover_form(request: web.Request) -> web.StreamResponse:
    """``GET /ui/recover``: since/until."""
    if recover_call(_store(request)) is None:
        raise web.HTTPNotFound(text="this relay has no recover")
    context: dict[str, Any] = {"errors": [], "count": None, "more": False, "since": "", "until": ""}
    return render(request, "recover.html", context)


async def recover(request: web.Request) -> web.StreamResponse:
    """``POST /ui/recover``: the tenant's watches that became failed in [since, until)
    deliver their last event again (``POST /v1/watches/recover``); the count."""
    call = recover_call(_store(request))
    if call is None:
        raise web.HTTPNotFound(text="this relay has no recover")
    form = await request.post()
    raw_since, raw_until = str(form.get("since", "")), str(form.get("until", ""))
    since = parse_time(raw_since)
    until = parse_time(raw_until) if raw_until.strip() else now_ms() + 1  # now included
    errors = []
    if since is None:
        errors.append("Since must be a time like 2026-12-04T10:00:00Z.")
    if until is None:
        errors.append("Until must be a time like 2026-12-04T12:00:00Z, or empty for now.")
    elif since is not None and until <= since:
        errors.append(
            "Until must be later than since." if raw_until.strip() else "Since is in the future."
        )
    count, more = None, False
    if not errors and since is not None and until is not None:
        until = min(until, now_ms() + 1)  # (a later until is now: the range cannot grow)
        count, more = await call(principal(request).tenant, since, until)
    context = {
        "errors": errors,
        "count": count,
        "more": more,
        "since": raw_since,
        # (more left: the form keeps the range's end this one used, so "again" goes on)
        "until": events.iso_ms(until) if more and until is not None else raw_until,
    }
    return render(request, "recover.html", context, status=422 if errors else 200)
