"""Serving the API: ``web.run_app`` with a drain period on SIGTERM."""

from __future__ import annotations

from aiohttp import web

from relay import logs
from relay.app import create_app
from relay.settings import Settings

log = logs.get("relay.server")


def run_api(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM; in-flight requests get RELAY_SHUTDOWN_GRACE to finish."""
    app = create_app(settings)
    log.info("api starting", host=settings.host, port=settings.port)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        shutdown_timeout=settings.shutdown_grace,
        handle_signals=True,
    )
    return 0
