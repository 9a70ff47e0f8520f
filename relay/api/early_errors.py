"""HTTP-level errors as problem documents.

aiohttp answers requests its parser rejects (a header line over 8 KB, too many headers, bad
characters) itself, in plain text that repeats the first bytes of the offending line -- which
may be an ``Authorization`` header. This module makes those answers RFC 9457 documents that
echo nothing, for every server that serves the app (``clip-relay api`` and the tests alike).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from relay import logs
from relay.api.problems import CONTENT_TYPE, PROBLEM_TYPE

log = logs.get("relay.http")


class ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, with error answers that are problems and echo nothing."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp could not hand to the app."""
        log.warning("request rejected before routing", status=status, error=type(exc).__name__)
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


class ProblemServer(web.Server):
    """A :class:`web.Server` whose connections use :class:`ProblemRequestHandler`."""

    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


def install(app: web.Application) -> None:
    """Make every server of *app* (AppRunner, TestServer) use :class:`ProblemServer`."""
    make = app._make_handler

    def make_handler(**kwargs: Any) -> web.Server:
        server = make(**kwargs)
        server.__class__ = ProblemServer  # same state; only the handler class differs
        return server

    app._make_handler = make_handler  # type: ignore[method-assign]
