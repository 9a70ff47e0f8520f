"""The simulator's aiohttp application: the public endpoints, the routes, serving.

Public API (Bearer auth, like the upstream)::

    GET /api/videos/{id}/status
    GET /api/videos/{id}/clips?minScore=&maxScore=&status=&favorited=&sortBy=&sortOrder=
    GET /cdn/{clips|thumbs}/{name}?expires=&sig=        (no auth: the signature is the auth)

and the control API of :mod:`relay.devtools.upstream_sim.control` under ``/_sim``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.devtools.upstream_sim.cdn import serve_cdn
from relay.devtools.upstream_sim.control import (
    add_fault,
    bulk_create,
    clear_faults,
    control,
    create_video,
    get_video,
    reset,
    stats,
    switch_status,
)
from relay.devtools.upstream_sim.faults import apply_fault
from relay.devtools.upstream_sim.jsonio import BadRequest, error_response, json_response
from relay.devtools.upstream_sim.state import STATE, PathKind, SimState, Video
from relay.devtools.upstream_sim.views import clips_view, parse_clip_query, status_view

Handler = Callable[[web.Request, SimState, Video], web.Response]


def _api(path: PathKind, inner: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Wrap a public endpoint: faults, then auth, then the video lookup; count the request."""

    async def handler(request: web.Request) -> web.Response:
        state = request.app[STATE]
        video_id = request.match_info["id"]
        fault = state.take_fault(path, video_id) if state.faults else None
        if fault is not None:
            faulty = await apply_fault(request, state, fault, path, video_id)
            if faulty is not None:
                return faulty
        resp = _answer(request, state, video_id, inner)
        state.stats.record(state.clock(), path, video_id, resp.status)
        return resp

    return handler


def _answer(request: web.Request, state: SimState, video_id: str, inner: Handler) -> web.Response:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), state.api_key.encode()
    ):
        return error_response(401, "Unauthorized")
    video = state.videos.get(video_id)
    if video is None:
        return error_response(404, "Video not found")
    try:
        return inner(request, state, video)
    except BadRequest as e:
        return error_response(400, str(e))


def _status(request: web.Request, state: SimState, video: Video) -> web.Response:
    return json_response(status_view(video, state.clock()))


def _clips(request: web.Request, state: SimState, video: Video) -> web.Response:
    q = parse_clip_query(request.rel_url.query)
    origin = str(request.url.origin())
    return json_response(clips_view(state, video, q, state.clock(), origin))


def create_app(
    api_key: str, *, url_ttl: float = 3600.0, clock: Callable[[], float] = time.time
) -> web.Application:
    """Build the simulator application.

    ``api_key`` is the only Bearer token the public API accepts; signed CDN links live
    ``url_ttl`` seconds; ``clock`` gives the current Unix time (tests pass a controllable one).
    The state is reachable as ``app[STATE]``.
    """
    if not api_key:
        raise ValueError("api_key must not be empty")
    app = web.Application()
    app[STATE] = SimState(api_key=api_key, url_ttl=url_ttl, clock=clock)
    r = app.router
    r.add_get("/api/videos/{id}/status", _api("status", _status))
    r.add_get("/api/videos/{id}/clips", _api("clips", _clips))
    r.add_get("/cdn/{kind}/{name}", serve_cdn)
    r.add_post("/_sim/videos", control(create_video))
    r.add_post("/_sim/videos/bulk", control(bulk_create))
    r.add_get("/_sim/videos/{id}", control(get_video))
    r.add_post("/_sim/videos/{id}/status", control(switch_status))
    r.add_post("/_sim/faults", control(add_fault))
    r.add_delete("/_sim/faults", control(clear_faults))
    r.add_get("/_sim/stats", control(stats))
    r.add_post("/_sim/reset", control(reset))
    return app


def run(host: str, port: int, api_key: str, *, url_ttl: float = 3600.0) -> None:
    """Serve the simulator until interrupted; prints one line once it listens."""
    app = create_app(api_key, url_ttl=url_ttl)
    line = f"upstream-sim listening on http://{host}:{port}"
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        print=lambda _msg: print(line, flush=True),
    )
