"""Fault injection: what an injected fault does to the public-API request it matches.

Faults are added with ``POST /_sim/faults`` and consumed in creation order by the requests they
match (:meth:`SimState.take_fault <.state.SimState.take_fault>`). The HTTP error kinds answer as
the upstream would (429 with its rate-limit headers and ``Retry-After``, 502 as a proxy's HTML
page); ``slow`` delays the normal answer, ``reset`` closes the connection without an answer and
``malformed`` sends broken JSON with a 200.
"""

from __future__ import annotations

import asyncio
import math
from typing import Final

from aiohttp import web

from relay.devtools.upstream_sim.jsonio import json_response
from relay.devtools.upstream_sim.state import Fault, PathKind, SimState

FAULT_KINDS: Final = frozenset(
    {"429", "500", "502", "503", "401", "402", "403", "404", "slow", "reset", "malformed"}
)
FAULT_PATHS: Final = frozenset({"status", "clips", "*"})
DEFAULT_SLOW_DELAY: Final = 1.0
DEFAULT_429_RETRY_AFTER: Final = 1.0
RATE_LIMIT_LIMIT: Final = 100  # what the upstream's code allows per 60 s
ERROR_TEXT: Final = {
    401: "Unauthorized",
    402: "Payment Required: out of processing minutes",
    403: "Forbidden",
    404: "Video not found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
BAD_GATEWAY_HTML: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n"
    b"<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)
MALFORMED_BODY: Final = b'{"video": {"id": "\x00", "status": <!-- upstream glitch'


def _fault_response(fault: Fault, now: float) -> web.Response:
    code = int(fault.kind)
    headers: dict[str, str] = {}
    retry_after = fault.retry_after
    if code == 429 and retry_after is None:
        retry_after = DEFAULT_429_RETRY_AFTER
    if code in (429, 503) and retry_after is not None:
        secs = math.ceil(retry_after)
        headers["Retry-After"] = str(secs)
        if code == 429:
            headers["X-RateLimit-Limit"] = str(RATE_LIMIT_LIMIT)
            headers["X-RateLimit-Remaining"] = "0"
            headers["X-RateLimit-Reset"] = str(math.ceil(now + retry_after))
            body = {
                "error": "Too Many Requests",
                "message": f"Rate limit exceeded. Try again in {secs} seconds.",
                "retryAfter": secs,
            }
            return json_response(body, 429, headers)
    if code == 502:
        return web.Response(
            body=BAD_GATEWAY_HTML, status=502, content_type="text/html", headers=headers
        )
    return json_response({"error": ERROR_TEXT[code]}, code, headers)


async def apply_fault(
    request: web.Request, state: SimState, fault: Fault, path: PathKind, video_id: str
) -> web.Response | None:
    """Apply *fault* to one public-API request: its answer (counted in the stats), or None when
    the request goes on to its normal answer (``slow``, once the delay has passed)."""
    if fault.kind == "slow":
        await asyncio.sleep(fault.delay)
        return None
    if fault.kind == "reset":
        state.stats.record(state.clock(), path, video_id, 0)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)  # never reaches the client
    if fault.kind == "malformed":
        state.stats.record(state.clock(), path, video_id, 200)
        return web.Response(body=MALFORMED_BODY, content_type="application/json")
    resp = _fault_response(fault, state.clock())
    state.stats.record(state.clock(), path, video_id, resp.status)
    return resp
