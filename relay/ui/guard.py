"""The dashboard's middleware and what it keeps: every ``/ui/`` answer gets its security
headers; a page needs a session (else: to the sign-in page); every POST needs the session's
CSRF token; errors are HTML pages, not problem documents."""

from __future__ import annotations

import asyncio
import hashlib
import html
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDict, MultiDictProxy
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay import logs
from relay.api import appkeys as k
from relay.api.auth import Principal
from relay.constants import REQUEST_DEADLINE
from relay.store.dashboard import Dashboard
from relay.ui.session import (
    COOKIE,
    Session,
    Sessions,
    csrf_ok,
    is_https,
    new_session,
    session_id,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logs.get("relay.ui")

SESSIONS = web.AppKey("ui_sessions", Sessions)
SESSION = web.RequestKey("ui_session", Session)  # the visitor's session (maybe anonymous)
SIGNED_IN = web.RequestKey("ui_principal", Principal)  # set on pages that need a session

LOGIN = "/ui/login"
LOGOUT = "/ui/logout"
PUBLIC = (LOGIN, LOGOUT)
STATIC = "/ui/static/"
HOME = "/ui/"


def back_to(raw: object) -> str:
    """Where a sign-in goes on to: the dashboard page it was asked for on the way in (a path
    of /ui/ only: never another site, nor a path a browser would read as one), else
    :data:`HOME`."""
    if (
        isinstance(raw, str)
        and raw.startswith(HOME)
        and len(raw) <= 2000
        and "//" not in raw
        and not any(ch in raw for ch in "\\\r\n\t")
        and not raw.startswith(PUBLIC)
    ):
        return raw
    return HOME


PAGE_DEADLINE = REQUEST_DEADLINE - 0.5  # seconds
STALE_FORM = "the form's CSRF token is missing or stale: reload"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
PAGES = {
    "overview.html": "overview",
    "watches.html": "watches",
    "watch.html": "watches",
    "recover.html": "recover",
}
TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Too slow",
    413: "Too large",
    429: "Too many attempts",
    500: "Error",
    503: "Unavailable",
}


def protect(headers: Any, *, static: bool = False) -> None:
    """Put the security headers (and, on pages, no-store) on an answer."""
    headers.update(SECURITY_HEADERS)
    headers["Cache-Control"] = "public, max-age=300" if static else "no-store"


def principal(request: web.Request) -> Principal:
    """The signed-in tenant and key id (pages behind the guard only)."""
    return request[SIGNED_IN]


def dashboard(request: web.Request) -> Dashboard:
    """The dashboard's counters, on the API's Redis connection."""
    return Dashboard(request.config_dict[k.STORE].redis)


def session(request: web.Request) -> Session:
    """The visitor's session."""
    return request[SESSION]


def render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """A page, with what every page shows (the tenant, the CSRF token for its forms)."""
    who = request.get(SIGNED_IN)
    ctx = {
        "tenant": who.tenant if who else None,
        "csrf": request[SESSION].csrf,
        "page": PAGES.get(template, ""),
        "recover": callable(getattr(request.config_dict[k.STORE].watches, "recover", None)),
        **context,
    }
    return aiohttp_jinja2.render_template(template, request, ctx, status=status)


