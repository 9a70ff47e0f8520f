"""Deliveries rendered for people: one event as a few readable lines for a terminal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from relay.devtools.receiver.recorder import ReceivedEvent

URL_SHOWN: Final = 60


def _text(value: Any, default: str = "-") -> str:
    return default if value is None else str(value)


def _number(value: Any, suffix: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return shown + suffix


def format_event(ev: ReceivedEvent) -> str:
    """Render one delivery as readable multi-line text for a terminal: the event type,
    webhook id, watch and video ids, clip count, then one line per clip (score, title,
    duration and the first 60 characters of its download URL)."""
    event = ev.event
    data = event.get("data")
    if not isinstance(data, dict):
        data = {}
    when = datetime.fromtimestamp(ev.received_at, UTC).strftime("%H:%M:%S")
    lines = [
        f"[{when}] {_text(event.get('type'), '?')}  webhook-id={ev.webhook_id}  path={ev.path}",
        f"  watch={_text(data.get('watchId'))}  video={_text(data.get('videoId'))}"
        f"  count={_text(data.get('count'))}",
    ]
    if "error" in data or "videoStatus" in data:
        lines.append(
            f"  videoStatus={_text(data.get('videoStatus'))}  error={_text(data.get('error'))}"
        )
    clips = data.get("clips")
    if isinstance(clips, list):
        for clip in clips:
            if not isinstance(clip, dict):
                continue
            url = clip.get("downloadUrl")
            shown_url = url[:URL_SHOWN] if isinstance(url, str) else "-"
            score = _number(clip.get("score"))
            title = _text(clip.get("title"), "(untitled)")
            duration = _number(clip.get("duration"), "s")
            lines.append(f"  - score {score:>5}  {title}  ({duration})  {shown_url}")
    return "\n".join(lines)
