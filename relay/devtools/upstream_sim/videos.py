"""Simulated videos from the control API's bodies: timelines, clip specs, generated defaults.

A video body (``POST /_sim/videos``, or the ``template`` of a bulk creation) is parsed once into
a :class:`VideoSpec`, then built into a :class:`~.state.Video` whose timeline steps have
absolute times. Without ``clips``, a video gets eight generated clips scoring 10 to
95, with ``hooks``/``emotions`` alternately given as objects and as lists.
"""

from __future__ import annotations

import random
import re
import secrets
import string
from dataclasses import dataclass
from typing import Any, Final

from relay.devtools.upstream_sim.jsonio import BadRequest, get_number, get_str, is_number, num
from relay.devtools.upstream_sim.state import UNSET, Clip, Step, Video

DEFAULT_TIMELINE: Final = (("pending", 0.0, 0.0), ("completed", 100.0, 0.0))
DEFAULT_ERROR_MESSAGE: Final = "processing failed"
DEFAULT_JOB_RETENTION: Final = 86400.0
DEFAULT_DURATION: Final = 1834
DEFAULT_CLIP_COUNT: Final = 8
MAX_BULK: Final = 1_000_000
VIDEO_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
ID_ALPHABET: Final = string.ascii_letters + string.digits + "_-"


@dataclass(slots=True)
class ClipSpec:
    """A parsed clip spec: static output fields plus the render schedule."""

    fields: dict[str, Any]
    render_after: float
    final_status: str
    download_url: Any = UNSET  # a fixed value from the spec, or UNSET for a signed URL
    thumbnail_url: Any = UNSET


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


def gen_video_id() -> str:
    return "".join(random.choices(ID_ALPHABET, k=21))


def _gen_clip_id() -> str:
    return "clip_" + secrets.token_hex(6)


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
        after = get_number(step, "after", 0.0)
        default_progress = 100.0 if status == "completed" else prev_progress
        progress = get_number(step, "progress", default_progress)
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
    render_after = get_number(spec, "renderAfter", 0.0)
    final = spec.pop("finalStatus", None)
    status = spec.pop("status", None)
    final_status = final if final is not None else (status if status is not None else "completed")
    if not isinstance(final_status, str) or not final_status:
        raise BadRequest(f"clips[{i}].finalStatus must be a non-empty string")
    spec.pop("renderAfter", None)
    if "score" in spec and not is_number(spec["score"]):
        raise BadRequest(f"clips[{i}].score must be a number")
    if "duration" in spec and not is_number(spec["duration"]):
        raise BadRequest(f"clips[{i}].duration must be a number")
    if "favorited" in spec and not isinstance(spec["favorited"], bool):
        raise BadRequest(f"clips[{i}].favorited must be a boolean")
    download_url = spec.pop("downloadUrl", UNSET)
    thumbnail_url = spec.pop("thumbnailUrl", UNSET)
    fields = _default_clip_fields(i)
    fields["favorited"] = False  # a spec'd clip is favorited only when it says so
    # keep start/end/duration consistent when only some of them are given
    if "duration" not in spec and ("startTime" in spec or "endTime" in spec):
        start = spec.get("startTime", fields["startTime"])
        end = spec.get("endTime", fields["endTime"])
        if is_number(start) and is_number(end):
            fields["duration"] = num(float(end - start))
    elif "duration" in spec and "endTime" not in spec:
        start = spec.get("startTime", fields["startTime"])
        if is_number(start):
            fields["endTime"] = num(float(start + spec["duration"]))
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


def parse_video_spec(body: dict[str, Any]) -> tuple[VideoSpec, list[str | None]]:
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
    error_message = get_str(body, "errorMessage", DEFAULT_ERROR_MESSAGE)
    workspace_id = get_str(body, "workspaceId", None)
    return (
        VideoSpec(
            timeline=timeline,
            clips=clips,
            count=count,
            error_message=error_message or DEFAULT_ERROR_MESSAGE,
            job_retention=get_number(body, "jobRetention", DEFAULT_JOB_RETENTION),
            title=get_str(body, "title", None),
            duration=get_number(body, "duration", DEFAULT_DURATION),
            workspace_id=workspace_id or "ws_sim",
        ),
        clip_ids,
    )


def build_video(vid: str, spec: VideoSpec, clip_ids: list[str | None], now: float) -> Video:
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
        duration=num(spec.duration),
        workspace_id=spec.workspace_id,
        error_message=spec.error_message,
        job_retention=spec.job_retention,
        count=spec.count,
        clips=clips,
        steps=[Step(s, p, now + a) for s, p, a in spec.timeline],
    )
    video.reindex()
    return video
