"""Serving the API: problem answers for what aiohttp rejects before routing, and a drain on stop.

aiohttp answers requests its parser rejects (a malformed request line, a header line over 8 KB,
too many headers, bad characters) itself, in plain text that repeats the first bytes of the
offending line -- which may be an ``Authorization`` header. :class:`AppRunner` serves the app
with connections that answer those as RFC 9457 documents that echo nothing; ``clip-relay api``
(:func:`serve`) and the tests serve the app through it.

On SIGTERM (or SIGINT) the API first reports not-ready on ``/readyz`` while it keeps
serving for a short drain delay, so a load balancer or Kubernetes stops sending new
requests; then it stops listening, lets in-flight requests finish (up to
RELAY_SHUTDOWN_GRACE) and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from relay import logs
from relay.api import appkeys as k
from relay.api.app import create_app
from relay.api.problems import CONTENT_TYPE, PROBLEM_TYPE
from relay.settings import Settings

log = logs.get("relay.api.serve")
http_log = logs.get("relay.http")
MAX_DRAIN_DELAY = 5.0


# --- problem answers for requests aiohttp rejects before routing -----------------------------


class ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, with error answers that are problems and echo nothing."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp could not hand to the app."""
        http_log.warning("request rejected before routing", status=status, error=type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        detail = (
            "the relay failed to handle this request"
            if status >= 500
            else "the request could not be parsed (header too large, too many headers, or bad"
            " characters)"
        )
        body = {
            "type": PROBLEM_TYPE + ("internal" if status >= 500 else "bad-request"),
            "title": phrase,
            "status": status,
            "detail": detail,
        }
        resp = web.Response(status=status, body=orjson.dumps(body), content_type=CONTENT_TYPE)
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's log of an error it did not expect -- but a body the client sent that
        cannot be read (its Content-Encoding does not decode it: bad gzip) is the client's
        doing: once the answer is out, aiohttp reads what is left of the body to keep the
        connection, fails, and would log that as an unhandled error with a traceback, which
        any client could fill the error log with. One warning line instead (the connection
        is closed, as aiohttp does)."""
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError):
            http_log.warning("request body unreadable", error=type(exc).__name__)
            return
        super().log_exception(*args, **kw)


class ProblemServer(web.Server):
    """aiohttp's low-level :class:`web.Server`; its connections use :class:`ProblemRequestHandler`.

    Built with web.Server's public signature; it keeps the connection options it is given to
    build each connection's handler with them, as web.Server does.
    """

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        request_factory: Any = None,
        handler_cancellation: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=handler_cancellation,
            loop=loop,
            **kwargs,
        )
        self.handler_loop = loop or asyncio.get_running_loop()
        self.handler_options = kwargs

    def __call__(self) -> web.RequestHandler:
        return ProblemRequestHandler(self, loop=self.handler_loop, **self.handler_options)


class AppRunner(web.AppRunner):
    """:class:`web.AppRunner` whose server is a :class:`ProblemServer`; use it as aiohttp's."""

    async def _make_server(self) -> web.Server:
        # The one place that reaches into aiohttp (3.14): BaseRunner's factory hook, and the
        # options (debug, access log, the runner's keywords) the app's server was made with.
        # tests/test_server.py fails if an upgrade bypasses this (plain-text answers again).
        server = await super()._make_server()
        return ProblemServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            **server._kwargs,
        )


# --- serving with a drain --------------------------------------------------------------------


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until *stop* is set (by default: SIGTERM/SIGINT), then drain and return."""
    app = create_app(settings)
    runner = AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_grace)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except BaseException:  # e.g. the port in use: close what setup opened (Redis, clients)
        await runner.cleanup()
        raise
    # (the port bound: RELAY_PORT=0 lets the system choose one, which logging 0 hid)
    bound = [a[1] for a in runner.addresses if isinstance(a, tuple) and len(a) >= 2]
    log.info("api listening", host=settings.host, port=bound[0] if bound else settings.port)
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
