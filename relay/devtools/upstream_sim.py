"""A ScaleReach API simulator: the status and clips endpoints, signed CDN links, fault injection.

The simulator keeps everything in memory and reproduces the upstream's quirks described in
``UPSTREAM.md``: ``job`` turning ``null`` some time after the video finished, the video turning
``completed`` before its clips are rendered (``detected`` -> ``generating`` -> final, with
``downloadUrl: null`` meanwhile), signed links that expire, ``hooks``/``emotions`` given as
objects or lists, and a ``count`` that need not equal ``len(clips)``.

Public API (Bearer auth, like the upstream)::

    GET /api/videos/{id}/status
    GET /api/videos/{id}/clips?minScore=&maxScore=&status=&favorited=&sortBy=&sortOrder=
    GET /cdn/{clips|thumbs}/{name}?expires=&sig=        (no auth: the signature is the auth)

Control API (no auth, JSON)::

    POST   /_sim/videos              create one video            -> 201 {"id"}
    POST   /_sim/videos/bulk         create many from a template -> 201 {"ids"}
    GET    /_sim/videos/{id}         internal state of a video
    POST   /_sim/videos/{id}/status  switch the status now       -> 200 {..., "at"}
    POST   /_sim/faults              inject a fault              -> 201 {"id"}
    DELETE /_sim/faults              clear all faults            -> 204
    GET    /_sim/stats[?since=]      request counters and log
    POST   /_sim/reset               forget videos, faults and stats -> 204

Time comes from an injectable ``clock`` (default :func:`time.time`) so tests can move it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import math
import os
import random
import re
import secrets
import string
import sys
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson
from aiohttp import web

__all__ = ["STATE", "SimState", "create_app", "main", "run"]

# --- vocabulary ---------------------------------------------------------------------------
VIDEO_FINAL_BAD: Final = frozenset({"failed", "error", "expired"})
VIDEO_FINAL: Final = VIDEO_FINAL_BAD | {"completed"}
VIDEO_WAITING: Final = frozenset({"pending", "pending_config"})
CLIP_DELIVERABLE: Final = frozenset({"completed", "ready", "exported"})
CLIP_FILTER_STATUSES: Final = frozenset(
    {"detected", "generating", "completed", "ready", "exported", "failed"}
)
FAULT_KINDS: Final = frozenset(
    {"429", "500", "502", "503", "401", "402", "403", "404", "slow", "reset", "malformed"}
)
FAULT_PATHS: Final = frozenset({"status", "clips", "*"})
CDN_KINDS: Final = {"clips": "video/mp4", "thumbs": "image/jpeg"}

DEFAULT_TIMELINE: Final = (("pending", 0.0, 0.0), ("completed", 100.0, 0.0))
DEFAULT_ERROR_MESSAGE: Final = "processing failed"
DEFAULT_JOB_RETENTION: Final = 86400.0
DEFAULT_DURATION: Final = 1834
DEFAULT_CLIP_COUNT: Final = 8
DEFAULT_SLOW_DELAY: Final = 1.0
DEFAULT_429_RETRY_AFTER: Final = 1.0
RATE_LIMIT_LIMIT: Final = 100  # what the upstream's code allows per 60 s
LOG_MAX: Final = 100_000
MAX_BULK: Final = 1_000_000
VIDEO_EXPIRY: Final = 30 * 86400.0  # expiresAt = createdAt + 30 days
VIDEO_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
ID_ALPHABET: Final = string.ascii_letters + string.digits + "_-"

PathKind = Literal["status", "clips"]

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
CDN_BODIES: Final = {
    "clips": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
    "thumbs": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9",
}
CDN_DENIED: Final = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b"<Error><Code>AccessDenied</Code><Message>Request has expired or the signature does "
    b"not match</Message></Error>"
)


class BadRequest(Exception):
    """A control-API body or a query parameter is invalid; the message goes to the client."""


_UNSET: Final[Any] = object()


# --- state ----------------------------------------------------------------------------------
@dataclass(slots=True)
class Step:
    """One timeline step: from ``at`` (absolute clock time) the video has ``status``."""

    status: str
    progress: float
    at: float


@dataclass(slots=True)
class ClipSpec:
    """A parsed clip spec: static output fields plus the render schedule."""

    fields: dict[str, Any]
    render_after: float
    final_status: str
    download_url: Any = _UNSET  # a fixed value from the spec, or _UNSET for a signed URL
    thumbnail_url: Any = _UNSET


@dataclass(slots=True)
class Clip:
    """One clip of a video; ``fields`` holds every output field but the time-dependent ones."""

    id: str
    fields: dict[str, Any]
    render_after: float
    final_status: str
    download_url: Any = _UNSET
    thumbnail_url: Any = _UNSET


@dataclass(slots=True)
class VideoSpec:
    """A parsed video body (without id), reusable for bulk creation."""

    timeline: list[tuple[str, float, float]]  # (status, progress, after)
    clips: list[ClipSpec] | None  # None: generate the default clips
    count: int | None
    error_message: str
    job_retention: float
    title: str | None
    duration: float
    workspace_id: str


@dataclass(slots=True)
class Video:
    """A simulated video: its timeline (absolute times, sorted) and its clips."""

    id: str
    title: str
    created: float
    duration: float
    workspace_id: str
    error_message: str
    job_retention: float
    count: int | None
    clips: list[Clip]
    steps: list[Step] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # steps[i].at, for bisect
    final_since: list[float | None] = field(default_factory=list)
    first_completed: int | None = None
    processed_on: float | None = None  # first step not in VIDEO_WAITING

    def reindex(self) -> None:
        """Recompute the lookup lists after ``steps`` changed (steps are a handful)."""
        self.times = [s.at for s in self.steps]
        self.final_since = []
        self.first_completed = None
        self.processed_on = None
        prev: float | None = None
        for i, s in enumerate(self.steps):
            final = s.status in VIDEO_FINAL
            prev = (s.at if prev is None else prev) if final else None
            self.final_since.append(prev)
            if s.status == "completed" and self.first_completed is None:
                self.first_completed = i
            if s.status not in VIDEO_WAITING and self.processed_on is None:
                self.processed_on = s.at

    def index_at(self, now: float) -> int:
        """The index of the step in effect at ``now``, -1 before the first step."""
        return bisect_right(self.times, now) - 1

    def completed_at(self, now: float) -> float | None:
        """When the video first turned ``completed``, if it has by ``now``."""
        fc = self.first_completed
        if fc is None or self.times[fc] > now:
            return None
        return self.times[fc]


@dataclass(slots=True)
class Fault:
    """An injected fault, consumed by matching public-API requests in creation order."""

    id: str
    kind: str
    path: str
    video_id: str | None
    times: int
    retry_after: float | None
    delay: float

    def matches(self, path: PathKind, video_id: str) -> bool:
        """Whether this fault applies to a request for ``path`` on ``video_id``."""
        return (
            self.times != 0
            and (self.path == "*" or self.path == path)
            and (self.video_id is None or self.video_id == video_id)
        )


@dataclass(slots=True)
class Stats:
    """Counters and a bounded log of public-API requests."""

    requests: int = 0
    by_video: dict[str, dict[str, int]] = field(default_factory=dict)
    log: deque[tuple[float, str, str, int]] = field(default_factory=lambda: deque(maxlen=LOG_MAX))

    def record(self, at: float, path: PathKind, video_id: str, status: int) -> None:
        """Count one answered (or reset, status 0) request."""
        self.requests += 1
        per = self.by_video.get(video_id)
        if per is None:
            per = self.by_video[video_id] = {"status": 0, "clips": 0}
        per[path] += 1
        self.log.append((at, path, video_id, status))


@dataclass(slots=True)
class SimState:
    """Everything the simulator knows; one per application."""

    api_key: str
    url_ttl: float
    clock: Callable[[], float]
    url_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    videos: dict[str, Video] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    fault_seq: int = 0

    def reset(self) -> None:
        """Forget videos, faults and stats."""
        self.videos.clear()
        self.faults.clear()
        self.stats = Stats()

    def take_fault(self, path: PathKind, video_id: str) -> Fault | None:
        """The first matching fault, consumed once (removed when used up)."""
        for i, f in enumerate(self.faults):
            if f.matches(path, video_id):
                if f.times > 0:
                    f.times -= 1
                    if f.times == 0:
                        del self.faults[i]
                return f
        return None

    def sign(self, kind: str, name: str, expires: int) -> str:
        """HMAC-SHA256 (hex) of one CDN object and its expiry."""
        msg = f"{kind}/{name}:{expires}".encode()
        return hmac.new(self.url_secret, msg, hashlib.sha256).hexdigest()


STATE: Final = web.AppKey("upstream_sim_state", SimState)


# --- helpers ----------------------------------------------------------------------------------
def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _num(x: float) -> int | float:
    """An integral float as int (so echoes read like the input: 80, not 80.0)."""
    return int(x) if x.is_integer() else x


def _gen_video_id() -> str:
    return "".join(random.choices(ID_ALPHABET, k=21))


def _gen_clip_id() -> str:
    return "clip_" + secrets.token_hex(6)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _get_number(body: dict[str, Any], key: str, default: float, *, minimum: float = 0.0) -> float:
    v = body.get(key, default)
    if not _is_number(v) or v < minimum:
        raise BadRequest(f"{key} must be a number >= {minimum:g}")
    return float(v)


def _get_str(body: dict[str, Any], key: str, default: str | None) -> str | None:
    v = body.get(key, default)
    if v is not None and not isinstance(v, str):
        raise BadRequest(f"{key} must be a string")
    return v


async def _read_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


# --- parsing the control bodies -------------------------------------------------------------
VIDEO_KEYS: Final = frozenset(
    {
        "id",
        "timeline",
        "clips",
        "count",
        "errorMessage",
        "jobRetention",
        "title",
        "duration",
        "workspaceId",
    }
)


def _parse_timeline(raw: Any) -> list[tuple[str, float, float]]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("timeline must be a non-empty list of steps")
    out: list[tuple[str, float, float]] = []
    prev_progress = 0.0
    for i, step in enumerate(raw):
        if not isinstance(step, dict):
            raise BadRequest(f"timeline[{i}] must be an object")
        status = step.get("status")
        if not isinstance(status, str) or not status:
            raise BadRequest(f"timeline[{i}].status must be a non-empty string")
        after = _get_number(step, "after", 0.0)
        default_progress = 100.0 if status == "completed" else prev_progress
        progress = _get_number(step, "progress", default_progress)
        if progress > 100:
            raise BadRequest(f"timeline[{i}].progress must be between 0 and 100")
        prev_progress = progress
        out.append((status, progress, after))
    out.sort(key=lambda s: s[2])  # stable: equal times keep their order
    return out


def _parse_clip(raw: Any, i: int) -> ClipSpec:
    if not isinstance(raw, dict):
        raise BadRequest(f"clips[{i}] must be an object")
    spec = dict(raw)
    render_after = _get_number(spec, "renderAfter", 0.0)
    final = spec.pop("finalStatus", None)
    status = spec.pop("status", None)
    final_status = final if final is not None else (status if status is not None else "completed")
    if not isinstance(final_status, str) or not final_status:
        raise BadRequest(f"clips[{i}].finalStatus must be a non-empty string")
    spec.pop("renderAfter", None)
    if "score" in spec and not _is_number(spec["score"]):
        raise BadRequest(f"clips[{i}].score must be a number")
    if "duration" in spec and not _is_number(spec["duration"]):
        raise BadRequest(f"clips[{i}].duration must be a number")
    if "favorited" in spec and not isinstance(spec["favorited"], bool):
        raise BadRequest(f"clips[{i}].favorited must be a boolean")
    download_url = spec.pop("downloadUrl", _UNSET)
    thumbnail_url = spec.pop("thumbnailUrl", _UNSET)
    fields = _default_clip_fields(i)
    fields["favorited"] = False  # a spec'd clip is favorited only when it says so
    # keep start/end/duration consistent when only some of them are given
    if "duration" not in spec and ("startTime" in spec or "endTime" in spec):
        start = spec.get("startTime", fields["startTime"])
        end = spec.get("endTime", fields["endTime"])
        if _is_number(start) and _is_number(end):
            fields["duration"] = _num(float(end - start))
    elif "duration" in spec and "endTime" not in spec:
        start = spec.get("startTime", fields["startTime"])
        if _is_number(start):
            fields["endTime"] = _num(float(start + spec["duration"]))
    fields.update(spec)
    fields.pop("id", None)
    return ClipSpec(
        fields=fields,
        render_after=render_after,
        final_status=final_status,
        download_url=download_url,
        thumbnail_url=thumbnail_url,
    )


def _clip_id_of(raw: dict[str, Any]) -> str | None:
    cid = raw.get("id")
    if cid is not None and (not isinstance(cid, str) or not cid or "/" in cid):
        raise BadRequest("clip id must be a non-empty string without '/'")
    return cid


def _default_clip_fields(i: int) -> dict[str, Any]:
    """Generated defaults for the i-th clip: score spreads 10..95 over 8 clips."""
    score = round(10 + (i % DEFAULT_CLIP_COUNT) * 85 / (DEFAULT_CLIP_COUNT - 1))
    start = 30 + i * 120
    duration = 15 + (i * 17) % 46
    topic = ("the pivot", "a bold claim", "the big reveal", "an honest failure")[i % 4]
    hooks: Any
    emotions: Any
    if i % 2 == 0:  # the documented shape
        hooks = {
            "question": f"What happened at {topic}?",
            "statement": f"This moment changed everything: {topic}",
        }
        emotions = {"primary": "surprise", "intensity": round(0.5 + (i % 5) / 10, 2)}
    else:  # the shape the upstream's code stores
        hooks = [f"Nobody expected {topic}", f"Wait for {topic}"]
        emotions = ["joy", "anticipation"]
    return {
        "title": f"Clip {i + 1}: {topic}",
        "startTime": start,
        "endTime": start + duration,
        "duration": duration,
        "score": score,
        "viralityReason": f"Strong hook around {topic} with a clear payoff",
        "transcript": f"And that is when we reached {topic}, and nothing was the same again.",
        "aspectRatio": ("9:16", "16:9", "1:1")[i % 3],
        "favorited": i % 3 == 0,
        "hooks": hooks,
        "emotions": emotions,
    }


_DEFAULT_CLIPS: Final = tuple(_default_clip_fields(i) for i in range(DEFAULT_CLIP_COUNT))


def _parse_video_spec(body: dict[str, Any]) -> tuple[VideoSpec, list[str | None]]:
    """Parse a video body; also return the clip ids given in the spec (None: generate)."""
    unknown = set(body) - VIDEO_KEYS
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    timeline = _parse_timeline(body["timeline"]) if "timeline" in body else list(DEFAULT_TIMELINE)
    clips: list[ClipSpec] | None = None
    clip_ids: list[str | None] = []
    if "clips" in body:
        raw_clips = body["clips"]
        if not isinstance(raw_clips, list):
            raise BadRequest("clips must be a list")
        clips = []
        for i, raw in enumerate(raw_clips):
            clips.append(_parse_clip(raw, i))
            clip_ids.append(_clip_id_of(raw))
    count = body.get("count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        raise BadRequest("count must be a non-negative integer")
    error_message = _get_str(body, "errorMessage", DEFAULT_ERROR_MESSAGE)
    workspace_id = _get_str(body, "workspaceId", None)
    return (
        VideoSpec(
            timeline=timeline,
            clips=clips,
            count=count,
            error_message=error_message or DEFAULT_ERROR_MESSAGE,
            job_retention=_get_number(body, "jobRetention", DEFAULT_JOB_RETENTION),
            title=_get_str(body, "title", None),
            duration=_get_number(body, "duration", DEFAULT_DURATION),
            workspace_id=workspace_id or "ws_sim",
        ),
        clip_ids,
    )


def _build_video(vid: str, spec: VideoSpec, clip_ids: list[str | None], now: float) -> Video:
    if spec.clips is None:
        clips = [Clip(_gen_clip_id(), dict(fields), 0.0, "completed") for fields in _DEFAULT_CLIPS]
    else:
        clips = [
            Clip(
                clip_ids[i] or _gen_clip_id(),
                dict(c.fields),
                c.render_after,
                c.final_status,
                c.download_url,
                c.thumbnail_url,
            )
            for i, c in enumerate(spec.clips)
        ]
    video = Video(
        id=vid,
        title=spec.title if spec.title is not None else f"Simulated video {vid}",
        created=now,
        duration=_num(spec.duration),
        workspace_id=spec.workspace_id,
        error_message=spec.error_message,
        job_retention=spec.job_retention,
        count=spec.count,
        clips=clips,
        steps=[Step(s, p, now + a) for s, p, a in spec.timeline],
    )
    video.reindex()
    return video


# --- views -------------------------------------------------------------------------------------
def _status_view(video: Video, now: float) -> dict[str, Any]:
    idx = video.index_at(now)
    if idx < 0:
        status, progress, since = "pending", 0.0, video.created
        final_since = None
    else:
        step = video.steps[idx]
        status, progress, since = step.status, step.progress, step.at
        final_since = video.final_since[idx]
    failed = status in VIDEO_FINAL_BAD
    completed_at = video.completed_at(now)
    row = {
        "id": video.id,
        "workspaceId": video.workspace_id,
        "title": video.title,
        "status": status,
        "duration": video.duration,
        "errorMessage": video.error_message if failed else None,
        "transcript": (f"Full transcript of {video.title}." if completed_at is not None else None),
        "expiresAt": _iso(video.created + VIDEO_EXPIRY),
        "createdAt": _iso(video.created),
        "updatedAt": _iso(since),
    }
    job: dict[str, Any] | None
    if final_since is not None and now >= final_since + video.job_retention:
        job = None
    else:
        if idx < 0 or status in VIDEO_WAITING:
            state = "waiting"
        elif status == "completed":
            state = "completed"
        elif failed:
            state = "failed"
        else:
            state = "active"
        job = {
            "id": f"video-{video.id}",
            "state": state,
            "progress": _num(progress),
            "data": {"videoId": video.id, "workspaceId": video.workspace_id},
            "failedReason": video.error_message if failed else None,
            "processedOn": (
                int(video.processed_on * 1000)
                if video.processed_on is not None and video.processed_on <= now
                else None
            ),
            "finishedOn": int(final_since * 1000) if final_since is not None else None,
        }
    return {"video": row, "job": job}


def _clip_status(clip: Clip, since_completed: float) -> str:
    if since_completed >= clip.render_after:
        return clip.final_status
    return "detected" if since_completed < clip.render_after / 2 else "generating"


def _signed_url(state: SimState, origin: str, kind: str, name: str, expires: int) -> str:
    return f"{origin}/cdn/{kind}/{name}?expires={expires}&sig={state.sign(kind, name, expires)}"


def _clip_view(
    state: SimState, clip: Clip, status: str, origin: str, expires: int
) -> dict[str, Any]:
    download: Any = None
    thumb: Any = None
    if status == clip.final_status and status in CLIP_DELIVERABLE:
        download = (
            _signed_url(state, origin, "clips", f"{clip.id}.mp4", expires)
            if clip.download_url is _UNSET
            else clip.download_url
        )
        thumb = (
            _signed_url(state, origin, "thumbs", f"{clip.id}.jpg", expires)
            if clip.thumbnail_url is _UNSET
            else clip.thumbnail_url
        )
    f = clip.fields
    out: dict[str, Any] = {
        "id": clip.id,
        "title": f["title"],
        "startTime": f["startTime"],
        "endTime": f["endTime"],
        "duration": f["duration"],
        "score": f["score"],
        "viralityReason": f["viralityReason"],
        "transcript": f["transcript"],
        "downloadUrl": download,
        "thumbnailUrl": thumb,
        "status": status,
        "aspectRatio": f["aspectRatio"],
        "favorited": f["favorited"],
        "hooks": f["hooks"],
        "emotions": f["emotions"],
    }
    for k, v in f.items():  # extra fields from the spec pass through
        if k not in out:
            out[k] = v
    return out


@dataclass(slots=True)
class ClipQuery:
    """Parsed query filters of the clips endpoint."""

    min_score: float | None = None
    max_score: float | None = None
    status: str | None = None
    favorited: bool | None = None
    sort_by: str = "score"
    sort_order: str = "desc"

    def echo(self) -> dict[str, Any]:
        """The ``filters`` object of the response: given filters plus the sort."""
        out: dict[str, Any] = {}
        if self.min_score is not None:
            out["minScore"] = _num(self.min_score)
        if self.max_score is not None:
            out["maxScore"] = _num(self.max_score)
        if self.status is not None:
            out["status"] = self.status
        if self.favorited is not None:
            out["favorited"] = self.favorited
        out["sortBy"] = self.sort_by
        out["sortOrder"] = self.sort_order
        return out


def _parse_score(raw: str, name: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise BadRequest(f"Invalid {name}: must be a number between 0 and 100") from None
    if not math.isfinite(v) or not 0 <= v <= 100:
        raise BadRequest(f"Invalid {name}: must be a number between 0 and 100")
    return v


def parse_clip_query(query: Mapping[str, str]) -> ClipQuery:
    """Parse and validate the clips endpoint's query (a multidict); raises BadRequest."""
    q = ClipQuery()
    if "minScore" in query:
        q.min_score = _parse_score(query["minScore"], "minScore")
    if "maxScore" in query:
        q.max_score = _parse_score(query["maxScore"], "maxScore")
    if q.min_score is not None and q.max_score is not None and q.min_score > q.max_score:
        raise BadRequest("Invalid filters: minScore must not exceed maxScore")
    if "status" in query:
        status = query["status"]
        if status not in CLIP_FILTER_STATUSES:
            raise BadRequest(
                f"Invalid status: must be one of {', '.join(sorted(CLIP_FILTER_STATUSES))}"
            )
        q.status = status
    if "favorited" in query:
        fav = query["favorited"].lower()
        if fav not in ("true", "false"):
            raise BadRequest("Invalid favorited: must be true or false")
        q.favorited = fav == "true"
    if "sortBy" in query:
        if query["sortBy"] not in ("score", "duration"):
            raise BadRequest("Invalid sortBy: must be score or duration")
        q.sort_by = query["sortBy"]
    if "sortOrder" in query:
        if query["sortOrder"] not in ("asc", "desc"):
            raise BadRequest("Invalid sortOrder: must be asc or desc")
        q.sort_order = query["sortOrder"]
    return q


