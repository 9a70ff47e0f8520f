"""Event bodies: what a receiver gets in the POST body (SPEC.md, "Webhooks")."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from relay.domain.clips import Clip, ClipFilter, ClipSet
from relay.domain.delivery import NewEvent
from relay.domain.ids import event_id
from relay.domain.watch import Watch


def iso(ms: int) -> str:
    """Milliseconds since the epoch as an RFC 3339 UTC timestamp (second precision)."""
    return _iso_second(ms // 1000) + "Z"


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as an RFC 3339 UTC timestamp with milliseconds."""
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=4)
def _iso_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def watch_filter(w: Watch) -> ClipFilter:
    """The clip filter a watch asked for."""
    return ClipFilter(w.min_score, w.max_score, w.favorited_only, w.sort_by, w.sort_order)


def _body(event_type: str, at_ms: int, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": event_type, "timestamp": iso(at_ms), "data": data})


def _base(w: Watch) -> dict[str, Any]:
    return {"watchId": w.id, "videoId": w.video_id, "metadata": w.metadata}


def clips_ready_body(w: Watch, clips: ClipSet | Sequence[Clip], at_ms: int) -> bytes:
    """``clips.ready`` for one watch: its filtered, ordered clips. Pass a :class:`ClipSet`
    when many watches of one video are served from the same clips."""
    prepared = clips if isinstance(clips, ClipSet) else ClipSet(clips)
    chosen, count = prepared.select_json(watch_filter(w))
    data = {
        "watchId": w.id,
        "videoId": w.video_id,
        "metadata": w.metadata,
        "minScore": w.min_score,
        "clips": chosen,
        "count": count,
    }
    if w.max_score is not None:
        data["maxScore"] = w.max_score
    return _body("clips.ready", at_ms, data)


def clips_ready(w: Watch, clips: ClipSet | Sequence[Clip], at_ms: int, clips_ms: int) -> NewEvent:
    """The ``clips.ready`` event of a watch."""
    return NewEvent(
        w.id,
        event_id(w.id, "clips.ready"),
        "clips.ready",
        clips_ready_body(w, clips, at_ms),
        video_status="completed",
        clips_ms=clips_ms,
    )


def video_failed(w: Watch, video_status: str, error: str, at_ms: int) -> NewEvent:
    """The ``video.failed`` event of a watch."""
    data = _base(w)
    data.update({"videoStatus": video_status, "error": error})
    return NewEvent(
        w.id,
        event_id(w.id, "video.failed"),
        "video.failed",
        _body("video.failed", at_ms, data),
        video_status=video_status,
    )


def watch_expired(w: Watch, at_ms: int) -> NewEvent:
    """The ``watch.expired`` event of a watch."""
    data = _base(w)
    data.update({"videoStatus": w.video_status, "videoProgress": w.video_progress})
    return NewEvent(
        w.id, event_id(w.id, "watch.expired"), "watch.expired", _body("watch.expired", at_ms, data)
    )


def event_timestamp_ms(body: bytes) -> int:
    """The creation time written in an event body (for rebuilding it with fresh links)."""
    ts = orjson.loads(body)["timestamp"]
    return int(datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() * 1000)
