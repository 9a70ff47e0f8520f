"""What the simulator answers about a video at a given time: status, clips, internal state.

The upstream's quirks (``UPSTREAM.md``) are reproduced here: ``job`` turning ``null``
``jobRetention`` seconds after the video finished, the video turning ``completed`` before its
clips are rendered (``detected`` -> ``generating`` -> final, with ``downloadUrl: null``
meanwhile), and a ``count`` that need not equal ``len(clips)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from relay.devtools.upstream_sim.cdn import signed_url
from relay.devtools.upstream_sim.jsonio import BadRequest, num
from relay.devtools.upstream_sim.state import (
    UNSET,
    VIDEO_FINAL_BAD,
    VIDEO_WAITING,
    Clip,
    SimState,
    Video,
)

CLIP_DELIVERABLE: Final = frozenset({"completed", "ready", "exported"})
CLIP_FILTER_STATUSES: Final = frozenset(
    {"detected", "generating", "completed", "ready", "exported", "failed"}
)
VIDEO_EXPIRY: Final = 30 * 86400.0  # expiresAt = createdAt + 30 days


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_view(video: Video, now: float) -> dict[str, Any]:
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
            "progress": num(progress),
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


def _clip_view(
    state: SimState, clip: Clip, status: str, origin: str, expires: int
) -> dict[str, Any]:
    download: Any = None
    thumb: Any = None
    if status == clip.final_status and status in CLIP_DELIVERABLE:
        download = (
            signed_url(state, origin, "clips", f"{clip.id}.mp4", expires)
            if clip.download_url is UNSET
            else clip.download_url
        )
        thumb = (
            signed_url(state, origin, "thumbs", f"{clip.id}.jpg", expires)
            if clip.thumbnail_url is UNSET
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
            out["minScore"] = num(self.min_score)
        if self.max_score is not None:
            out["maxScore"] = num(self.max_score)
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


def clips_view(
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


def video_internal(video: Video, now: float) -> dict[str, Any]:
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
        "progress": num(video.steps[idx].progress) if idx >= 0 else 0,
        "completedAt": completed_at,
        "finalSince": video.final_since[idx] if idx >= 0 else None,
        "timeline": [
            {"status": s.status, "progress": num(s.progress), "at": s.at} for s in video.steps
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
