"""The dashboard (/ui/) in a real Chromium driven by Playwright, against the real API, worker,
Redis, upstream simulator and receiver (SPEC.md, "Dashboard"; issue 17).

Chromium is Debian's ``chromium`` package (``make test`` installs it when missing;
Playwright's own browser download is not used): ``CHROMIUM`` names another binary.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from ipaddress import ip_network
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from redis.asyncio import Redis
from yarl import URL

from relay import constants as c
from relay.devtools.embedded_redis import free_port
from relay.devtools.receiver import Receiver
from relay.store.watches import Watches
from relay.ui.guard import PAGE_DEADLINE
from tests.conftest import TENANT_A_KEY, TENANT_B_KEY, ApiFactory, WorkerFactory, auth, eventually
from tests.test_worker import register, sim_video, wait_watch

Client = TestClient[web.Request, web.Application]
Rec = tuple[Receiver, str]
STATUSES = ("watching", "delivering", "delivered", "failed", "disabled", "cancelled")
MARKUP = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2;alert(1)>"
WORKER = {"retry_schedule": (0.1, 0.1, 0.1)}


def _chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("no chromium on PATH: `make test` installs Debian's chromium package")
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A real headless Chromium (no sandbox: the tests run as root in CI)."""
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield b
        await b.close()


@pytest.fixture
async def ui(make_api: ApiFactory) -> Client:
    """The API with its dashboard; registrations are not rate-limited here."""
    return await make_api(rate_limit=10_000, ui_secret="test-ui-secret")


def base(api: Client) -> str:
    return str(api.make_url("")).rstrip("/")


async def new_page(browser: Browser) -> tuple[BrowserContext, Page, list[str]]:
    """A fresh context and page; the list collects any dialog's message (none may open)."""
    context = await browser.new_context()
    page = await context.new_page()
    dialogs: list[str] = []

    async def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    return context, page, dialogs


async def sign_in(page: Page, api: Client, key: str = TENANT_A_KEY) -> int:
    """Sign in through the form; the status of the page it lands on."""
    await page.goto(base(api) + "/ui/login")
    await page.get_by_label("API key").fill(key)
    async with page.expect_navigation() as nav:
        await page.get_by_role("button", name="Sign in").click()
    response = await nav.value
    assert response is not None
    return response.status


def assert_protected(headers: dict[str, str]) -> None:
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


async def listed(api: Client, status: str, key: str = TENANT_A_KEY) -> list[str]:
    """Every id ``GET /v1/watches?status=`` lists (all pages)."""
    ids: list[str] = []
    cursor = ""
    while True:
        url = f"/v1/watches?status={status}&limit=100" + (f"&cursor={cursor}" if cursor else "")
        page = await (await api.get(url, headers=auth(key))).json()
        ids += [w["id"] for w in page["data"]]
        cursor = page["nextCursor"]
        if not cursor:
            return ids


