"""``POST /v1/watches/recover``: a tenant's watches that became failed in a time range
deliver their last event again, after an outage (:func:`relay.store.recovery.recover`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web

from relay import logs
from relay.api import appkeys as k
from relay.api import views
from relay.api.problems import invalid
from relay.domain.clock import now_ms
from relay.domain.events import iso_ms, ms_of

log = logs.get("relay.api.recovery")
RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
TIME_RULE = "must be an RFC 3339 timestamp with a time zone, e.g. 2026-11-28T10:00:00Z"
RECOVER_FIELDS = ("since", "until")


def _time(body: dict[str, Any], name: str, errors: list[dict[str, str]]) -> int | None:
    """The field *name* as ms since the epoch (None: absent or bad, noted in *errors*)."""
    if name not in body:
        return None
    raw = body[name]
    if not isinstance(raw, str) or not RFC3339.fullmatch(raw):
        errors.append({"field": name, "message": TIME_RULE})
        return None
    try:
        when = datetime.fromisoformat(raw.upper().replace(" ", "T").replace("Z", "+00:00"))
    except ValueError:  # e.g. month 13
        errors.append({"field": name, "message": TIME_RULE})
        return None
    return ms_of(when)


async def recover(request: web.Request) -> web.Response:
    """``POST /v1/watches/recover`` ``{"since", "until"?}``: the caller's watches that
    became failed in [since, until) deliver their last event again; 202 ``{"count"}``, with
    ``"more": true`` and the ``until`` it used when the request's time ran out before the
    range's end."""
    body = await views.read_json(request)
    if not isinstance(body, dict):
        raise invalid([{"field": "body", "message": "must be a JSON object"}])
    errors = [
        {"field": name, "message": "unknown field"}
        for name in sorted(set(body) - set(RECOVER_FIELDS))
    ]
    if "since" not in body:
        errors.append({"field": "since", "message": "is required; " + TIME_RULE})
    since = _time(body, "since", errors)
    now = now_ms() + 1  # now included
    until = _time(body, "until", errors) if "until" in body else now
    if since is not None and until is not None and min(until, now) <= since:
        if "until" in body and until <= since:
            errors.append({"field": "until", "message": "must be later than since"})
        else:  # until is now (or later): since, in the future, is what is wrong
            errors.append({"field": "since", "message": "must not be in the future"})
    if errors or since is None or until is None:
        raise invalid(errors)
    # a later until is now: failures yet to come are not in the range, so the request sent
    # again with the until it answers (more) cannot grow it
    until = min(until, now)
    tenant = views.principal(request).tenant
    count, more = await request.app[k.STORE].watches.recover(tenant, since, until)
    log.info("recover", since=since, until=until, count=count, more=more)
    # more: the request's time ran out; the same request with this until goes on (those put
    # back have left the index; a range that ends where this one did cannot grow)
    answer: dict[str, Any] = {"count": count}
    if more:
        answer |= {"more": True, "until": iso_ms(until)}
    return views.json_response(answer, status=202)
