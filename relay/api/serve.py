"""Serving the API, with a drain on SIGTERM.

On SIGTERM (or SIGINT) the API first reports not-ready on ``/readyz`` while it keeps
serving for a short drain delay, so a load balancer or Kubernetes stops sending new
requests; then it stops listening, lets in-flight requests finish (up to
RELAY_SHUTDOWN_GRACE) and exits 0.
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from relay import logs
from relay.api import appkeys as k
from relay.api.app import create_app
from relay.settings import Settings

log = logs.get("relay.api.serve")
MAX_DRAIN_DELAY = 5.0


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until *stop* is set (by default: SIGTERM/SIGINT), then drain and return."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_grace)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info("api listening", host=settings.host, port=settings.port)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    app[k.LIFECYCLE].draining = True
    delay = min(MAX_DRAIN_DELAY, settings.shutdown_grace / 4)
    log.info("api draining", delay_s=delay, grace_s=settings.shutdown_grace)
    await asyncio.sleep(delay)
    await runner.cleanup()
    log.info("api stopped")


def run_api(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM; exit status 0 after a clean drain."""
    asyncio.run(serve(settings))
    return 0
