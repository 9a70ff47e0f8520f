"""Fresh clip links: before a claimed batch is sent, fetch the clips again for each fan-out
whose stored clips document is getting old (RELAY_LINK_REFRESH) -- or is missing -- and
store them as that document, so every later attempt of its events carries them.

A refresh that fails (the video deleted upstream, 5xx, a timeout, the upstream paused) never
holds a delivery back: its attempt goes ahead with the stored document (or, with no document
stored either, is recorded as failed without a request), so the watch still moves on along
its retry schedule. A 429 pauses every worker's upstream requests
(:meth:`~workers.upstream_budget.UpstreamGate.pause`), as a 429 to a poll does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson

from relay import constants as c
from relay import logs
from relay.domain.clips import ClipSet, refreshed
from relay.domain.clock import now_ms
from relay.domain.watch import Watch
from relay.http.upstream import UpstreamClient
from relay.metrics import UPSTREAM_RATE_LIMITED, UPSTREAM_REQUESTS
from relay.settings import Settings
from relay.store import Store
from workers.delivery.bodies import Bodies, Source, source_of
from workers.delivery.logger import log
from workers.upstream_budget import Paused, UpstreamGate

PAUSE_DEFAULT_S = 1.0  # a 429 without Retry-After pauses the upstream this long


class LinkRefresher:
    """Asks the upstream for a video's clips again (within the shared budget) and stores
    them as the video's clips document."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        upstream: UpstreamClient,
        gate: UpstreamGate,
        bodies: Bodies,
    ) -> None:
        self.store = store
        self.settings = settings
        self.upstream = upstream
        self.gate = gate
        self.bodies = bodies
        self.lease_s = settings.lease
        # the refreshes under way, by clips document: batches that need one at once share
        # its one clips request (two requests a few ms apart: the second went out before
        # the first's 429 paused the upstream)
        self._fetching: dict[Source, asyncio.Task[int | None]] = {}
        self._said = logs.Sampled(c.TROUBLE_LOG_EVERY_S)  # as the poller's trouble lines

    async def refresh(
        self,
        items: list[Watch],
        deadline: int,
        release: Callable[[], None],
        missing: set[Source],
        renewed: Callable[[int], None] = lambda deadline: None,
    ) -> tuple[list[Watch], int, set[str]]:
        """Fetch the clips again for the fan-outs of ``clips.ready`` deliveries whose links
        are getting old, or whose clips document is *missing*: one clips request per
        document, all at once. Fetching can take a while (the upstream budget): the batch's
        claims are extended every third of the lease while it lasts and once it is over --
        and what another worker took over meanwhile is not sent. A
        document whose clips could not be had is sent as stored (one not stored either
        has nothing to build a body from: its attempt is recorded as failed without a
        request, :meth:`~workers.delivery.send.Sender.unsent`). Returns what to send, the
        claims' deadline from now on, and the ids of those with no clips to send; each
        extension's new deadline (the claims' token) also goes to *renewed* as it is
        made (a caller cut short still knows the token its claims are held with)."""
        limit = now_ms() - int(self.settings.link_refresh * 1000)
        stale = {
            source_of(w)
            for w in items
            if w.event_type == "clips.ready"
            and (source_of(w) in missing or (w.clips_ms is not None and w.clips_ms < limit))
        }
        if not stale:
            return items, deadline, set()
        sources = list(stale)
        fetching = asyncio.gather(*(self._fresh(src) for src in sources))
        held = [w.id for w in items]
        try:
            # a refresh can outlast the lease (waiting for the upstream budget): keep the
            # batch's claims alive meanwhile, each extension checking they are still ours
            while not (await asyncio.wait({fetching}, timeout=self.lease_s / 3))[0]:
                kept, deadline = await self.store.deliveries.extend(held, deadline, self.lease_s)
                renewed(deadline)
                held = [i for i in held if i in kept]
        except BaseException:
            fetching.cancel()
            # (retrieved once done, so that its cancellation is not logged as unhandled)
            fetching.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise
        fetched = dict(zip(sources, fetching.result(), strict=True))
        ours, deadline = await self.store.deliveries.extend(held, deadline, self.lease_s)
        out: list[Watch] = []
        gone: set[str] = set()
        for w in items:
            refresh = w.event_type == "clips.ready" and source_of(w) in stale
            got = fetched.get(source_of(w)) if refresh else None
            if w.id not in ours:  # taken over by another worker: it sends this one
                release()
                continue
            if got is not None:
                w.clips_ms = got
            elif refresh and source_of(w) in missing:
                gone.add(w.id)
            out.append(w)
        for video_id, event_at in stale:
            ok = fetched[(video_id, event_at)] is not None
            log.info("clip links refreshed", video_id=video_id, event_at=event_at, ok=ok)
        return out, deadline, gone

    async def _fresh(self, source: Source) -> int | None:
        """:meth:`_fetch` *source*, or wait for the fetch of it under way (a caller that
        gives up does not stop it for the others)."""
        task = self._fetching.get(source)
        if task is None:
            task = asyncio.ensure_future(self._fetch(source))
            self._fetching[source] = task
            task.add_done_callback(lambda done: self._fetched(source, done))
        return await asyncio.shield(task)

    def _fetched(self, source: Source, task: asyncio.Task[int | None]) -> None:
        self._fetching.pop(source, None)
        if not task.cancelled():
            task.exception()  # (retrieved: each caller that waited has it raised)

    async def _fetch(self, source: Source) -> int | None:
        """Fetch a video's clips, store them as the document of *source* (unless a newer
        fetch is stored: then that one) and keep them; when they were fetched (None: they
        could not be had -- also when Redis failed on the way: a refresh never holds a
        delivery back, and one error must not fail the claimed batch)."""
        try:
            return await self._fetch_once(source)
        except Exception as exc:
            log.warning(
                "clip links refresh failed",
                video_id=source[0],
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            return None

    async def _fetch_once(self, source: Source) -> int | None:
        video_id, event_at = source
        try:
            await self.gate.acquire(max_pause=self.lease_s / 3)
        except Paused:
            return None
        reply = await self.upstream.clips(video_id)
        # (counted as the poller's requests are, under an endpoint of its own)
        UPSTREAM_REQUESTS.labels("clips_refresh", reply.kind, str(reply.http_status or 0)).inc()
        if reply.kind == "rate_limited":  # every worker waits, as after a poll's 429
            UPSTREAM_RATE_LIMITED.inc()
            wait = reply.retry_after if reply.retry_after is not None else PAUSE_DEFAULT_S
            self._said.say(
                log.warning, "upstream rate limited", video_id=video_id, retry_after=wait
            )
            await self.gate.pause(wait)
        if reply.kind != "ok":
            return None
        fetched = now_ms()
        before = await self.store.deliveries.clips_doc(video_id, event_at)
        if before is None:  # (missing: what the upstream has now is all there is)
            doc = ClipSet(reply.clips).doc()
        else:  # the same clips, their links fresh (none rendered since joins the event)
            doc = orjson.dumps(refreshed(orjson.loads(before[0]), reply.clips))
        if not await self.store.deliveries.refresh_clips(video_id, event_at, doc, fetched):
            stored = await self.store.deliveries.clips_doc(video_id, event_at)
            if stored is not None:  # a newer fetch is stored: every worker sends that one
                doc, fetched = stored
        self.bodies.put(source, fetched, ClipSet.from_doc(doc))
        return fetched
