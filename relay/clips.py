"""Which clips a watch gets: deliverability (UPSTREAM.md), the watch's filters, the order.

Pure functions over clip objects exactly as the upstream returns them; nothing here changes
a clip, so extra fields and odd shapes (``hooks`` as a list, say) pass through untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from relay.constants import CLIP_DELIVERABLE

Clip = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ClipFilter:
    """A watch's view of a video's clips."""

    min_score: float = 0.0
    max_score: float | None = None
    favorited_only: bool = False
    sort_by: str = "score"
    sort_order: str = "desc"

    def passes(self, clip: Clip) -> bool:
        """Does the clip pass the score range and the favourite rule?"""
        score = number(clip.get("score"))
        if score is None or score < self.min_score:
            return False
        if self.max_score is not None and score > self.max_score:
            return False
        return not self.favorited_only or clip.get("favorited") is True

    def select(self, clips: Iterable[Clip]) -> list[Clip]:
        """The deliverable clips that pass, in the watch's order."""
        chosen = [c for c in clips if is_deliverable(c) and self.passes(c)]
        key = "duration" if self.sort_by == "duration" else "score"
        # a clip without a usable value sorts last whatever the order
        present = [c for c in chosen if number(c.get(key)) is not None]
        absent = [c for c in chosen if number(c.get(key)) is None]
        present.sort(key=lambda c: number(c.get(key)) or 0.0, reverse=self.sort_order != "asc")
        return present + absent


def number(value: Any) -> float | None:
    """A clip field as a number, or None when it is missing or not numeric."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def is_deliverable(clip: Clip) -> bool:
    """Rendered and downloadable: a final-and-good status and a download URL."""
    return clip.get("status") in CLIP_DELIVERABLE and bool(clip.get("downloadUrl"))


def is_settled(clip: Clip) -> bool:
    """Nothing more will happen to this clip: deliverable, or failed."""
    return is_deliverable(clip) or clip.get("status") == "failed"


def pending(clips: Sequence[Clip], filters: Iterable[ClipFilter]) -> int:
    """How many clips that pass at least one of *filters* are still rendering."""
    fs = list(filters)
    return sum(1 for c in clips if not is_settled(c) and any(f.passes(c) for f in fs))


def parse_clips(payload: Any) -> list[Clip]:
    """The clip objects of a clips response; tolerant of a missing or odd ``clips`` field."""
    if not isinstance(payload, dict):
        raise ValueError("clips response is not an object")
    clips = payload.get("clips")
    if clips is None:
        return []
    if not isinstance(clips, list):
        raise ValueError("clips response has no clip list")
    return [c for c in clips if isinstance(c, dict)]
