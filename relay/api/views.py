"""Request handlers of the registration API. Thin: parse, call the store, shape the answer."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from relay import logs
from relay.api import appkeys as k
from relay.api import jsonbody
from relay.api.auth import Principal
from relay.api.models import WatchCreate
from relay.api.problems import PATTERN_WORDS, ProblemError, field_errors, invalid, not_found
from relay.constants import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_IDEMPOTENCY_KEY,
    PROBE_REDIS_S,
    STORED_PER_LIVE,
    VIDEO_ID_PATTERN,
    WATCH_STATUSES,
)
from relay.domain import userinfo
from relay.domain.clock import now_ms
from relay.domain.events import iso_ms, score_json
from relay.domain.ids import new_watch_id
from relay.domain.listing import CursorError, decode_cursor, listing_of
from relay.domain.signing import generate_secret
from relay.domain.watch import SecretEntry, Watch
from relay.http.ssrf import CallbackRefused
from relay.metrics import WATCHES, exposition
from relay.store.watches import Idempotency

log = logs.get("relay.api.views")
_NOT_READY = logs.Every(60.0)  # a failing readiness probe's line (the probe runs every few s)
WATCH_ID = re.compile(r"wat_[a-z2-7]{24}")
IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
VIDEO_ID = re.compile(VIDEO_ID_PATTERN)
LIST_PARAMS = ("videoId", "status", "limit", "cursor")
MAX_LIMIT = 100
# a registration's look-up of its callback's host gives up after this, well inside the
# request's deadline: a slow DNS server is the callback's trouble (422), not the storage's
CALLBACK_CHECK_S = 3.0


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialized by orjson."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def principal(request: web.Request) -> Principal:
    """The authenticated caller (set by the auth middleware)."""
    return request[k.PRINCIPAL]


def watch_json(w: Watch) -> dict[str, Any]:
    """A watch as the API shows it (schema: :class:`relay.api.models.WatchOut`)."""
    return {
        "id": w.id,
        "videoId": w.video_id,
        "callbackUrl": userinfo.shown(w.callback_url),
        "minScore": score_json(w.min_score),
        "maxScore": None if w.max_score is None else score_json(w.max_score),
        "favoritedOnly": w.favorited_only,
        "sortBy": w.sort_by,
        "sortOrder": w.sort_order,
        "metadata": w.metadata,
        "status": w.status,
        "videoStatus": w.video_status,
        "videoProgress": w.video_progress,
        "lastEventType": w.last_event_type,
        "createdAt": iso_ms(w.created_ms),
        "updatedAt": iso_ms(w.updated_ms),
        "deliveredAt": iso_ms(w.delivered_ms) if w.delivered_ms else None,
        "lastError": w.last_error,
    }


async def _read(request: web.Request) -> bytes:
    """The request's body as sent (at most client_max_size; 413 past it)."""
    request[k.READING_BODY] = True  # (a deadline that ends here is the client's, not Redis')
    try:
        raw = await request.read()
    except web.HTTPException:
        raise
    except Exception:  # a body that cannot be read as sent (bad gzip, broken chunking)
        raise ProblemError(
            400, "Unreadable body", "the body could not be read as sent", slug="unreadable-body"
        ) from None
    request[k.READING_BODY] = False
    return raw


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; 415/400 problems for anything else."""
    ctype = request.content_type
    if request.body_exists and ctype != "application/json" and not ctype.endswith("+json"):
        raise ProblemError(
            415, "Unsupported media type", "send the body as application/json", slug="media-type"
        )
    raw = await _read(request)
    if not raw.strip():
        raise ProblemError(400, "Malformed JSON", "the body is empty", slug="malformed-json")
    try:
        return jsonbody.loads(raw)
    except jsonbody.BadJSON as exc:
        raise ProblemError(
            400, "Malformed JSON", f"the body is not acceptable JSON: {exc}", slug="malformed-json"
        ) from None


async def refuse_body(request: web.Request) -> None:
    """For a route that takes no body: an empty one or ``{}`` passes (clients that always
    send JSON), any other is a 422 naming its fields -- a field the caller believes applied
    (``{"secret": ...}`` to rotate-secret) is never silently ignored."""
    raw = await _read(request)
    if not raw.strip():
        return
    try:
        doc = jsonbody.loads(raw)
    except jsonbody.BadJSON:
        doc = None
    if doc == {}:
        return
    takes_none = "this route takes no body"
    raise invalid(
        [{"field": str(name), "message": f"unknown field: {takes_none}"} for name in sorted(doc)]
        if isinstance(doc, dict)
        else [{"field": "body", "message": takes_none}]
    )


async def _own_watch(request: web.Request) -> Watch:
    watch_id = request.match_info["watch_id"]
    if not WATCH_ID.fullmatch(watch_id):
        raise not_found()  # never let a path segment name another Redis key
    watch = await request.app[k.STORE].watches.get(watch_id)
    if watch is None or watch.tenant != principal(request).tenant:
        raise not_found()
    return watch


def refuse_cancelled(
    watch: Watch, why: str = "nothing is sent to the receiver of a cancelled watch"
) -> None:
    """409 for an action on a cancelled watch, saying *why* it has no point there."""
    if watch.status == "cancelled":
        raise ProblemError(409, "Watch cancelled", why, slug="cancelled")


def _fingerprint(spec: WatchCreate) -> str:
    """The request as the watch it makes: bodies that make the same watch (members in any
    order, ``50`` or ``50.0``, a default spelled out or left out) share it."""
    fields = spec.model_dump(mode="json")
    for name in ("min_score", "max_score"):
        if fields[name] is not None:
            fields[name] = float(fields[name]) + 0.0  # (no -0.0)
    fields["metadata"] = fields["metadata"] or {}
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _raw_fingerprint(body: Any) -> str:
    """The fingerprint of releases before 2026-12-06 (the JSON body, its members sorted),
    recorded beside the watch's: a key recorded by such a release (kept 24 h) replays here
    with the same body, and one recorded here replays there during a rolling update."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def create_watch(request: web.Request) -> web.Response:
    """``POST /v1/watches``."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise invalid([{"field": "body", "message": "must be a JSON object"}])
    app = request.app
    errors: list[dict[str, str]] = []
    try:
        spec: WatchCreate | None = WatchCreate.model_validate(body)
    except ValidationError as exc:
        spec, errors = None, field_errors(exc)
    # the callback's own rules too, whatever else is wrong: every bad field in one answer
    url = body.get("callbackUrl") if spec is None else spec.callback_url
    if isinstance(url, str) and all(e["field"] != "callbackUrl" for e in errors):
        try:
            async with asyncio.timeout(CALLBACK_CHECK_S):
                await app[k.POLICY].check(url)
        except CallbackRefused as exc:
            errors.append({"field": "callbackUrl", "message": str(exc)})
        except TimeoutError:
            errors.append(
                {
                    "field": "callbackUrl",
                    "message": f"host name did not resolve within {CALLBACK_CHECK_S:g} s"
                    " (its DNS is slow or failing): try again later",
                }
            )
    if errors or spec is None:
        raise invalid(errors)

    who = principal(request)
    store = app[k.STORE]
    idempotency = _idempotency(request, spec, body)
    near_full: ProblemError | None = None
    try:
        await app[k.BACKPRESSURE].check()
    except ProblemError as exc:
        # a retry of a registration that was made (its answer lost) is answered as it was,
        # writing nothing (replay only); anything else waits for the memory to go down
        if idempotency is None:
            raise
        near_full = exc
    secret = spec.secret or generate_secret()
    now = now_ms()
    watch = Watch(
        id=new_watch_id(),
        tenant=who.tenant,
        video_id=spec.video_id,
        callback_url=spec.callback_url,
        min_score=float(spec.min_score) + 0.0,  # + 0.0: no -0.0 in stored state
        max_score=None if spec.max_score is None else float(spec.max_score) + 0.0,
        favorited_only=spec.favorited_only,
        sort_by=spec.sort_by,
        sort_order=spec.sort_order,
        metadata=spec.metadata or {},
        created_ms=now,
        updated_ms=now,
    )
    box = app[k.SECRET_BOX]
    if box.sealing:  # the URL's credential, if any, sealed apart (the URL keeps its shown form)
        watch.callback_url, watch.callback_auth = userinfo.seal_apart(watch.callback_url, box.seal)
    watch.secrets = [SecretEntry(box.seal(secret), 0)]
    settings = app[k.SETTINGS]
    done = await store.watches.create(
        watch,
        expire_after_s=settings.watch_timeout,
        max_live=settings.tenant_max_watches,
        max_stored=settings.tenant_max_watches * STORED_PER_LIVE,
        idempotency=idempotency,
        replay_only=near_full is not None,
    )
    if done.outcome == "refused" and near_full is not None:
        raise near_full
    if done.outcome == "full":
        raise ProblemError(
            429,
            "Too many live watches",
            f"this tenant holds {done.held} live watch{'' if done.held == 1 else 'es'}"
            " (watching or delivering), its "
            f"maximum of {settings.tenant_max_watches}; cancel some or wait for them to finish",
            slug="tenant-full",
            headers={"Retry-After": "60"},
        )
    if done.outcome == "stored":
        raise ProblemError(
            429,
            "Too many watches stored",
            f"this tenant holds {done.held} watches in all, final ones too (each is kept for"
            f" {settings.retention:g} s once final), its maximum of"
            f" {settings.tenant_max_watches * STORED_PER_LIVE}; registrations resume as they"
            " age out",
            slug="tenant-stored-full",
            headers={"Retry-After": "3600"},
        )
    if done.outcome == "exists":
        if idempotency is None or not (
            (done.prior_fp and done.prior_fp == idempotency.fingerprint)
            or done.prior_raw_fp == idempotency.raw_fingerprint
        ):
            raise _reused("this Idempotency-Key was used with a different body")
        existing = await store.watches.get(done.prior_id)
        if existing is None or existing.tenant != who.tenant:  # deleted in between
            raise _reused("the watch this Idempotency-Key made is gone; use a new key")
        return _created(request, existing, status=200)
    return _created(request, watch, status=201)


def _reused(why: str) -> ProblemError:
    """409 for an Idempotency-Key that cannot give back its first answer, naming the header
    as a 422 names a field."""
    return ProblemError(
        409,
        "Idempotency key reused",
        why,
        slug="idempotency-conflict",
        errors=[{"field": "Idempotency-Key", "message": why}],
    )


def _idempotency(
    request: web.Request, spec: WatchCreate, body: dict[str, Any]
) -> Idempotency | None:
    """The request's Idempotency-Key, hashed, with the body's fingerprint (None: no key);
    a malformed key is a 422 naming the header."""
    given = request.headers.getall("Idempotency-Key", [])
    if not given:
        return None
    if len(given) > 1:  # (which one would a retry send? as two Authorization headers)
        raise invalid([{"field": "Idempotency-Key", "message": "give one, not several"}])
    idem_key = given[0]
    try:
        if not IDEMPOTENCY_KEY.fullmatch(idem_key):
            raise ValueError
        idem_hash = hashlib.sha256(idem_key.encode()).hexdigest()
    except ValueError:  # UnicodeEncodeError too: bytes that were not UTF-8
        message = f"must be 1-{MAX_IDEMPOTENCY_KEY} UTF-8 characters, no control characters"
        raise invalid([{"field": "Idempotency-Key", "message": message}]) from None
    return Idempotency(idem_hash, _fingerprint(spec), _raw_fingerprint(body))


def _created(request: web.Request, watch: Watch, *, status: int) -> web.Response:
    data = watch_json(watch)
    try:
        data["secret"] = request.app[k.SECRET_BOX].open(watch.secrets[0].sealed)
    except ValueError:  # (a replay: sealed by a process with a key this one lacks)
        raise ProblemError(
            503,
            "Secret not readable here",
            "this API process cannot open the watch's secret with its RELAY_SECRETS_KEY (a"
            " key rollout in progress); retry in a moment",
            slug="secret-not-readable",
            headers={"Retry-After": "5"},
        ) from None
    location = f"/v1/watches/{watch.id}"  # the route named "watch"
    return json_response(data, status=status, headers={"Location": location})


async def get_watch(request: web.Request) -> web.Response:
    """``GET /v1/watches/{id}``."""
    return json_response(watch_json(await _own_watch(request)))


async def list_watches(request: web.Request) -> web.Response:
    """``GET /v1/watches?videoId=&status=&limit=&cursor=``."""
    q = request.query
    errors = []
    unknown = sorted(set(q) - set(LIST_PARAMS))
    errors += [{"field": name, "message": "unknown query parameter"} for name in unknown]
    errors += [
        {"field": name, "message": "given more than once"}
        for name in LIST_PARAMS
        if len(q.getall(name, [])) > 1
    ]
    limit = 20
    if "limit" in q:
        raw = q["limit"]
        if raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= MAX_LIMIT:
            limit = int(raw)
        else:
            errors.append({"field": "limit", "message": f"must be a whole number 1-{MAX_LIMIT}"})
    status = q.get("status")
    if status is not None and status not in WATCH_STATUSES:
        errors.append({"field": "status", "message": "must be one of " + ", ".join(WATCH_STATUSES)})
    video_id = q.get("videoId")
    if video_id is not None and not VIDEO_ID.fullmatch(video_id):
        errors.append({"field": "videoId", "message": PATTERN_WORDS["videoId"]})
    cursor = q.get("cursor")
    if cursor == "":
        errors.append({"field": "cursor", "message": "empty: leave it out for the first page"})
    elif cursor is not None and errors:  # (listed beside the other bad parameters; alone,
        # the page's read refuses it). Against its listing only when the filters are good:
        # a typo in one is not a good cursor of the listing meant "of another listing"
        filters_ok = not any(e["field"] in ("status", "videoId") for e in errors)
        mine = listing_of(principal(request).tenant, video_id, status) if filters_ok else ""
        try:
            decode_cursor(cursor, mine)
        except CursorError as exc:
            errors.append({"field": "cursor", "message": str(exc)})
    if errors:
        raise invalid(errors)
    try:
        page = await request.app[k.STORE].watches.page(
            principal(request).tenant,
            video_id=video_id,
            status=status,
            limit=limit,
            cursor=q.get("cursor"),
        )
    except CursorError as exc:
        raise invalid([{"field": "cursor", "message": str(exc)}]) from None
    return json_response(
        {"data": [watch_json(w) for w in page.watches], "nextCursor": page.next_cursor}
    )


async def cancel_watch(request: web.Request) -> web.Response:
    """``DELETE /v1/watches/{id}``: nothing is delivered afterwards."""
    watch = await _own_watch(request)
    await request.app[k.STORE].watches.cancel(watch)
    return web.Response(status=204)


async def list_deliveries(request: web.Request) -> web.Response:
    """``GET /v1/watches/{id}/deliveries``: the last 200 attempts and 200 pings, oldest first."""
    watch = await _own_watch(request)
    return json_response({"data": await request.app[k.STORE].watches.attempts(watch)})


async def redeliver(request: web.Request) -> web.Response:
    """``POST /v1/watches/{id}/redeliver``: the last event again, same webhook-id."""
    watch = await _own_watch(request)
    result = await request.app[k.STORE].watches.redeliver(watch)
    if result != "ok":
        raise ProblemError(
            409,
            "Nothing to redeliver",
            f"the watch is {result}: only delivered, failed or disabled watches are redelivered",
            slug="not-redeliverable",
        )
    fresh = await request.app[k.STORE].watches.get(watch.id)
    return json_response(watch_json(fresh or watch), status=202)


async def rotate_secret(request: web.Request) -> web.Response:
    """``POST /v1/watches/{id}/rotate-secret``: a new secret; the old one signs on for
    RELAY_SECRET_GRACE seconds."""
    watch = await _own_watch(request)
    refuse_cancelled(watch, "a cancelled watch signs nothing: its secret is not rotated")
    app = request.app
    secret = generate_secret()
    entries = await app[k.STORE].watches.rotate_secret(
        watch.id, app[k.SECRET_BOX].seal(secret), app[k.SETTINGS].secret_grace
    )
    if entries is None:
        raise not_found()
    previous = max((s.expires_ms for s in entries[1:]), default=0)
    return json_response(
        {"secret": secret, "previousSecretExpiresAt": iso_ms(previous) if previous else None}
    )


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: Redis answers and the process is not draining."""
    if request.app[k.LIFECYCLE].draining:
        return json_response({"status": "draining"}, status=503)
    try:
        async with asyncio.timeout(PROBE_REDIS_S):
            await request.app[k.REDIS].ping()
    except Exception as exc:  # any failure means not ready: why, once a minute at most
        if _NOT_READY.due():
            log.warning("not ready: redis", error=type(exc).__name__)
        return json_response({"status": "unavailable"}, status=503)
    _NOT_READY.reset()
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition (watch counts read from Redis, when it answers)."""
    try:
        async with asyncio.timeout(PROBE_REDIS_S):  # a hung Redis: serve the rest at once
            counts = await request.app[k.STORE].watches.counts()
        for status, n in counts.items():
            WATCHES.labels(status).set(n)
    except Exception as exc:  # the other series are still worth serving
        log.warning("watch counts unavailable", error=type(exc).__name__)
    return web.Response(body=exposition(api=True), content_type="text/plain", charset="utf-8")
