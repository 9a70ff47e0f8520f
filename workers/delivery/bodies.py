"""Event bodies, built where they are sent: from the watch and, for ``clips.ready``, its
video's clips document -- read from Redis once per video (and per fetch of its clips) and
kept here, so a fan-out's thousands of bodies cost Redis one read, not one each."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from relay.domain import events
from relay.domain.clips import ClipSet
from relay.domain.watch import Watch
from relay.store import Store

VIDEOS_KEPT = 256  # clips documents kept (least recently used dropped)


class Bodies:
    """The clips documents of recent videos, and the bodies built from them."""

    def __init__(self, store: Store, *, kept: int = VIDEOS_KEPT) -> None:
        self.store = store
        self.kept = kept
        self._clips: OrderedDict[str, tuple[int, ClipSet]] = OrderedDict()

    def put(self, video_id: str, fetched_ms: int, clips: ClipSet) -> None:
        """Keep a video's clips as fetched at *fetched_ms* (unless newer ones are kept)."""
        held = self._clips.get(video_id)
        if held is None or held[0] <= fetched_ms:
            self._clips[video_id] = (fetched_ms, clips)
        self._clips.move_to_end(video_id)
        while len(self._clips) > self.kept:
            self._clips.popitem(last=False)

    def has(self, w: Watch) -> bool:
        """Can the body of *w*'s event be built from what is kept?"""
        if w.event_type != "clips.ready":
            return True
        held = self._clips.get(w.video_id)
        return held is not None and held[0] >= (w.clips_ms or 0)

    async def load(self, watches: Sequence[Watch]) -> set[str]:
        """Read the clips documents the bodies of *watches* need and are not kept (one
        read per video). Returns the videos that have none stored (nothing to build from:
        their clips must be fetched again)."""
        missing: set[str] = set()
        for video_id in {w.video_id for w in watches if not self.has(w)}:
            stored = await self.store.deliveries.clips_doc(video_id)
            if stored is None:
                missing.add(video_id)
            else:
                doc, fetched = stored
                self.put(video_id, fetched, ClipSet.from_doc(doc))
        return missing

    def build(self, w: Watch) -> bytes:
        """The body of *w*'s event (its clips, if any, loaded first: :meth:`load`)."""
        held = self._clips.get(w.video_id) if w.event_type == "clips.ready" else None
        return events.body(w, held[1] if held is not None else None)