async def test_sign_in_headers_cookie_and_sign_out(ui: Client, browser: Browser) -> None:
    context, page, _ = await new_page(browser)
    response = await page.goto(base(ui) + "/ui/")
    assert response is not None and page.url.endswith("/ui/login")
    assert_protected(await response.all_headers())

    assert await sign_in(page, ui, "not-a-key-of-this-relay") == 401
    assert page.url.endswith("/ui/login")
    assert "not valid" in await page.get_by_test_id("login-error").inner_text()

    assert await sign_in(page, ui) == 200
    assert page.url.endswith("/ui/")
    assert await page.get_by_test_id("tenant").inner_text() == "tenant-a"
    empty = page.get_by_test_id("attempts-chart")  # an empty hour is an empty chart
    assert await empty.locator("rect.ok, rect.fail").count() == 0
    assert await page.get_by_test_id("count-watching").inner_text() == "0"
    (cookie,) = [c for c in await context.cookies() if c["name"] == "cr_ui"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    assert cookie["path"] == "/ui"
    assert TENANT_A_KEY not in cookie["value"] and "tenant-a" not in cookie["value"]
    assert TENANT_A_KEY not in await page.content()
    # a script cannot read the session
    assert "cr_ui" not in await page.evaluate("document.cookie")
    for path in ("/ui/", "/ui/watches", "/ui/static/app.css", "/ui/static/app.js", "/ui/nope"):
        got = await page.request.get(base(ui) + path)
        assert_protected(got.headers)
    assert (await page.request.get(base(ui) + "/ui/nope")).status == 404

    await page.get_by_test_id("logout").click()
    await page.wait_for_url("**/ui/login")
    await page.goto(base(ui) + "/ui/watches")
    assert URL(page.url).path == "/ui/login"
    assert URL(page.url).query["next"] == "/ui/watches"  # (back there once signed in)
    await context.close()


async def test_counts_chart_list_filters_and_pages(
    ui: Client, make_worker: WorkerFactory, sim: Client, receiver: Rec, browser: Browser
) -> None:
    await make_worker(**WORKER)
    done = await sim_video(sim)
    never = await sim_video(sim, timeline=[{"status": "analyzing", "progress": 10, "after": 0}])
    receiver[0].script("/down", [500] * 4)
    delivered = [await register(ui, receiver, done) for _ in range(2)]
    failed = await register(ui, receiver, done, "/down")
    cancelled = await register(ui, receiver, never)
    await ui.delete(f"/v1/watches/{cancelled['id']}", headers=auth())
    waiting = [await register(ui, receiver, never) for _ in range(52)]
    other = await ui.post(
        "/v1/watches",
        json={"videoId": done, "callbackUrl": receiver[1] + "/b"},
        headers=auth(TENANT_B_KEY),
    )
    other_id = (await other.json())["id"]
    for w in [*delivered, failed]:
        await wait_watch(ui, w["id"])

    context, page, _ = await new_page(browser)
    assert await sign_in(page, ui) == 200
    for status in STATUSES:
        shown = await page.get_by_test_id(f"count-{status}").inner_text()
        assert int(shown) == len(await listed(ui, status)), status
    assert await page.get_by_test_id("count-watching").inner_text() == "52"
    chart = page.get_by_test_id("attempts-chart")
    assert await chart.evaluate("e => e.tagName.toLowerCase()") == "svg"
    assert await chart.locator("[data-testid=bar-ok]").count() >= 1
    assert await chart.locator("[data-testid=bar-fail]").count() >= 1
    # tenant A's attempts only: 2 deliveries and the failing watch's 4 (B's is not counted)
    desc = await chart.locator("desc").text_content()
    assert desc == "2 attempts succeeded and 4 failed in the last hour.", desc

    # the list: newest first, 50 a page, the tenant's own only
    await page.get_by_role("link", name="Watches", exact=True).click()
    await page.wait_for_url("**/ui/watches")
    rows = page.get_by_test_id("watch-row")
    assert await rows.count() == 50
    first = [await r.get_attribute("data-watch-id") for r in await rows.all()]
    assert first[0] == waiting[-1]["id"]
    await page.get_by_test_id("next-page").click()
    await page.wait_for_load_state()
    rest = [await r.get_attribute("data-watch-id") for r in await rows.all()]
    everyone = {w["id"] for w in [*delivered, failed, cancelled, *waiting]}
    assert set(first) | set(rest) == everyone and not set(first) & set(rest)
    assert other_id not in everyone
    assert await page.get_by_test_id("next-page").count() == 0

    # filters: a final status, a live one, a video
    await page.goto(base(ui) + "/ui/watches")
    await page.get_by_label("Status").select_option("failed")
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url("**status=failed**")
    assert [await r.get_attribute("data-watch-id") for r in await rows.all()] == [failed["id"]]
    await page.get_by_label("Status").select_option("delivered")
    await page.get_by_label("Video id").fill(done)
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url("**videoId=**")
    got = {await r.get_attribute("data-watch-id") for r in await rows.all()}
    assert got == {w["id"] for w in delivered}
    await page.goto(base(ui) + "/ui/watches?status=cancelled")
    assert [await r.get_attribute("data-watch-id") for r in await rows.all()] == [cancelled["id"]]
    resp = await page.goto(base(ui) + "/ui/watches?videoId=bad%20id")
    assert resp is not None and resp.status == 400

    # another tenant's watch is a 404 page
    resp = await page.goto(base(ui) + f"/ui/watches/{other_id}")
    assert resp is not None and resp.status == 404
    await context.close()


async def test_failed_watch_attempts_redeliver_rotate_cancel(
    ui: Client, make_worker: WorkerFactory, sim: Client, receiver: Rec, browser: Browser
) -> None:
    await make_worker(**WORKER)
    rec = receiver[0]
    rec.script("/flaky", [500] * 4)
    vid = await sim_video(sim)
    w = await register(ui, receiver, vid, "/flaky")
    assert (await wait_watch(ui, w["id"]))["status"] == "failed"
    got = await ui.get(f"/v1/watches/{w['id']}/deliveries", headers=auth())
    api_attempts = (await got.json())["data"]

    context, page, _ = await new_page(browser)
    await sign_in(page, ui)
    await page.goto(base(ui) + f"/ui/watches/{w['id']}")
    assert await page.get_by_test_id("watch-status").inner_text() == "failed"
    rows = page.get_by_test_id("attempt-row")
    assert await rows.count() == len(api_attempts) == 4
    assert "500" in await rows.first.inner_text()
    body = await page.get_by_test_id("event-body").inner_text()
    assert '"type": "clips.ready"' in body and f'"watchId": "{w["id"]}"' in body
    assert body == (await page.get_by_test_id("event-body").text_content())
    assert w["secret"] not in await page.content()
    first_id = rec.events[0].webhook_id

    # the receiver heals (its script is used up); redeliver sends the same event again
    before = len(rec.events)
    await page.get_by_test_id("redeliver").click()
    await page.wait_for_url("**done=redelivered*")
    await eventually(lambda: len(rec.events) > before, what="the redelivery")
    again = rec.events[-1]
    assert again.webhook_id == first_id and 200 <= again.status < 300
    assert (await wait_watch(ui, w["id"]))["status"] == "delivered"
    await page.reload()
    assert await page.get_by_test_id("watch-status").inner_text() == "delivered"
    assert await rows.count() == 5

    # ping: one signed watch.ping, listed among the attempts; the status stays
    await page.get_by_test_id("ping").click()
    await page.wait_for_url("**done=pinged*")
    assert "watch.ping is on its way" in await page.get_by_role("status").inner_text()
    await eventually(lambda: len(rec.events) > before + 1, what="the ping")
    pinged = rec.events[-1]
    assert pinged.event["type"] == "watch.ping" and pinged.webhook_id != first_id
    assert pinged.event["data"]["watchId"] == w["id"] and 200 <= pinged.status < 300

    async def listed() -> bool:
        await page.reload()
        return await rows.count() == 6

    await eventually(listed, every=0.2, what="the ping's attempt on the page")
    assert "watch.ping" in await rows.last.inner_text()
    # a notice only after the action, by this session: a link with ?done= made elsewhere
    # says nothing (a tester's find: "cancelled" shown beside a watch that was not)
    watch_url = base(ui) + f"/ui/watches/{w['id']}"
    for forged in ("cancelled", "cancelled.0123456789abcdef0123", "pinged.", ".x"):
        await page.goto(watch_url + "?done=" + forged)
        assert await page.get_by_role("status").count() == 0, forged
    # on a phone, each attempt's result still shows (the list's narrow-screen rule hid it)
    await page.set_viewport_size({"width": 390, "height": 800})
    await page.goto(watch_url)
    result = rows.first.locator("td").nth(3)
    assert await result.is_visible() and "500" in await result.inner_text()
    await page.set_viewport_size({"width": 1280, "height": 800})
    assert (await wait_watch(ui, w["id"]))["status"] == "delivered"

    # rotate: the new secret is shown once, and signs from now on
    await page.get_by_test_id("rotate").click()
    await page.wait_for_load_state()
    secret = await page.get_by_test_id("new-secret").inner_text()
    assert secret.startswith("whsec_") and secret != w["secret"]
    # a reload sends the form again: refused, nothing rotated (a few reloads would retire
    # the secret the receiver still verifies with)
    reloaded = await page.reload()
    assert reloaded is not None and reloaded.status == 409
    assert "nothing was rotated" in await page.content()
    # from the watch's page again, a second rotation goes through (it follows the first)
    await page.goto(base(ui) + f"/ui/watches/{w['id']}")
    await page.get_by_test_id("rotate").click()
    await page.wait_for_load_state()
    second = await page.get_by_test_id("new-secret").inner_text()
    assert second.startswith("whsec_") and second not in (secret, w["secret"])
    rec.add_secret(second)
    await page.goto(base(ui) + f"/ui/watches/{w['id']}")
    assert secret not in await page.content()
    rec.add_secret(secret)

    # a POST without its CSRF token is refused
    no_token = await page.request.post(base(ui) + f"/ui/watches/{w['id']}/cancel", form={})
    assert no_token.status == 403
    assert_protected(no_token.headers)
    bad_token = await page.request.post(
        base(ui) + f"/ui/watches/{w['id']}/cancel", form={"csrfToken": "guess"}
    )
    assert bad_token.status == 403
    assert (await wait_watch(ui, w["id"]))["status"] == "delivered"
    # the token as a header does (a script's way)
    token = await page.locator("input[name=csrfToken]").first.get_attribute("value")
    by_header = await page.request.post(
        base(ui) + f"/ui/watches/{w['id']}/redeliver",
        headers={"X-CSRF-Token": token or ""},
        max_redirects=0,
    )
    assert by_header.status == 303
    assert (await wait_watch(ui, w["id"]))["status"] == "delivered"

    # cancel cannot be undone: the button opens a confirmation first (an operator's run
    # found one click cancelling), and only its own button posts
    await page.get_by_test_id("cancel").click()
    assert (await wait_watch(ui, w["id"]))["status"] == "delivered"
    await page.get_by_test_id("cancel-confirm").click()
    await page.wait_for_url("**done=cancelled*")
    assert await page.get_by_test_id("watch-status").inner_text() == "cancelled"
    assert (await wait_watch(ui, w["id"]))["status"] == "cancelled"
    # a cancelled watch signs nothing again: no rotate button, and a rotate is refused
    assert await page.get_by_test_id("rotate").count() == 0
    assert await page.get_by_test_id("ping").count() == 0
    for action in ("rotate-secret", "ping"):
        refused = await page.request.post(
            base(ui) + f"/ui/watches/{w['id']}/{action}", headers={"X-CSRF-Token": token or ""}
        )
        assert refused.status == 409, action
    await context.close()


async def test_markup_from_clients_and_receivers_is_text(
    ui: Client, make_worker: WorkerFactory, sim: Client, receiver: Rec, browser: Browser
) -> None:
    await make_worker(**WORKER)
    vid = await sim_video(sim)
    url = receiver[1] + '/x?q=%3Cscript%3Ewindow.__pwned=3%3C/script%3E&a="><b>bold</b>'
    resp = await ui.post(
        "/v1/watches",
        json={"videoId": vid, "callbackUrl": url, "metadata": {"note": MARKUP, MARKUP: 1}},
        headers=auth(),
    )
    assert resp.status == 201, await resp.text()
    w = await resp.json()
    receiver[0].add_secret(w["secret"])
    await wait_watch(ui, w["id"])

    context, page, dialogs = await new_page(browser)
    await sign_in(page, ui)
    for path in ("/ui/watches", f"/ui/watches/{w['id']}"):
        await page.goto(base(ui) + path)
        await asyncio.sleep(0.2)
        assert await page.evaluate("window.__pwned") is None
        assert await page.locator("b").count() == 0
        assert await page.locator("img[src=x]").count() == 0
    assert dialogs == []
    assert MARKUP in await page.get_by_test_id("metadata").inner_text()
    assert await page.get_by_test_id("callback-url").inner_text() == url
    assert MARKUP in await page.get_by_test_id("event-body").inner_text()
    await context.close()


@pytest.mark.skipif(
    not hasattr(Watches, "recover"), reason="POST /v1/watches/recover is not in this build yet"
)
async def test_recover_puts_failed_watches_back(
    ui: Client,
    make_worker: WorkerFactory,
    sim: Client,
    receiver: Rec,
    browser: Browser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The form puts back the tenant's failed watches, the same events again; a range
    larger than one request's time (here: one watch a request) says more are left and
    keeps the range's end in the form, so "Recover" again goes on."""
    from relay.store import recovery

    await make_worker(**WORKER)
    rec = receiver[0]
    rec.script("/down", [500] * 8)
    vid = await sim_video(sim)
    failed = [await register(ui, receiver, vid, "/down") for _ in range(2)]
    for w in failed:
        assert (await wait_watch(ui, w["id"]))["status"] == "failed"
    first_ids = {e.webhook_id for e in rec.events}

    context, page, _ = await new_page(browser)
    await sign_in(page, ui)
    await page.get_by_role("link", name="Recover").click()
    await page.wait_for_url("**/ui/recover")
    await page.get_by_label("Since").fill("not a time")
    async with page.expect_navigation() as nav:
        await page.get_by_test_id("recover").click()
    response = await nav.value
    assert response is not None and response.status == 422
    assert await page.get_by_role("alert").count() == 1
    await page.get_by_label("Since").fill("2000-01-01T00:00:00Z")
    monkeypatch.setattr(recovery, "RECOVER_BATCH", 1)
    monkeypatch.setattr(recovery, "RECOVER_BUDGET_S", 0.0)
    counts, ends = [], []
    for _ in range(3):
        async with page.expect_navigation():
            await page.get_by_test_id("recover").click()
        counts.append(await page.get_by_test_id("recover-count").inner_text())
        ends.append(await page.get_by_label("Until").input_value())
        more = await page.get_by_test_id("recover-more").count()
        assert more == (len(counts) < 3), (counts, more)
    assert counts == ["1", "1", "0"] and ends[0] and ends[0] == ends[1], (counts, ends)
    for w in failed:
        assert (await wait_watch(ui, w["id"]))["status"] == "delivered"
    again = {e.webhook_id for e in rec.events if 200 <= e.status < 300}
    assert again == first_ids  # the same events, the same webhook-ids
    await context.close()


async def _csrf(client: Client) -> str:
    html = await (await client.get("/ui/login")).text()
    found = re.search(r'name="csrfToken" value="([^"]+)"', html)
    assert found
    return found.group(1)


async def test_sign_in_is_rate_limited_per_address(ui: Client) -> None:
    token = await _csrf(ui)
    if time.time() % 60 > 55:  # the count is per minute: keep the 11 attempts in one
        await asyncio.sleep(60.5 - time.time() % 60)
    codes = []
    for _ in range(11):
        resp = await ui.post(
            "/ui/login", data={"apiKey": "wrong", "csrfToken": token}, allow_redirects=False
        )
        codes.append(resp.status)
    assert codes == [401] * 10 + [429]
    assert resp.headers["Retry-After"] == "60"
    resp = await ui.post("/ui/login", data={"apiKey": TENANT_A_KEY}, allow_redirects=False)
    assert resp.status == 403  # no CSRF token


async def test_sign_in_limit_behind_a_trusted_proxy_counts_each_client(
    make_api: ApiFactory,
) -> None:
    """Behind a proxy of RELAY_TRUSTED_PROXIES (here: the test's own address), the limit
    counts the client its X-Forwarded-For names (the rightmost entry that is not a trusted
    proxy), so one visitor guessing keys does not lock out another; what a client writes
    left of that entry changes nothing; without the setting, the header is not believed."""
    proxied = await make_api(ui_secret="s", trusted_proxies=(ip_network("127.0.0.1/32"),))
    token = await _csrf(proxied)
    if time.time() % 60 > 50:  # the count is per minute: keep the attempts in one
        await asyncio.sleep(60.5 - time.time() % 60)

    async def sign_in(client: Client, forwarded: str) -> int:
        resp = await client.post(
            "/ui/login",
            data={"apiKey": "wrong", "csrfToken": token},
            headers={"X-Forwarded-For": forwarded},
            allow_redirects=False,
        )
        return resp.status

    # one client, each time claiming another address left of the one the proxy wrote
    codes = [await sign_in(proxied, f"127.0.9.{n}, 127.0.0.2") for n in range(11)]
    assert codes == [401] * 10 + [429]
    assert await sign_in(proxied, "127.0.0.3") == 401  # another client is not limited
    assert await sign_in(proxied, "127.0.0.3, 127.0.0.1") == 401  # (through two proxies)
    # an IPv6 client counts by its /64 (a host is given one: 2**64 addresses to rotate)
    codes = [await sign_in(proxied, f"2001:db8:0:7::{n:x}") for n in range(11)]
    assert codes == [401] * 10 + [429]
    assert await sign_in(proxied, "2001:db8:0:8::1") == 401  # the next /64 is another client
    # without RELAY_TRUSTED_PROXIES, the peer (the test) is the client whatever it claims
    direct = await make_api(ui_secret="s")
    token = await _csrf(direct)
    codes = [await sign_in(direct, f"127.0.8.{n}") for n in range(11)]
    assert codes == [401] * 10 + [429]


async def test_session_ends_when_its_key_leaves(make_api: ApiFactory, settings: Any) -> None:
    one = await make_api(ui_secret="shared-secret")
    token = await _csrf(one)
    resp = await one.post(
        "/ui/login", data={"apiKey": TENANT_A_KEY, "csrfToken": token}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == "/ui/"
    cookie = resp.cookies["cr_ui"].value
    # another replica with the same secret serves the session ...
    two = await make_api(ui_secret="shared-secret")
    got = await two.get("/ui/", cookies={"cr_ui": cookie}, allow_redirects=False)
    assert got.status == 200
    # ... until the key leaves RELAY_API_KEYS
    keys = tuple(k for k in settings.api_keys if k.tenant != "tenant-a")
    three = await make_api(ui_secret="shared-secret", api_keys=keys)
    got = await three.get("/ui/", cookies={"cr_ui": cookie}, allow_redirects=False)
    assert got.status == 303 and got.headers["Location"] == "/ui/login"
    assert got.cookies["cr_ui"].value == ""  # dropped
    # its sign-in form makes a new session at once (the form's token works)
    form = await three.get("/ui/login", cookies={"cr_ui": cookie})
    fresh = form.cookies["cr_ui_form"].value  # (the sign-in form's session: a cookie of its own)
    assert fresh and fresh != cookie
    # a replica with another secret does not know it
    four = await make_api(ui_secret="another-secret")
    got = await four.get("/ui/", cookies={"cr_ui": cookie}, allow_redirects=False)
    assert got.status == 303


async def test_signing_out_ends_every_copy_of_the_session(make_api: ApiFactory) -> None:
    """Sign-out ends the session on the server, not only in the browser: a copy of the
    cookie taken before (on any replica) is refused afterwards; a new sign-in works."""
    one = await make_api(ui_secret="shared-secret")
    token = await _csrf(one)
    resp = await one.post(
        "/ui/login", data={"apiKey": TENANT_A_KEY, "csrfToken": token}, allow_redirects=False
    )
    cookie = resp.cookies["cr_ui"].value
    page = await (await one.get("/ui/", cookies={"cr_ui": cookie})).text()
    found = re.search(r'name="csrfToken" value="([^"]+)"', page)
    assert found
    out = await one.post(
        "/ui/logout",
        data={"csrfToken": found.group(1)},
        cookies={"cr_ui": cookie},
        allow_redirects=False,
    )
    assert out.status == 303 and out.headers["Location"] == "/ui/login"
    two = await make_api(ui_secret="shared-secret")
    for client in (one, two):
        got = await client.get("/ui/", cookies={"cr_ui": cookie}, allow_redirects=False)
        assert got.status == 303 and got.headers["Location"] == "/ui/login"
        assert got.cookies["cr_ui"].value == ""  # dropped
        posted = await client.post(  # its form's token went with it
            "/ui/logout", data={"csrfToken": found.group(1)}, cookies={"cr_ui": cookie}
        )
        assert posted.status == 403
    token = await _csrf(one)
    again = await one.post(
        "/ui/login", data={"apiKey": TENANT_A_KEY, "csrfToken": token}, allow_redirects=False
    )
    fresh = again.cookies["cr_ui"].value
    got = await one.get("/ui/", cookies={"cr_ui": fresh}, allow_redirects=False)
    assert got.status == 200


async def test_signing_out_while_redis_is_away_still_drops_the_cookie(
    make_api: ApiFactory,
) -> None:
    """Sign-out cannot be recorded while Redis is unreachable (a 503 page), but the
    browser's cookie is dropped all the same."""
    one = await make_api(ui_secret="shared-secret")
    token = await _csrf(one)
    resp = await one.post(
        "/ui/login", data={"apiKey": TENANT_A_KEY, "csrfToken": token}, allow_redirects=False
    )
    cookie = resp.cookies["cr_ui"].value
    away = await make_api(ui_secret="shared-secret", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    got = await away.post(
        "/ui/logout", data={"csrfToken": "x"}, cookies={"cr_ui": cookie}, allow_redirects=False
    )
    assert got.status == 503
    assert got.cookies["cr_ui"].value == ""


async def test_a_hung_redis_is_the_dashboards_503_page(make_api: ApiFactory) -> None:
    """Redis accepts connections and never answers (a SIGSTOPped server): a signed-in page
    is the dashboard's HTML 503 with its security headers, before the API's own deadline
    would answer with a problem document."""
    one = await make_api(ui_secret="shared-secret")
    token = await _csrf(one)
    resp = await one.post(
        "/ui/login", data={"apiKey": TENANT_A_KEY, "csrfToken": token}, allow_redirects=False
    )
    cookie = resp.cookies["cr_ui"].value
    hung = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    try:
        away = await make_api(ui_secret="shared-secret", redis_url=f"redis://127.0.0.1:{port}/0")
        got = await away.get("/ui/watches", cookies={"cr_ui": cookie}, allow_redirects=False)
        assert got.status == 503
        assert got.content_type == "text/html"
        assert "storage is unreachable" in await got.text()
        assert_protected({name.lower(): value for name, value in got.headers.items()})
    finally:
        hung.close()


def test_chart_layout() -> None:
    from relay.store.dashboard import Minute
    from relay.ui.chart import layout, nice_max

    assert [nice_max(v) for v in (0, 4, 5, 7, 11, 99, 101)] == [5, 5, 5, 10, 20, 100, 200]
    minutes = [Minute(29_000_000 + i, 0, 0) for i in range(60)]
    minutes[-1] = Minute(29_000_059, 6, 4)
    chart = layout(minutes)
    assert (chart.ok, chart.fail, len(chart.bars)) == (6, 4, 60)
    last = chart.bars[-1]
    assert last.ok_h > 0 and last.fail_h > 0 and last.fail_y + last.fail_h == last.ok_y
    assert last.ok_y + last.ok_h == chart.plot_bottom
    assert all(b.ok_h == b.fail_h == 0 for b in chart.bars[:-1])
    assert last.label.endswith("UTC: 6 ok, 4 failed")


async def test_cookie_is_secure_over_https(ui: Client) -> None:
    resp = await ui.get("/ui/login", headers={"X-Forwarded-Proto": "https"})
    cookie = resp.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    plain = (await ui.get("/ui/login")).headers["Set-Cookie"]
    assert "Secure" not in plain


async def test_ui_off(make_api: ApiFactory) -> None:
    off = await make_api(ui=False)
    for path in ("/ui/", "/ui/login", "/ui"):
        assert (await off.get(path, allow_redirects=False)).status == 404
    on = await make_api()
    assert (await on.get("/ui", allow_redirects=False)).status == 308


async def test_a_link_from_another_site_keeps_the_session(ui: Client, browser: Browser) -> None:
    """Rule: an operator following a link to the dashboard from another site (chat, mail,
    a Grafana panel) lands on the page, signed in, and stays signed in in every tab; a link
    or an image from another site cannot sign anyone out. Fails before: the Strict cookie
    did not go with the link, so the sign-in page made a new session over the signed-in one
    (signed out in every tab); and ``GET /ui/logout`` signed out. The cookie stays Strict
    (SPEC): the navigation another site starts is answered with a hop that loads the page
    again from the dashboard, which carries the cookie."""
    elsewhere = web.Application()
    target = base(ui).replace("127.0.0.1", "localhost")  # another site than the link's

    async def links(_: web.Request) -> web.Response:
        return web.Response(
            text=f'<a id="go" href="{target}/ui/watches">watches</a>'
            f'<img src="{target}/ui/logout"><a id="out" href="{target}/ui/logout">out</a>',
            content_type="text/html",
        )

    elsewhere.router.add_get("/", links)
    other = TestServer(elsewhere, host="127.0.0.1")
    await other.start_server()
    try:
        context, page, _ = await new_page(browser)
        await page.goto(target + "/ui/login")
        await page.get_by_label("API key").fill(TENANT_A_KEY)
        async with page.expect_navigation():
            await page.get_by_role("button", name="Sign in").click()
        assert page.url.endswith("/ui/")
        tab = await context.new_page()
        await tab.goto(str(other.make_url("/")))
        async with tab.expect_navigation():
            await tab.click("#go")
        # (the hop's reload lands on the page itself, signed in, not on the sign-in page)
        await tab.get_by_test_id("tenant").wait_for(timeout=10_000)
        assert tab.url == target + "/ui/watches", tab.url
        assert await tab.get_by_test_id("tenant").inner_text() == "tenant-a"
        await tab.goto(str(other.make_url("/")))
        async with tab.expect_navigation():
            await tab.click("#out")  # a GET: 405, nobody signed out
        await page.reload()
        assert page.url.endswith("/ui/"), page.url
        assert await page.get_by_test_id("tenant").inner_text() == "tenant-a"
        await context.close()
    finally:
        await other.close()


@pytest.mark.filterwarnings("ignore::aiohttp.multipart.BadContentDispositionHeader")
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"x"),  # no boundary
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name="),
        ("application/x-www-form-urlencoded; charset=bogus-x", b"a=b"),
    ],
)
async def test_a_form_that_cannot_be_read_is_a_400_page(
    ui: Client, content_type: str, body: bytes
) -> None:
    """Rule: a POST whose form cannot be parsed is the dashboard's 400 page with its
    headers, not a 500. Fails before: the parser's error escaped the guard."""
    got = await ui.post("/ui/login", data=body, headers={"Content-Type": content_type})
    assert got.status == 400, await got.text()
    assert got.content_type == "text/html"
    assert_protected({name.lower(): value for name, value in got.headers.items()})


async def test_a_form_that_does_not_arrive_is_a_408_not_a_storage_outage(
    ui: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule: a form whose body does not come within the page's deadline is a 408 page (the
    connection closed), and no Redis outage is logged. Fails before: it was the 503
    "storage is unreachable" page, with "redis unavailable" logged at error level."""
    host, port = ui.server.host, ui.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /ui/login HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nabcd"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PAGE_DEADLINE + 3)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"Connection: close" in head
    assert "redis unavailable" not in capsys.readouterr().out


async def test_any_redis_error_reply_is_the_dashboards_503_page(ui: Client, redis: Redis) -> None:
    """Rule: any error reply of Redis (here WRONGTYPE: the tenant's counters are not a
    hash) is the dashboard's HTML 503 with its security headers. Fails before: it went to
    the API's handler, a problem document without the dashboard's headers."""
    token = await _csrf(ui)
    resp = await ui.post(
        "/ui/login", data={"apiKey": TENANT_A_KEY, "csrfToken": token}, allow_redirects=False
    )
    cookie = resp.cookies["cr_ui"].value
    await redis.delete(c.TENANT_COUNTS_KEY.format("tenant-a"))
    await redis.set(c.TENANT_COUNTS_KEY.format("tenant-a"), "x")
    got = await ui.get("/ui/", cookies={"cr_ui": cookie}, allow_redirects=False)
    assert got.status == 503
    assert got.content_type == "text/html"
    assert_protected({name.lower(): value for name, value in got.headers.items()})


async def test_a_navigation_from_another_site_is_a_hop_that_makes_no_session(
    make_api: ApiFactory,
) -> None:
    """Rule: a page navigation another site started (``Sec-Fetch-Site: cross-site``,
    ``Sec-Fetch-Mode: navigate``), which a Strict cookie does not come with, is answered
    by a page that loads the same URL again from the dashboard -- with no session cookie
    set (a new session would replace the visitor's), only the hop's marker, and the
    security headers. Not twice in a row (the marker: a browser that calls the reload
    cross-site too gets the sign-in page, not a loop), and not for an image or a fetch."""
    one = await make_api()
    nav = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    got = await one.get("/ui/watches?status=failed", headers=nav, allow_redirects=False)
    assert got.status == 200 and set(got.cookies) == {"cr_ui_hop"}, got.cookies
    page = await got.text()
    assert 'http-equiv="refresh" content="0;url=/ui/watches?status=failed"' in page, page
    assert_protected({name.lower(): value for name, value in got.headers.items()})
    # the reload, seen cross-site again: the marker came with it (Lax)
    again = await one.get("/ui/watches?status=failed", headers=nav, allow_redirects=False)
    assert again.status == 303
    assert URL(again.headers["Location"]).query["next"] == "/ui/watches?status=failed"
    # another link within the marker's life hops again (the marker names its URL)
    other_link = await one.get("/ui/", headers=nav, allow_redirects=False)
    assert other_link.status == 200 and "refresh" in await other_link.text()
    fresh = await make_api()
    for mode in ("no-cors", "cors"):
        other = {**nav, "Sec-Fetch-Mode": mode}
        got = await fresh.get("/ui/watches", headers=other, allow_redirects=False)
        assert got.status == 303, mode
    same = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate"}
    got = await fresh.get("/ui/watches", headers=same, allow_redirects=False)
    assert got.status == 303 and URL(got.headers["Location"]).query["next"] == "/ui/watches"


async def test_signing_in_from_a_form_shown_without_the_session_cookie(
    make_api: ApiFactory,
) -> None:
    """A sign-in form shown where the browser sent no cookie (a link from another site in a
    browser that does not say so) carries the form session's token; signing in there works
    though the POST, same-site, brings the live session too (a 403 before); a wrong key
    there answers the form again without re-sealing the live session. A review of this
    change."""
    one = await make_api(ui_secret="shared-secret")
    token = await _csrf(one)
    resp = await one.post(
        "/ui/login", data={"apiKey": TENANT_A_KEY, "csrfToken": token}, allow_redirects=False
    )
    live = resp.cookies["cr_ui"].value
    two = await make_api(ui_secret="shared-secret")  # (a jar with no cookie: the link's)
    form = await two.get("/ui/login")
    form_cookie = form.cookies["cr_ui_form"].value
    found = re.search(r'name="csrfToken" value="([^"]+)"', await form.text())
    assert found and "cr_ui" not in form.cookies
    both = {"cr_ui": live, "cr_ui_form": form_cookie}
    three = await make_api(ui_secret="shared-secret")
    wrong = await three.post(
        "/ui/login",
        data={"apiKey": "not-a-key", "csrfToken": found.group(1)},
        cookies=both,
        allow_redirects=False,
    )
    assert wrong.status == 401 and "cr_ui" not in wrong.cookies
    four = await make_api(ui_secret="shared-secret")
    ok = await four.post(
        "/ui/login",
        data={"apiKey": TENANT_A_KEY, "csrfToken": found.group(1)},
        cookies=both,
        allow_redirects=False,
    )
    assert ok.status == 303 and ok.headers["Location"] == "/ui/" and ok.cookies["cr_ui"].value


def test_a_dual_stack_peer_is_read_as_its_ipv4_address() -> None:
    """A dual-stack listener shows an IPv4 peer as ::ffff:a.b.c.d: it must match an IPv4
    RELAY_TRUSTED_PROXIES entry (and count as the same client as its IPv4 form)."""
    from relay.api.remote import _address

    assert str(_address("::ffff:10.1.2.3")) == "10.1.2.3"
    assert str(_address("[::ffff:10.1.2.3]:443")) == "10.1.2.3"
    assert str(_address("10.1.2.3:8080")) == "10.1.2.3"
    assert str(_address("2001:db8::1")) == "2001:db8::1"
    assert _address("not an address") is None
    from relay.api.remote import limit_bucket

    assert (
        limit_bucket("2001:db8:0:7:1:2:3:4")
        == limit_bucket("2001:db8:0:7::9")
        == ("2001:db8:0:7::/64")
    )
    assert limit_bucket("10.1.2.3") == "10.1.2.3" and limit_bucket("unknown") == "unknown"
