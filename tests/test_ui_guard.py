"""The dashboard's guard over HTTP (no browser): which token a POST needs, who a session
is, how long it lives server-side, where an anonymous POST goes. Each test was asked for
by a mutation review (2026-12-06): a change to the code it guards went unnoticed."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from yarl import URL

from relay import constants as c
from relay.ui.session import COOKIE, FORM_COOKIE, Session, Sessions
from tests.conftest import TENANT_A_KEY, ApiFactory, auth, serving
from tests.test_api import create

Client = TestClient[web.Request, web.Application]
SECRET = "shared-secret"


async def _form(client: Client) -> tuple[str, str]:
    """A sign-in form's CSRF token and its cookie."""
    page = await client.get("/ui/login")
    found = re.search(r'name="csrfToken" value="([^"]+)"', await page.text())
    assert found
    return found.group(1), page.cookies[FORM_COOKIE].value


async def _signed_in(client: Client) -> tuple[str, str]:
    """Sign in with tenant A's key: the session cookie and its CSRF token."""
    token, _ = await _form(client)
    resp = await client.post(
        "/ui/login", data={"apiKey": TENANT_A_KEY, "csrfToken": token}, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()
    cookie = resp.cookies[COOKIE].value
    page = await client.get("/ui/", cookies={COOKIE: cookie})
    found = re.search(r'name="csrfToken" value="([^"]+)"', await page.text())
    assert found
    return cookie, found.group(1)


async def test_a_sign_in_forms_token_changes_nothing_but_a_sign_in(
    make_api: ApiFactory,
) -> None:
    """The sign-in form's token (its own cookie) lets a sign-in through, and nothing
    else: a cancel sent with it beside a live session is a 403 and the watch stays."""
    one = await make_api(ui_secret=SECRET)
    cookie, _ = await _signed_in(one)
    watch = await create(one)
    two = await make_api(ui_secret=SECRET)  # (a jar of its own: a form shown elsewhere)
    form_token, form_cookie = await _form(two)
    resp = await two.post(
        f"/ui/watches/{watch['id']}/cancel",
        data={"csrfToken": form_token},
        cookies={COOKIE: cookie, FORM_COOKIE: form_cookie},
        allow_redirects=False,
    )
    assert resp.status == 403
    got = await (await one.get(f"/v1/watches/{watch['id']}", headers=auth())).json()
    assert got["status"] == "watching"


async def test_a_session_whose_key_now_names_another_tenant_ends(
    make_api: ApiFactory, settings: Any
) -> None:
    """A key moved to another tenant in RELAY_API_KEYS: the session made with it (as its
    old tenant) ends, it does not carry on as the new tenant."""
    one = await make_api(ui_secret=SECRET)
    cookie, _ = await _signed_in(one)
    moved = tuple(
        dataclasses.replace(k, tenant="tenant-z") if k.key == TENANT_A_KEY else k
        for k in settings.api_keys
    )
    two = await make_api(ui_secret=SECRET, api_keys=moved)
    got = await two.get("/ui/", cookies={COOKIE: cookie}, allow_redirects=False)
    assert got.status == 303 and got.headers["Location"] == "/ui/login"
    assert got.cookies[COOKIE].value == ""


def test_a_sealed_session_expires_on_the_server_too() -> None:
    """A session sealed longer ago than its lifetime does not open, whatever the
    cookie's max-age (a copied cookie would live for ever)."""
    sessions = Sessions(SECRET, 60)
    fresh = Session("csrf-token", "tenant-a", "kid")
    payload = orjson.dumps({"c": fresh.csrf, "t": fresh.tenant, "k": fresh.key_id})
    old = sessions._fernet.encrypt_at_time(payload, int(time.time()) - 120).decode()
    new = sessions._fernet.encrypt_at_time(payload, int(time.time()) - 30).decode()
    assert sessions._open(old) is None
    assert sessions._open(new) == fresh


async def test_an_anonymous_post_goes_to_sign_in(make_api: ApiFactory) -> None:
    """A POST with only a sign-in form's session (and its valid token) is sent to sign in,
    never into the page's view."""
    one = await make_api(ui_secret=SECRET)
    token, form_cookie = await _form(one)
    for path in ("/ui/recover", "/ui/watches/wat_aaaaaaaaaaaaaaaaaaaaaaaa/cancel"):
        resp = await one.post(
            path,
            data={"csrfToken": token, "since": "2026-12-01T00:00:00Z"},
            cookies={FORM_COOKIE: form_cookie},
            allow_redirects=False,
        )
        assert resp.status == 303 and resp.headers["Location"] == "/ui/login", path


async def test_recover_until_must_be_later_than_since(make_api: ApiFactory) -> None:
    one = await make_api(ui_secret=SECRET)
    cookie, token = await _signed_in(one)
    t = "2026-12-04T10:00:00Z"
    resp = await one.post(
        "/ui/recover",
        data={"csrfToken": token, "since": t, "until": t},
        cookies={COOKIE: cookie},
        allow_redirects=False,
    )
    assert resp.status == 422 and "Until must be later than since" in await resp.text()


async def test_a_rotation_needs_the_watch_pages_secret_tag(
    make_api: ApiFactory, redis: Redis
) -> None:
    """The watch page's form carries which secrets it showed, so a reload that sends the
    form again rotates nothing: a POST without it (or with a malformed one) rotated again
    every time (a tester, 2026-12-06). It is a 400 and nothing is rotated."""
    one = await make_api(ui_secret=SECRET)
    cookie, token = await _signed_in(one)
    watch = await create(one)
    before = await redis.hget(c.WATCH_PREFIX + watch["id"], "secrets")
    for extra in ({}, {"secretTag": ""}, {"secretTag": "12abc"}):
        resp = await one.post(
            f"/ui/watches/{watch['id']}/rotate-secret",
            data={"csrfToken": token, **extra},
            cookies={COOKIE: cookie},
            allow_redirects=False,
        )
        assert resp.status == 400 and "nothing was rotated" in await resp.text(), extra
    assert await redis.hget(c.WATCH_PREFIX + watch["id"], "secrets") == before
    resp = await one.post(
        f"/ui/watches/{watch['id']}/rotate-secret",
        data={"csrfToken": token, "secretTag": "0"},
        cookies={COOKIE: cookie},
        allow_redirects=False,
    )
    assert resp.status == 200 and "whsec_" in await resp.text()
    assert await redis.hget(c.WATCH_PREFIX + watch["id"], "secrets") != before


async def test_a_sign_in_goes_on_to_the_page_asked_for(make_api: ApiFactory) -> None:
    """Rule: a page asked for while signed out (a link from an alert) is where the sign-in
    goes on to -- a /ui/ path only: never another site, nor a path a browser would read as
    one -- else the overview."""
    client = await make_api(ui_secret=SECRET)
    watch = await create(client)
    page = f"/ui/watches/{watch['id']}?from=alert"
    resp = await client.get(page, allow_redirects=False)
    assert resp.status == 303
    location = resp.headers["Location"]
    assert URL(location).path == "/ui/login" and URL(location).query["next"] == page
    form = await client.get(location)
    assert f'name="next" value="{page.replace("&", "&amp;")}"' in await form.text()
    token, _ = await _form(client)
    for given, expected in (
        (page, page),
        ("https://evil.example/ui/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/ui//evil.example", "/ui/"),
        ("/ui/\\evil", "/ui/"),
        ("/elsewhere", "/ui/"),
        ("", "/ui/"),
    ):
        resp = await client.post(
            "/ui/login",
            data={"apiKey": TENANT_A_KEY, "csrfToken": token, "next": given},
            allow_redirects=False,
        )
        assert (resp.status, resp.headers["Location"]) == (303, expected), given


async def test_a_watch_held_by_a_rendering_clip_says_so(make_api: ApiFactory, redis: Redis) -> None:
    """Rule: a watch with no event on a completed video waits for a clip its filters pass
    that is still rendering: its page says that, not that the video is not final (an
    operator's run read it as stuck)."""
    client = await make_api(ui_secret=SECRET)
    cookie, _ = await _signed_in(client)
    watch = await create(client)
    page = await client.get(f"/ui/watches/{watch['id']}", cookies={COOKIE: cookie})
    assert "the video is not final" in await page.text()
    key = c.VIDEO_KEY.format(watch["videoId"])
    await redis.hset(key, mapping={"status": "completed", "progress": "100"})  # type: ignore[misc]
    page = await client.get(f"/ui/watches/{watch['id']}", cookies={COOKIE: cookie})
    text = await page.text()
    assert 'data-testid="rendering"' in text and "still rendering" in text
    assert "the video is not final" not in text


async def test_the_dashboards_ping_keeps_the_apis_bounds(make_api: ApiFactory) -> None:
    """The dashboard's ping is the API's: the signed-in key's RELAY_RATE_LIMIT counts it
    (a review: one session could ping at any rate), and the pings in flight are bounded as
    for POST /v1/watches/{id}/ping -- a 429 page, nothing sent."""
    from relay.api.pings import MAX_TENANT_PINGS

    one = await make_api(ui_secret=SECRET, rate_limit=1000)
    cookie, token = await _signed_in(one)
    release = asyncio.Event()

    async def held(request: web.Request) -> web.Response:  # a receiver that takes its time
        await release.wait()
        return web.Response(status=204)

    async with serving(held) as base:
        watch = await create(one, callbackUrl=base + "/slow")

        async def ping() -> web.StreamResponse:
            return await one.post(
                f"/ui/watches/{watch['id']}/ping",
                data={"csrfToken": token},
                cookies={COOKIE: cookie},
                allow_redirects=False,
            )

        sent = [(await ping()).status for _ in range(MAX_TENANT_PINGS)]
        assert sent == [303] * MAX_TENANT_PINGS
        refused = await ping()
        assert refused.status == 429 and "pings of a tenant" in await refused.text()
        release.set()

    limited = await make_api(ui_secret=SECRET, rate_limit=1)
    cookie, token = await _signed_in(limited)
    watch = await create(limited)
    codes = []
    for _ in range(3):
        resp = await limited.post(
            f"/ui/watches/{watch['id']}/ping",
            data={"csrfToken": token},
            cookies={COOKIE: cookie},
            allow_redirects=False,
        )
        codes.append(resp.status)
        if resp.status == 429:
            assert "requests per second" in await resp.text()
            assert resp.headers["Retry-After"] == "1"
    assert 429 in codes, codes


async def test_the_dashboards_ping_waits_while_redis_is_nearly_full(
    make_api: ApiFactory, redis: Redis
) -> None:
    """Above the high-water mark the dashboard's ping is refused as the API's is (its
    attempt must be recorded): a 503 page saying why, nothing sent."""
    got: list[web.Request] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(request)
        return web.Response(status=204)

    async with serving(hook) as base:
        plain = await make_api(ui_secret=SECRET)
        watch = await create(plain, callbackUrl=base + "/p")
        await redis.config_set("maxmemory", 64 * 1024 * 1024)
        try:
            used = int((await redis.info("memory"))["used_memory"])
            full = await make_api(ui_secret=SECRET, redis_high_water=used / 2 / (64 * 1024 * 1024))
            cookie, token = await _signed_in(full)
            resp = await full.post(
                f"/ui/watches/{watch['id']}/ping",
                data={"csrfToken": token},
                cookies={COOKIE: cookie},
                allow_redirects=False,
            )
            assert resp.status == 503 and resp.headers["Retry-After"] == "5"
            assert "Not sent: " in await resp.text() and "pings resume" in await resp.text()
            await asyncio.sleep(0.3)
            assert got == []
        finally:
            await redis.config_set("maxmemory", 0)