def _clips_view(
    state: SimState, video: Video, q: ClipQuery, now: float, origin: str
) -> dict[str, Any]:
    completed_at = video.completed_at(now)
    clips: list[dict[str, Any]] = []
    total = 0
    if completed_at is not None:
        total = len(video.clips)
        since = now - completed_at
        expires = int(now + state.url_ttl)
        for clip in video.clips:
            f = clip.fields
            score = f["score"]
            if q.min_score is not None and score < q.min_score:
                continue
            if q.max_score is not None and score > q.max_score:
                continue
            if q.favorited is not None and bool(f["favorited"]) != q.favorited:
                continue
            status = _clip_status(clip, since)
            if q.status is not None and status != q.status:
                continue
            clips.append(_clip_view(state, clip, status, origin, expires))
        clips.sort(key=lambda c: c[q.sort_by], reverse=q.sort_order == "desc")
    return {
        "videoId": video.id,
        "clips": clips,
        "count": video.count if video.count is not None else total,
        "filters": q.echo(),
    }


def _video_internal(video: Video, now: float) -> dict[str, Any]:
    idx = video.index_at(now)
    completed_at = video.completed_at(now)
    since = None if completed_at is None else now - completed_at
    return {
        "id": video.id,
        "title": video.title,
        "createdAt": video.created,
        "duration": video.duration,
        "workspaceId": video.workspace_id,
        "errorMessage": video.error_message,
        "jobRetention": video.job_retention,
        "count": video.count,
        "status": video.steps[idx].status if idx >= 0 else "pending",
        "progress": _num(video.steps[idx].progress) if idx >= 0 else 0,
        "completedAt": completed_at,
        "finalSince": video.final_since[idx] if idx >= 0 else None,
        "timeline": [
            {"status": s.status, "progress": _num(s.progress), "at": s.at} for s in video.steps
        ],
        "clips": [
            {
                "id": c.id,
                "renderAfter": c.render_after,
                "finalStatus": c.final_status,
                "status": None if since is None else _clip_status(c, since),
                "score": c.fields["score"],
                "duration": c.fields["duration"],
                "favorited": c.fields["favorited"],
            }
            for c in video.clips
        ],
    }


