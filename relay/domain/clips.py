"""Which clips a watch gets: deliverability (UPSTREAM.md), the watch's filters, the order.

Pure functions over clip objects exactly as the upstream returns them; nothing here changes
a clip, so extra fields and odd shapes (``hooks`` as a list, say) pass through untouched.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from relay.constants import CLIP_DELIVERABLE

Clip = dict[str, Any]


@dataclass(slots=True)
class ClipFilter:
    """A watch's view of a video's clips (made for every watch of a fan-out: a plain
    dataclass, which builds faster than a frozen one)."""

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
        return ordered([c for c in clips if is_deliverable(c) and self.passes(c)], self)


def ordered(clips: Sequence[Clip], f: ClipFilter) -> list[Clip]:
    """*clips* in the order *f* asks for; a clip without a usable value sorts last whatever
    the order. The sort is stable, so ordering commutes with filtering."""
    key = "duration" if f.sort_by == "duration" else "score"
    present = [c for c in clips if number(c.get(key)) is not None]
    absent = [c for c in clips if number(c.get(key)) is None]
    present.sort(key=lambda c: number(c.get(key)) or 0.0, reverse=f.sort_order != "asc")
    return present + absent


class ClipSet:
    """One video's clips prepared for many watches (a fan-out to thousands of watches
    selects from the same few clips).

    Deliverability is judged once, the deliverable clips are sorted once per order, a
    score-ordered selection is one bisect of that order (clips of a score range are
    contiguous in it), and each distinct selection is serialized once: watches whose
    thresholds fall between the same two clips share one JSON fragment.
    """

    __slots__ = ("_deliverable", "_json", "_orders", "_scores", "clips")

    def __init__(self, clips: Sequence[Clip]) -> None:
        self.clips = list(clips)
        self._deliverable = [c for c in self.clips if is_deliverable(c)]
        self._orders: dict[tuple[str, str], list[Clip]] = {}
        self._scores: dict[str, list[float]] = {}  # per score order: its keys, ascending
        self._json: dict[tuple[int, ...], orjson.Fragment] = {}

    @classmethod
    def from_doc(cls, doc: bytes | str) -> ClipSet:
        """The clips of a stored document (:meth:`doc`)."""
        return cls(orjson.loads(doc))

    def doc(self) -> bytes:
        """The deliverable clips as one JSON document, stored once per video: every body
        of the video's fan-out is built from it (nothing else of the clips reaches one)."""
        return orjson.dumps(self._deliverable)

    def select(self, f: ClipFilter) -> list[Clip]:
        """What ``f.select(self.clips)`` returns."""
        order = (f.sort_by, f.sort_order)
        ready = self._orders.get(order)
        if ready is None:
            ready = self._orders[order] = ordered(self._deliverable, f)
        if f.sort_by == "duration":
            return [c for c in ready if f.passes(c)]
        # score order: the clips with a score come first, monotonic in it, and only they
        # can pass -- the passing ones are the slice of [min_score, max_score]
        keys = self._scores.get(f.sort_order)
        if keys is None:
            sign = 1.0 if f.sort_order == "asc" else -1.0
            scored = (number(c.get("score")) for c in ready)
            keys = self._scores[f.sort_order] = [sign * x for x in scored if x is not None]
        if f.sort_order == "asc":
            lo = bisect_left(keys, f.min_score)
            hi = len(keys) if f.max_score is None else bisect_right(keys, f.max_score)
        else:
            lo = 0 if f.max_score is None else bisect_left(keys, -f.max_score)
            hi = bisect_right(keys, -f.min_score)
        chosen = ready[lo:hi]
        if f.favorited_only:
            return [c for c in chosen if c.get("favorited") is True]
        return chosen

    def select_json(self, f: ClipFilter) -> tuple[orjson.Fragment, int]:
        """:meth:`select` serialized (shared by every filter that selects the same clips),
        and how many clips that is."""
        chosen = self.select(f)
        key = tuple(map(id, chosen))
        fragment = self._json.get(key)
        if fragment is None:
            fragment = self._json[key] = orjson.Fragment(orjson.dumps(chosen))
        return fragment, len(chosen)


# a number written as a JSON string: plain decimal notation only (no "nan", "inf", "0x1f",
# "1_000" or surrounding spaces, which Python's float() would take)
DECIMAL = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def number(value: Any) -> float | None:
    """A clip field as a number, or None when it is missing or not numeric.

    A number sent as a string (``"score": "87.5"``, as a database's decimal column is often
    serialised) counts as that number: otherwise a clip the watch asked for would silently
    never be delivered. The clip itself still passes through as the upstream wrote it."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and len(value) <= 64 and DECIMAL.fullmatch(value):
        parsed = float(value)
        return parsed if math.isfinite(parsed) else None
    return None


def is_deliverable(clip: Clip) -> bool:
    """Rendered and downloadable: a final-and-good status and a download URL."""
    return clip.get("status") in CLIP_DELIVERABLE and bool(clip.get("downloadUrl"))


def is_settled(clip: Clip) -> bool:
    """Nothing more will happen to this clip: deliverable, or failed."""
    return is_deliverable(clip) or clip.get("status") == "failed"


def refreshed(stored: Sequence[Clip], fresh: Sequence[Clip]) -> list[Clip]:
    """The clips an event carries (*stored*, deliverable when it was made) with the links of
    a fresh fetch: each takes the links (its fields named ``...Url``: ``downloadUrl``,
    ``thumbnailUrl``) of its fresh self -- the same ``id``; of clips sharing an id, the one
    at the same place among them -- when that is deliverable, and keeps everything else as
    stored. A clip the event did not carry stays out (one rendered since, one left out at
    the render timeout): a refresh changes links, not which clips a ``webhook-id`` carries
    nor what a watch's filters read. (Before, a fresh clip replaced its stored self whole,
    matched by id alone: with two clips of one id, both became the last -- a tester's run,
    2026-12-07: a redelivery carried no clip where the event had one.)"""
    now: dict[str | int, list[Clip]] = {}
    for c in fresh:
        cid = c.get("id")
        if isinstance(cid, str | int):
            now.setdefault(cid, []).append(c)
    taken: dict[str | int, int] = {}
    out: list[Clip] = []
    for c in stored:
        cid = c.get("id")
        if not isinstance(cid, str | int):
            out.append(c)
            continue
        k = taken[cid] = taken.get(cid, -1) + 1
        same = now.get(cid, ())
        f = same[k] if k < len(same) else None
        if f is None or not is_deliverable(f):
            out.append(c)
            continue
        out.append({**c, **{key: v for key, v in f.items() if key.lower().endswith("url")}})
    return out


def pending(clips: Sequence[Clip], filters: Iterable[ClipFilter]) -> set[int]:
    """The clips (their indexes in *clips*) still rendering that pass at least one of
    *filters*: what a watch with those filters waits for."""
    fs = list(filters)
    return {i for i, c in enumerate(clips) if not is_settled(c) and any(f.passes(c) for f in fs)}


def parse_clips(payload: Any) -> list[Clip]:
    """The clip objects of a clips response (entries that are not objects are skipped). A
    response without a ``clips`` list -- missing, null, or an error body such as
    ``{"error": ...}`` from the upstream or a gateway, answered 200 -- is a ``ValueError``,
    not "no clips": that would finish every watch of the video with ``clips: []``."""
    if not isinstance(payload, dict):
        raise ValueError("clips response is not an object")
    clips = payload.get("clips")
    if not isinstance(clips, list):
        raise ValueError("clips response has no clip list")
    return [c for c in clips if isinstance(c, dict)]