def error_page(request: web.Request, status: int, detail: str) -> web.Response:
    """An error as a page."""
    title = TITLES.get(status, "Error")
    return render(request, "error.html", {"title": title, "detail": detail}, status=status)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sessions, CSRF, HTML errors and the security headers, for every ``/ui/`` request."""
    started = time.perf_counter()
    static = request.path.startswith(STATIC)
    sessions = request.app[SESSIONS]
    request[SESSION] = new_session()  # (until the cookie's is known: an error page needs one)
    drop = reading = False
    response: web.StreamResponse
    if not static and _cross_site_without_cookie(request):
        return hop(request)
    try:
        # a page's own deadline, under the API's: a hung Redis is this 503 page, not the
        # API's problem document that would end the request first
        async with asyncio.timeout(PAGE_DEADLINE):
            if static:  # (no page, no Redis)
                current = sessions.read(request) or new_session()
            else:
                current, drop = await _identify(request, sessions)
            request[SESSION] = current
            if SIGNED_IN not in request and not static and request.path not in PUBLIC:
                # (a page asked for comes back after the sign-in: a link from an alert)
                wanted = back_to(request.path_qs) if request.method == "GET" else HOME
                raise web.HTTPSeeOther(
                    LOGIN if wanted == HOME else f"{LOGIN}?{urlencode({'next': wanted})}"
                )
            if request.method == "POST":
                reading = True  # (a body that does not come in time is the visitor's, not Redis')
                form = await _form(request)
                reading = False
                given = _csrf_given(request, form)
                # (a sign-in form shown where the browser sent no session cookie carries the
                # form session's token, also when a signed-in session comes with the POST)
                signing_in = request.path == LOGIN and csrf_ok(sessions.read_form(request), given)
                if not (signing_in or csrf_ok(current, given)):
                    raise web.HTTPForbidden(text=STALE_FORM)
            response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            protect(exc.headers)
            if drop and COOKIE not in exc.cookies:
                sessions.clear(request, exc)
            raise
        detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else ""
        response = error_page(request, exc.status, detail or exc.reason)
        for name in ("Retry-After", "Allow"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
    except (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError) as exc:
        if reading:  # the form did not arrive within the page's deadline
            response = error_page(request, 408, "the form did not arrive in time; send it again")
            response.force_close()
        else:
            log.error("redis unavailable", error=type(exc).__name__)
            response = error_page(request, 503, "the relay's storage is unreachable; try again")
            drop = drop or request.path == LOGOUT  # signing out ends it here at least
    except (OutOfMemoryError, ReadOnlyError) as exc:
        log.error("redis refused a write", error=type(exc).__name__)
        response = error_page(request, 503, "the relay's storage cannot take writes right now")
        drop = drop or request.path == LOGOUT
    except RedisError as exc:  # any other error reply (BUSY, MISCONF, MASTERDOWN, ...)
        log.error("redis answered with an error", error=type(exc).__name__)
        response = error_page(request, 503, "the relay's storage answered with an error; try again")
        drop = drop or request.path == LOGOUT
    except Exception:  # a bug: still an HTML page with the headers, and logged
        log.exception("dashboard page failed", path=request.path)
        response = error_page(request, 500, "something went wrong on this page")
    protect(response.headers, static=static)
    # the page's own time in this process (the benchmark reads it; browsers show it)
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
    if drop and COOKIE not in response.cookies:  # (unless the page made a new session)
        sessions.clear(request, response)
    return response


HOP_COOKIE = "cr_ui_hop"  # set by a hop for HOP_S, naming its URL: a browser that calls the
HOP_S = 10  # hop's own reload cross-site too is not sent round again (page, or sign-in)


def _hop_mark(request: web.Request) -> str:
    return hashlib.sha256(request.path_qs.encode()).hexdigest()[:16]


def _cross_site_without_cookie(request: web.Request) -> bool:
    """A page navigation that another site started (a link in chat, mail, a Grafana
    panel): the browser says so (``Sec-Fetch-Site``, ``Sec-Fetch-Mode``) and, the cookie
    being Strict, sent none -- whether or not the visitor is signed in here. Not twice in
    a row for one URL (:data:`HOP_COOKIE`, Lax: it comes with a cross-site navigation);
    another link within HOP_S hops again."""
    headers = request.headers
    return (
        request.method in ("GET", "HEAD")
        and headers.get("Sec-Fetch-Site") == "cross-site"
        and headers.get("Sec-Fetch-Mode") == "navigate"
        and COOKIE not in request.cookies
        and request.cookies.get(HOP_COOKIE) != _hop_mark(request)
    )


def hop(request: web.Request) -> web.Response:
    """The same page again, loaded by the dashboard itself: a navigation the page starts is
    same-site, so it carries the Strict cookie (signed in: the page; not: the sign-in page).
    No session is made here, so none replaces the visitor's."""
    target = html.escape(request.path_qs, quote=True)
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="0;url={target}"><title>clip-relay</title>'
        f'</head><body><p><a href="{target}">Continue to the dashboard</a></p></body></html>'
    )
    response = web.Response(text=body, content_type="text/html")
    response.set_cookie(
        HOP_COOKIE,
        _hop_mark(request),
        max_age=HOP_S,
        path="/ui",
        httponly=True,
        samesite="Lax",
        secure=is_https(request),
    )
    protect(response.headers)
    return response


async def _identify(request: web.Request, sessions: Sessions) -> tuple[Session, bool]:
    """The visitor's session (a new anonymous one when the cookie holds none), and whether
    the cookie is to be dropped: its key left RELAY_API_KEYS, or it was signed out. Sets
    :data:`SIGNED_IN` for a live signed-in session."""
    current = sessions.read(request)
    if current is None or not current.tenant:
        return current or new_session(), False
    who = request.config_dict[k.AUTH].by_key_id(current.key_id)
    if who is None or who.tenant != current.tenant:  # its key left RELAY_API_KEYS
        return new_session(), True
    if await dashboard(request).session_ended(session_id(current)):  # signed out
        return new_session(), True
    request[SIGNED_IN] = who
    return current, False


FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
Form = MultiDictProxy[str | bytes | bytearray | FileField]


async def _form(request: web.Request) -> Form:
    """A POST's form, read once (the views read it again from aiohttp's cache); an empty one
    for a body that is not a form. A form that cannot be read is a 400."""
    if request.content_type not in FORMS:
        return MultiDictProxy(MultiDict())
    try:
        return await request.post()
    # a bad boundary, charset, ...; a body its Content-Encoding does not decode (bad gzip)
    except (ValueError, LookupError, UnicodeDecodeError, web.RequestPayloadError):
        raise web.HTTPBadRequest(text="the form could not be read") from None


def _csrf_given(request: web.Request, form: Form) -> str:
    """The CSRF token the POST came with: its header, or the form's field."""
    given = request.headers.get("X-CSRF-Token", "")
    if not given:
        value = form.get("csrfToken", "")
        given = value if isinstance(value, str) else ""
    return given