# --- public API -------------------------------------------------------------------------------
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
            return _json(body, 429, headers)
    if code == 502:
        return web.Response(
            body=BAD_GATEWAY_HTML, status=502, content_type="text/html", headers=headers
        )
    return _json({"error": ERROR_TEXT[code]}, code, headers)


Handler = Callable[[web.Request, SimState, Video], web.Response]


def _api(path: PathKind, inner: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Wrap a public endpoint: faults, then auth, then the video lookup; count the request."""

    async def handler(request: web.Request) -> web.Response:
        state = request.app[STATE]
        video_id = request.match_info["id"]
        fault = state.take_fault(path, video_id) if state.faults else None
        if fault is not None:
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
            elif fault.kind == "reset":
                state.stats.record(state.clock(), path, video_id, 0)
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)  # never reaches the client
            elif fault.kind == "malformed":
                state.stats.record(state.clock(), path, video_id, 200)
                return web.Response(body=MALFORMED_BODY, content_type="application/json")
            else:
                resp = _fault_response(fault, state.clock())
                state.stats.record(state.clock(), path, video_id, resp.status)
                return resp
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
        return _error(401, "Unauthorized")
    video = state.videos.get(video_id)
    if video is None:
        return _error(404, "Video not found")
    try:
        return inner(request, state, video)
    except BadRequest as e:
        return _error(400, str(e))


def _status(request: web.Request, state: SimState, video: Video) -> web.Response:
    return _json(_status_view(video, state.clock()))


def _clips(request: web.Request, state: SimState, video: Video) -> web.Response:
    q = parse_clip_query(request.rel_url.query)
    origin = str(request.url.origin())
    return _json(_clips_view(state, video, q, state.clock(), origin))


async def _cdn(request: web.Request) -> web.Response:
    state = request.app[STATE]
    kind = request.match_info["kind"]
    name = request.match_info["name"]
    content_type = CDN_KINDS.get(kind)
    if content_type is None:
        return web.Response(status=404, body=b"Not Found", content_type="text/plain")
    sig = request.rel_url.query.get("sig", "")
    try:
        expires = int(request.rel_url.query.get("expires", ""))
    except ValueError:
        expires = -1
    good = hmac.compare_digest(sig.encode(), state.sign(kind, name, expires).encode())
    if not good or state.clock() >= expires:
        return web.Response(status=403, body=CDN_DENIED, content_type="application/xml")
    return web.Response(body=CDN_BODIES[kind], content_type=content_type)


# --- control API ------------------------------------------------------------------------------
def _control(
    fn: Callable[[web.Request, SimState], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        try:
            return await fn(request, request.app[STATE])
        except BadRequest as e:
            return _error(400, str(e))

    return handler


async def _create_video(request: web.Request, state: SimState) -> web.Response:
    body = await _read_body(request)
    vid = body.get("id")
    if vid is None:
        vid = _gen_video_id()
        while vid in state.videos:
            vid = _gen_video_id()
    elif not isinstance(vid, str) or not VIDEO_ID_RE.fullmatch(vid):
        raise BadRequest("id must be 1-128 chars of [A-Za-z0-9_-]")
    if vid in state.videos:
        return _error(409, f"video {vid} exists")
    spec, clip_ids = _parse_video_spec(body)
    state.videos[vid] = _build_video(vid, spec, clip_ids, state.clock())
    return _json({"id": vid}, 201)


async def _bulk_create(request: web.Request, state: SimState) -> web.Response:
    body = await _read_body(request)
    n = body.get("count")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_BULK:
        raise BadRequest(f"count must be an integer between 1 and {MAX_BULK}")
    prefix = _get_str(body, "prefix", "bv") or ""
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
        return _error(409, f"{len(taken)} ids exist already, e.g. {taken[0]}")
    spec, clip_ids = _parse_video_spec(template)
    now = state.clock()
    for vid in ids:
        state.videos[vid] = _build_video(vid, spec, clip_ids, now)
    return _json({"ids": ids}, 201)


def _video_or_404(request: web.Request, state: SimState) -> Video | web.Response:
    video = state.videos.get(request.match_info["id"])
    return _error(404, "Video not found") if video is None else video


async def _get_video(request: web.Request, state: SimState) -> web.Response:
    video = _video_or_404(request, state)
    if isinstance(video, web.Response):
        return video
    return _json(_video_internal(video, state.clock()))


async def _switch_status(request: web.Request, state: SimState) -> web.Response:
    video = _video_or_404(request, state)
    if isinstance(video, web.Response):
        return video
    body = await _read_body(request)
    status = body.get("status")
    if not isinstance(status, str) or not status:
        raise BadRequest("status must be a non-empty string")
    now = state.clock()
    idx = video.index_at(now)
    current = video.steps[idx].progress if idx >= 0 else 0.0
    progress = _get_number(body, "progress", 100.0 if status == "completed" else current)
    if progress > 100:
        raise BadRequest("progress must be between 0 and 100")
    # the switch overrides the rest of the timeline: later steps are dropped
    video.steps = [s for s in video.steps if s.at <= now]
    video.steps.append(Step(status, progress, now))
    video.reindex()
    return _json({"id": video.id, "status": status, "progress": _num(progress), "at": now})


async def _add_fault(request: web.Request, state: SimState) -> web.Response:
    body = await _read_body(request)
    kind = body.get("kind")
    if isinstance(kind, int) and not isinstance(kind, bool):
        kind = str(kind)
    if kind not in FAULT_KINDS:
        raise BadRequest(f"kind must be one of {', '.join(sorted(FAULT_KINDS))}")
    path = body.get("path", "*")
    if path not in FAULT_PATHS:
        raise BadRequest("path must be status, clips or *")
    video_id = _get_str(body, "videoId", None)
    times = body.get("times", 1)
    if not isinstance(times, int) or isinstance(times, bool) or (times < 1 and times != -1):
        raise BadRequest("times must be a positive integer or -1")
    retry_after = body.get("retryAfter")
    if retry_after is not None:
        retry_after = _get_number(body, "retryAfter", 0.0)
    delay = _get_number(body, "delay", DEFAULT_SLOW_DELAY)
    state.fault_seq += 1
    fid = f"flt_{state.fault_seq}"
    state.faults.append(Fault(fid, str(kind), path, video_id, times, retry_after, delay))
    return _json({"id": fid}, 201)


async def _clear_faults(request: web.Request, state: SimState) -> web.Response:
    state.faults.clear()
    return web.Response(status=204)


async def _stats(request: web.Request, state: SimState) -> web.Response:
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
    return _json(
        {
            "requests": state.stats.requests,
            "byVideo": state.stats.by_video,
            "log": list(log),
            "faults": len(state.faults),
            "videos": len(state.videos),
        }
    )


async def _reset(request: web.Request, state: SimState) -> web.Response:
    state.reset()
    return web.Response(status=204)


# --- entry points -------------------------------------------------------------------------------
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
    r.add_get("/cdn/{kind}/{name}", _cdn)
    r.add_post("/_sim/videos", _control(_create_video))
    r.add_post("/_sim/videos/bulk", _control(_bulk_create))
    r.add_get("/_sim/videos/{id}", _control(_get_video))
    r.add_post("/_sim/videos/{id}/status", _control(_switch_status))
    r.add_post("/_sim/faults", _control(_add_fault))
    r.add_delete("/_sim/faults", _control(_clear_faults))
    r.add_get("/_sim/stats", _control(_stats))
    r.add_post("/_sim/reset", _control(_reset))
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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--host --port --api-key --url-ttl``; the key may come from the env."""
    parser = argparse.ArgumentParser(
        prog="clip-relay upstream-sim", description="ScaleReach API simulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SCALEREACH_API_KEY"),
        help="Bearer key to accept (default: $SCALEREACH_API_KEY)",
    )
    parser.add_argument("--url-ttl", type=float, default=3600.0)
    args = parser.parse_args(argv)
    if not args.api_key:
        print(
            "upstream-sim: an API key is required (--api-key or SCALEREACH_API_KEY)",
            file=sys.stderr,
        )
        return 2
    if not math.isfinite(args.url_ttl) or args.url_ttl <= 0:
        print("upstream-sim: --url-ttl must be a positive number", file=sys.stderr)
        return 2
    run(args.host, args.port, args.api_key, url_ttl=args.url_ttl)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
