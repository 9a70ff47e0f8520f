"""Event bodies: what a receiver gets in the POST body (SPEC.md, "Webhooks")."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

from relay.domain.clips import Clip, ClipFilter, ClipSet
from relay.domain.watch import Watch

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(ms: int) -> str:
    """Milliseconds since the epoch as an RFC 3339 UTC timestamp (second precision)."""
    return _iso_second(ms // 1000) + "Z"


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as an RFC 3339 UTC timestamp with milliseconds."""
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


def ms_of(when: datetime) -> int:
    """An aware datetime as milliseconds since the epoch, exactly (no float product: its
    rounding read some times a millisecond early), the inverse of :func:`iso_ms`."""
    return (when - EPOCH) // timedelta(milliseconds=1)


@lru_cache(maxsize=4)
def _iso_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def watch_filter(w: Watch) -> ClipFilter:
    """The clip filter a watch asked for."""
    return ClipFilter(w.min_score, w.max_score, w.favorited_only, w.sort_by, w.sort_order)


def _body(event_type: str, at_ms: int, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": event_type, "timestamp": iso(at_ms), "data": data})


def score_json(score: float) -> int | float:
    """A score as the API and the events write it: ``80``, not ``80.0`` (as it was given,
    as ScaleReach writes scores: a receiver decoding into an integer fails on ``80.0``)."""
    value = float(score)
    return int(value) if value.is_integer() else value


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
        "minScore": score_json(w.min_score),
        "clips": chosen,
        "count": count,
    }
    if w.max_score is not None:
        data["maxScore"] = score_json(w.max_score)
    return _body("clips.ready", at_ms, data)


def video_failed_body(w: Watch, video_status: str, error: str, at_ms: int) -> bytes:
    """``video.failed`` for one watch."""
    data = _base(w)
    data.update({"videoStatus": video_status, "error": error})
    return _body("video.failed", at_ms, data)


def watch_expired_body(w: Watch, at_ms: int) -> bytes:
    """``watch.expired`` for one watch: the video's last seen status and progress."""
    data = _base(w)
    data.update({"videoStatus": w.video_status, "videoProgress": w.video_progress})
    return _body("watch.expired", at_ms, data)


def body(w: Watch, clips: ClipSet | None) -> bytes:
    """The body of the watch's current event, from its registration, its event state and,
    for ``clips.ready``, the video's clips: the same bytes whenever it is built (until the
    clips are fetched again for fresh links)."""
    at = w.final_ms or 0
    if w.event_type == "clips.ready":
        if clips is None:
            raise ValueError("a clips.ready body needs the video's clips")
        return clips_ready_body(w, clips, at)
    if w.event_type == "video.failed":
        return video_failed_body(w, w.video_status or "", w.video_error or "", at)
    if w.event_type == "watch.expired":
        return watch_expired_body(w, at)
    raise ValueError(f"no event to build for watch {w.id} ({w.event_type!r})")


def ping_body(w: Watch, at_ms: int) -> bytes:
    """``watch.ping``: sent on request only, to check a receiver's endpoint and secret."""
    return _body("watch.ping", at_ms, _base(w))
