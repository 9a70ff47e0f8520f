"""Fresh clip links: rebuild the ``clips.ready`` bodies of a claimed batch whose signed
download links are getting old (RELAY_LINK_REFRESH), before they are sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from relay.domain import events
from relay.domain.clips import Clip
from relay.domain.clock import now_ms
from relay.domain.watch import Watch
from relay.http.upstream import UpstreamClient
from relay.settings import Settings
from relay.store import Store
from workers.delivery.logger import log
from workers.upstream_budget import Paused, UpstreamGate

REFRESH_RETRY_S = 30.0  # a delivery whose clip links could not be refreshed waits this long


class LinkRefresher:
    """Asks the upstream for a video's clips again (within the shared budget) and stores the
    rebuilt bodies under the same event ids."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        upstream: UpstreamClient,
        gate: UpstreamGate,
    ) -> None:
        self.store = store
        self.settings = settings
        self.upstream = upstream
        self.gate = gate
        self.lease_s = settings.lease

    async def refresh(
        self, items: list[tuple[Watch, bytes]], deadline: int, release: Callable[[], None]
    ) -> tuple[list[tuple[Watch, bytes]], int]:
        """Rebuild ``clips.ready`` bodies whose signed links are getting old: one clips
        request per video, all at once. Fetching can take a while, so afterwards the batch's
        claims are extended -- and what another worker took over meanwhile is not sent.
        A video whose clips could not be had keeps its deliveries for a later try, with no
        attempt spent. Returns what to send and the claims' deadline from now on."""
        limit = now_ms() - int(self.settings.link_refresh * 1000)
        stale = {
            w.video_id
            for w, _ in items
            if w.event_type == "clips.ready" and w.clips_ms is not None and w.clips_ms < limit
        }
        if not stale:
            return items, deadline
        fetched = dict(
            zip(stale, await asyncio.gather(*(self._fresh_clips(v) for v in stale)), strict=True)
        )
        ours, deadline = await self.store.deliveries.extend(
            [w.id for w, _ in items], deadline, self.lease_s
        )
        now = now_ms()
        out: list[tuple[Watch, bytes]] = []
        later: list[str] = []
        rebuilt: list[tuple[str, str, bytes]] = []
        for w, body in items:
            refresh = w.video_id in stale and w.event_type == "clips.ready"
            clips = fetched.get(w.video_id)
            if w.id not in ours:  # taken over by another worker: it sends this one
                release()
            elif refresh and clips is None:
                later.append(w.id)
                release()
            elif refresh and clips is not None:
                new = events.clips_ready_body(w, clips, events.event_timestamp_ms(body))
                rebuilt.append((w.id, w.event_id, new))
                out.append((w, new))
            else:
                out.append((w, body))
        await self.store.deliveries.defer(later, now + int(REFRESH_RETRY_S * 1000))
        await self.store.deliveries.replace_bodies(rebuilt, now)
        for video_id in stale:
            log.info("clip links refreshed", video_id=video_id, ok=fetched[video_id] is not None)
        return out, deadline

    async def _fresh_clips(self, video_id: str) -> list[Clip] | None:
        try:
            await self.gate.acquire(max_pause=self.lease_s / 3)
        except Paused:
            return None
        reply = await self.upstream.clips(video_id)
        return reply.clips if reply.kind == "ok" else None
