"""Screenshots of the dashboard for the README: ``make screenshots`` (``python
bench/screenshots.py``).

Runs the real stack in this process on loopback -- an embedded Redis, the upstream
simulator, the receiver, the API with its dashboard and a worker -- registers a few dozen
watches of one tenant (receivers that answer 2xx, fail, or answer 410; a video that never
finishes; a few cancelled), lets them be delivered, and photographs the overview and a
failed watch's page in Debian's Chromium through Playwright (1280 px wide, and the overview
at 390 px, a phone). Writes ``docs/dashboard-*.png``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]

from aiohttp import ClientSession, web  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from relay.api.app import create_app  # noqa: E402
from relay.devtools import upstream_sim  # noqa: E402
from relay.devtools.embedded_redis import RedisServer  # noqa: E402
from relay.devtools.receiver import Receiver  # noqa: E402
from relay.devtools.receiver import create_app as create_receiver_app  # noqa: E402
from relay.settings import ApiKey, CallbackAllow, Settings  # noqa: E402
from workers.worker import RelayWorker, worker_options  # noqa: E402

UPSTREAM_KEY = "sr_live_" + "5c" * 24
API_KEY = "dashboard-screenshots-key-0123"
OUT = ROOT / "docs"


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def _seed(http: ClientSession, api: str, sim: str, rec: Receiver, hooks: str) -> str:
    """Register the watches; the id of one whose receiver keeps failing."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    clips = [{"score": s, "title": f"Clip {s}", "duration": 20 + s % 30} for s in (92, 81, 74)]
    videos = []
    for _ in range(4):
        async with http.post(f"{sim}/_sim/videos", json={"clips": clips}) as resp:
            videos.append((await resp.json())["id"])
    never = {"timeline": [{"status": "analyzing", "progress": 35, "after": 0}]}
    async with http.post(f"{sim}/_sim/videos", json=never) as resp:
        slow = (await resp.json())["id"]
    rec.script("/billing", [500] * 4)
    rec.script("/legacy", [410])
    plan: list[tuple[str, str, dict[str, Any]]] = []
    for n, video in enumerate(videos * 5):
        plan.append((video, "/clips", {"minScore": 70 + n % 3 * 5, "metadata": {"job": n}}))
    plan += [(videos[0], "/billing", {"metadata": {"team": "billing"}})]
    plan += [(videos[1], "/legacy", {})]
    plan += [(slow, "/clips", {"metadata": {"job": 100 + n}}) for n in range(4)]
    made = []
    for video, path, extra in plan:
        body = {"videoId": video, "callbackUrl": hooks + path, **extra}
        async with http.post(f"{api}/v1/watches", json=body, headers=auth) as resp:
            watch = await resp.json()
            rec.add_secret(watch["secret"])
            made.append(watch)
    for watch in made[-2:]:
        async with http.delete(f"{api}/v1/watches/{watch['id']}", headers=auth):
            pass
    failing = next(w["id"] for w in made if w["callbackUrl"].endswith("/billing"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with http.get(f"{api}/v1/watches/{failing}", headers=auth) as resp:
            if (await resp.json())["status"] == "failed":
                break
        await asyncio.sleep(0.1)
    return failing


async def main() -> int:
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not chromium:
        print("no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 1
    redis = RedisServer.start()
    runners: list[web.AppRunner] = []
    worker = None
    try:
        sim_runner, sim = await _serve(upstream_sim.create_app(UPSTREAM_KEY))
        rec = Receiver()
        rec_runner, hooks = await _serve(create_receiver_app(rec))
        runners += [sim_runner, rec_runner]
        settings = Settings(
            redis_url=redis.url,
            scalereach_base_url=sim,
            scalereach_api_key=UPSTREAM_KEY,
            api_keys=(ApiKey("acme", API_KEY),),
            callback_allow=CallbackAllow((ipaddress.ip_network("127.0.0.1/32"),), frozenset()),
            poll_interval=0.2,
            retry_schedule=(0.3, 0.3, 0.3),
            ui_secret="screenshots-only",  # noqa: S106 (a throwaway stack)
            log_format="json",
            metrics_port=0,
        )
        api_runner, api = await _serve(create_app(settings))
        runners.append(api_runner)
        worker = RelayWorker(**worker_options(settings), handle_signals=False)
        worker_task = asyncio.create_task(worker.main())
        async with ClientSession() as http:
            failing = await _seed(http, api, sim, rec, hooks)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(f"{api}/ui/login")
            await page.get_by_label("API key").fill(API_KEY)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url("**/ui/")
            await page.screenshot(path=OUT / "dashboard-overview.png", full_page=True)
            await page.goto(f"{api}/ui/watches/{failing}")
            await page.screenshot(path=OUT / "dashboard-watch.png", full_page=True)
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.goto(f"{api}/ui/")
            await page.screenshot(path=OUT / "dashboard-phone.png", full_page=True)
            await browser.close()
        worker_task.cancel()
        await asyncio.gather(worker_task, return_exceptions=True)
        print(f"wrote {', '.join(str(p.relative_to(ROOT)) for p in OUT.glob('dashboard-*.png'))}")
        return 0
    finally:
        if worker is not None:
            await worker.close()
        for runner in runners:
            await runner.cleanup()
        redis.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
