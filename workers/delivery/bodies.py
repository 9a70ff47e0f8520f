"""Event bodies, built where they are sent: from the watch and, for ``clips.ready``, the
clips document of its video's fan-out -- read from Redis once per fan-out (and per fetch of
its clips) and kept here, so a fan-out's thousands of bodies cost Redis one read, not one
each."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence

from relay.domain import events
from relay.domain.clips import ClipSet
from relay.domain.watch import Watch
from relay.store import Store

DOCUMENTS_KEPT = 256  # clips documents kept (least recently used dropped, unless held)
Source = tuple[str, int]  # a clips document: (video id, the time its events were made)


def source_of(w: Watch) -> Source:
    """The clips document a ``clips.ready`` watch's body is built from."""
    return w.video_id, w.final_ms or 0


class Bodies:
    """The clips documents of recent fan-outs, and the bodies built from them."""

    def __init__(self, store: Store, *, kept: int = DOCUMENTS_KEPT) -> None:
        self.store = store
        self.kept = kept
        self._clips: OrderedDict[Source, tuple[int, ClipSet]] = OrderedDict()
        self._held: dict[Source, int] = {}  # documents claimed batches still need: how many

    def __len__(self) -> int:
        return len(self._clips)

    def put(self, source: Source, fetched_ms: int, clips: ClipSet) -> None:
        """Keep a document's clips as fetched at *fetched_ms* (unless newer ones are kept)."""
        held = self._clips.get(source)
        if held is None or held[0] <= fetched_ms:
            self._clips[source] = (fetched_ms, clips)
        self._clips.move_to_end(source)
        self._trim()

    def _trim(self) -> None:
        """Drop the least recently used documents beyond ``kept``, but none a batch holds
        (there are at most as many of those as claims in this worker)."""
        if len(self._clips) <= self.kept:
            return
        for source in [s for s in self._clips if s not in self._held]:
            del self._clips[source]
            if len(self._clips) <= self.kept:
                return

    @contextlib.asynccontextmanager
    async def held(self, watches: Sequence[Watch]) -> AsyncIterator[set[Source]]:
        """:meth:`load` the documents *watches* need and keep them until the block ends --
        none is dropped meanwhile to make room for other batches' (a batch may wait on a
        link refresh while others load theirs), so each job queued in the block gets its
        clips. Yields the documents that are not stored (as :meth:`load`)."""
        sources = {source_of(w) for w in watches if w.event_type == "clips.ready"}
        for source in sources:
            self._held[source] = self._held.get(source, 0) + 1
        try:
            yield await self.load(watches)
        finally:
            for source in sources:
                left = self._held.pop(source) - 1
                if left:
                    self._held[source] = left
            self._trim()

    def clips(self, w: Watch) -> ClipSet | None:
        """The clips *w*'s body is built from, if kept (fetched no earlier than its claim
        says the stored ones were); None for an event without clips."""
        if w.event_type != "clips.ready":
            return None
        held = self._clips.get(source_of(w))
        if held is None or held[0] < (w.clips_ms or 0):
            return None
        return held[1]

    async def load(self, watches: Sequence[Watch]) -> set[Source]:
        """Read the clips documents the bodies of *watches* need and are not kept (one
        read per document). Returns those that are not stored (nothing to build from: the
        clips must be fetched again)."""
        need: dict[Source, int] = {}  # per document, the newest fetch a claim has seen
        for w in watches:
            if w.event_type == "clips.ready":
                source = source_of(w)
                need[source] = max(need.get(source, 0), w.clips_ms or 0)
        missing: set[Source] = set()
        for source, fetched_at_least in need.items():
            held = self._clips.get(source)
            if held is not None and held[0] >= fetched_at_least:
                continue
            stored = await self.store.deliveries.clips_doc(*source)
            if stored is None:
                missing.add(source)
            else:
                doc, fetched = stored
                self.put(source, fetched, ClipSet.from_doc(doc))
        return missing

    def build(self, w: Watch, clips: ClipSet | None) -> bytes:
        """The body of *w*'s event, from *clips* (:meth:`clips`, taken when it was queued)."""
        return events.body(w, clips)
