"""The control API: create videos, switch their status, inject faults, read the counters.

No auth, JSON bodies::

    POST   /_sim/videos              create one video            -> 201 {"id"}
    POST   /_sim/videos/bulk         create many from a template -> 201 {"ids"}
    GET    /_sim/videos/{id}         internal state of a video
    POST   /_sim/videos/{id}/status  switch the status now       -> 200 {..., "at"}
                                     (and its errorMessage)
    POST   /_sim/faults              inject a fault              -> 201 {"id"}
    DELETE /_sim/faults              clear all faults            -> 204
    GET    /_sim/stats[?since=]      request counters and log
    POST   /_sim/reset               forget videos, faults and stats -> 204
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.devtools.upstream_sim.faults import DEFAULT_SLOW_DELAY, FAULT_KINDS, FAULT_PATHS
from relay.devtools.upstream_sim.jsonio import (
    BadRequest,
    error_response,
    get_number,
    get_str,
    json_response,
    num,
    read_body,
)
from relay.devtools.upstream_sim.state import STATE, Fault, SimState, Step, Video
from relay.devtools.upstream_sim.videos import (
    DEFAULT_ERROR_MESSAGE,
    MAX_BULK,
    VIDEO_ID_RE,
    build_video,
    gen_video_id,
    parse_video_spec,
)
from relay.devtools.upstream_sim.views import video_internal


def control(
    fn: Callable[[web.Request, SimState], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        try:
            return await fn(request, request.app[STATE])
        except BadRequest as e:
            return error_response(400, str(e))

    return handler


async def create_video(request: web.Request, state: SimState) -> web.Response:
    body = await read_body(request)
    vid = body.get("id")
    if vid is None:
        vid = gen_video_id()
        while vid in state.videos:
            vid = gen_video_id()
    elif not isinstance(vid, str) or not VIDEO_ID_RE.fullmatch(vid):
        raise BadRequest("id must be 1-128 chars of [A-Za-z0-9_-]")
    if vid in state.videos:
        return error_response(409, f"video {vid} exists")
    spec, clip_ids = parse_video_spec(body)
    state.videos[vid] = build_video(vid, spec, clip_ids, state.clock())
    return json_response({"id": vid}, 201)


async def bulk_create(request: web.Request, state: SimState) -> web.Response:
    body = await read_body(request)
    n = body.get("count")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_BULK:
        raise BadRequest(f"count must be an integer between 1 and {MAX_BULK}")
    prefix = get_str(body, "prefix", "bv") or ""
    template = body.get("template", {})
    if not isinstance(template, dict):
        raise BadRequest("template must be an object")
    if "id" in template:
        raise BadRequest("template must not have an id")
    ids = [f"{prefix}-{i:06d}" for i in range(n)]
    if not all(VIDEO_ID_RE.fullmatch(i) for i in (ids[0], ids[-1])):
        raise BadRequest("prefix must be chars of [A-Za-z0-9_-]")
    taken = [i for i in ids if i in state.videos]
    if taken:
        return error_response(409, f"{len(taken)} ids exist already, e.g. {taken[0]}")
    spec, clip_ids = parse_video_spec(template)
    now = state.clock()
    for vid in ids:
        state.videos[vid] = build_video(vid, spec, clip_ids, now)
    return json_response({"ids": ids}, 201)


def _video_or_404(request: web.Request, state: SimState) -> Video | web.Response:
    video = state.videos.get(request.match_info["id"])
    return error_response(404, "Video not found") if video is None else video


async def get_video(request: web.Request, state: SimState) -> web.Response:
    video = _video_or_404(request, state)
    if isinstance(video, web.Response):
        return video
    return json_response(video_internal(video, state.clock()))


SWITCH_KEYS = frozenset({"status", "progress", "errorMessage"})


async def switch_status(request: web.Request, state: SimState) -> web.Response:
    video = _video_or_404(request, state)
    if isinstance(video, web.Response):
        return video
    body = await read_body(request)
    unknown = set(body) - SWITCH_KEYS
    if unknown:  # (a typo, silently dropped, would leave the test it serves puzzled)
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    status = body.get("status")
    if not isinstance(status, str) or not status:
        raise BadRequest("status must be a non-empty string")
    error_message = get_str(body, "errorMessage", None)
    now = state.clock()
    idx = video.index_at(now)
    current = video.steps[idx].progress if idx >= 0 else 0.0
    progress = get_number(body, "progress", 100.0 if status == "completed" else current)
    if progress > 100:
        raise BadRequest("progress must be between 0 and 100")
    if error_message is not None:  # (what a failed video says from now on)
        video.error_message = error_message or DEFAULT_ERROR_MESSAGE
    # the switch overrides the rest of the timeline: later steps are dropped
    video.steps = [s for s in video.steps if s.at <= now]
    video.steps.append(Step(status, progress, now))
    video.reindex()
    return json_response({"id": video.id, "status": status, "progress": num(progress), "at": now})


async def add_fault(request: web.Request, state: SimState) -> web.Response:
    body = await read_body(request)
    kind = body.get("kind")
    if isinstance(kind, int) and not isinstance(kind, bool):
        kind = str(kind)
    if kind not in FAULT_KINDS:
        raise BadRequest(f"kind must be one of {', '.join(sorted(FAULT_KINDS))}")
    path = body.get("path", "*")
    if path not in FAULT_PATHS:
        raise BadRequest("path must be status, clips or *")
    video_id = get_str(body, "videoId", None)
    times = body.get("times", 1)
    if not isinstance(times, int) or isinstance(times, bool) or (times < 1 and times != -1):
        raise BadRequest("times must be a positive integer or -1")
    retry_after = body.get("retryAfter")
    if retry_after is not None:
        retry_after = get_number(body, "retryAfter", 0.0)
    delay = get_number(body, "delay", DEFAULT_SLOW_DELAY)
    state.fault_seq += 1
    fid = f"flt_{state.fault_seq}"
    state.faults.append(Fault(fid, str(kind), path, video_id, times, retry_after, delay))
    return json_response({"id": fid}, 201)


async def clear_faults(request: web.Request, state: SimState) -> web.Response:
    state.faults.clear()
    return web.Response(status=204)


async def stats(request: web.Request, state: SimState) -> web.Response:
    since_raw = request.rel_url.query.get("since")
    log: list[tuple[float, str, str, int]] | deque[tuple[float, str, str, int]]
    if since_raw is None:
        log = state.stats.log
    else:
        try:
            since = float(since_raw)
        except ValueError:
            raise BadRequest("since must be a number") from None
        log = [e for e in state.stats.log if e[0] >= since]
    return json_response(
        {
            "requests": state.stats.requests,
            "byVideo": state.stats.by_video,
            "log": list(log),
            "faults": len(state.faults),
            "videos": len(state.videos),
        }
    )


async def reset(request: web.Request, state: SimState) -> web.Response:
    state.reset()
    return web.Response(status=204)
