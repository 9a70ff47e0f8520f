"""The deliveries: create each watch's final event, claim due deliveries (with their watch and
body), extend or hand back claims, reschedule, rebuild bodies, record attempts.

The delivery schedule is a sorted set of watch ids by next attempt (ms). A claimed member's
score is pushed to a lease deadline -- the claim's token -- so a delivery held by a worker
that dies becomes due again by itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from redis.asyncio import Redis
from redis.typing import EncodableT

from relay import constants as c
from relay.domain.clock import now_ms
from relay.domain.delivery import AttemptResult, DeliveryClaim, EventMaker, NewEvent
from relay.domain.watch import Watch
from relay.store import scripts
from relay.store.codec import load_secrets, watch_from_hash
from relay.store.scripts import SCRIPT_BATCH
from relay.store.watches import Watches


class Deliveries:
    """``store.deliveries``: the events, the delivery schedule and the attempt records."""

    def __init__(self, redis: Redis, watches: Watches) -> None:
        self.redis = redis
        self._watches = watches
        self._finalize = scripts.register(redis, "finalize")
        self._claim = scripts.register(redis, "claim_deliveries")
        self._claim_known = scripts.register(redis, "claim_known")
        self._extend = scripts.register(redis, "extend_claims")
        self._settle = scripts.register(redis, "settle")

    async def finalize(
        self, video_id: str, events: Sequence[NewEvent]
    ) -> tuple[list[NewEvent], int]:
        """Create final events for watches of one video and schedule their delivery.

        The events of one call share their type, video status and clips time. Idempotent:
        a watch that already has its event keeps it. Returns the events created and the time
        they were recorded (ms). (Stopping the video's polls after its last fan-out chunk is
        :meth:`relay.store.videos.Videos.release`, given that time.)
        """
        now = now_ms()
        if len(events) > SCRIPT_BATCH:
            raise ValueError(f"at most {SCRIPT_BATCH} events per finalize call")
        if not events:
            return [], now
        first = events[0]
        shared = (first.event_type, first.clips_ms, first.video_status)
        args: list[EncodableT] = [
            c.WATCH_PREFIX,
            c.EVENT_PREFIX,
            now,
            first.event_type,
            "" if first.clips_ms is None else first.clips_ms,
            first.video_status,
        ]
        for ev in events:
            if (ev.event_type, ev.clips_ms, ev.video_status) != shared:
                raise ValueError("the events of one finalize call must be alike")
            # a memoryview goes to the socket as it is: no copy of the body while packing
            args += [ev.watch_id, ev.event_id, memoryview(ev.body)]
        made = await self._finalize(
            keys=[
                c.DELIVERY_SCHEDULE_KEY,
                c.VIDEO_WATCHES_KEY.format(video_id),
                c.WATCH_COUNTS_KEY,
            ],
            args=args,
        )
        return [events[i - 1] for i in made], now

    async def expire(self, watch_id: str, make_event: EventMaker) -> bool:
        """Give a still-watching watch its ``watch.expired`` event (made by *make_event*);
        False if it had one."""
        watch = await self._watches.get(watch_id)
        if watch is None or watch.status != "watching" or watch.event_id:
            return False
        created, _ = await self.finalize(watch.video_id, [make_event(watch)])
        return bool(created)

    async def claim(self, *, limit: int, lease_s: float) -> list[DeliveryClaim]:
        """Claim due deliveries for *lease_s* seconds, each with its watch and event body."""
        now = now_ms()
        deadline = now + int(lease_s * 1000)
        rows = await self._claim(
            keys=[c.DELIVERY_SCHEDULE_KEY],
            args=[now, deadline, limit, c.WATCH_PREFIX, c.EVENT_PREFIX],
        )
        out: list[DeliveryClaim] = []
        for member, flat, body in rows:
            h = dict(zip(flat[::2], flat[1::2], strict=True))
            watch = watch_from_hash(h) if h else None
            out.append(DeliveryClaim(member, watch, body.encode() if body else None, deadline))
        return out

    async def claim_known(
        self, held: Sequence[tuple[Watch, bytes]], *, lease_s: float
    ) -> list[DeliveryClaim]:
        """Claim deliveries whose watch and event body the caller holds already (each watch
        after :meth:`Watch.begin_event`), exactly as :meth:`claim` would claim them -- due,
        and still delivering that event -- reading back only the attempt count and the
        secrets. What is not claimed is somebody else's, or no longer due."""
        if not held:
            return []
        now = now_ms()
        deadline = now + int(lease_s * 1000)
        args: list[EncodableT] = [now, deadline, c.WATCH_PREFIX]
        for w, _ in held:
            args += [w.id, w.event_id]
        rows = await self._claim_known(keys=[c.DELIVERY_SCHEDULE_KEY], args=args)
        claimed = {wid: (attempt, secrets) for wid, attempt, secrets in rows}
        out: list[DeliveryClaim] = []
        for w, body in held:
            got = claimed.get(w.id)
            if got is not None:
                w.attempt = int(got[0] or 0)
                w.secrets = load_secrets(got[1])
                out.append(DeliveryClaim(w.id, w, body, deadline))
        return out

    async def extend(
        self, watch_ids: Sequence[str], deadline_ms: int, lease_s: float
    ) -> tuple[set[str], int]:
        """Extend the claims on *watch_ids* made with *deadline_ms* that nobody has taken
        over since, to *lease_s* from now: returns those (the others belong to another
        worker now) and their new deadline, the claims' new token. With *lease_s* 0 the
        claims are handed back: due at once, for any worker."""
        new_deadline = now_ms() + int(lease_s * 1000)
        if not watch_ids:
            return set(), new_deadline
        ours = await self._extend(
            keys=[c.DELIVERY_SCHEDULE_KEY], args=[deadline_ms, new_deadline, *watch_ids]
        )
        return {str(m) for m in ours}, new_deadline

    async def unschedule(self, watch_ids: Sequence[str]) -> None:
        """Take deliveries off the schedule (watches that have nothing to send)."""
        if watch_ids:
            await self.redis.zrem(c.DELIVERY_SCHEDULE_KEY, *watch_ids)

    async def defer(self, watch_ids: Sequence[str], due_ms: int) -> None:
        """Move claimed deliveries to *due_ms* without recording an attempt."""
        if watch_ids:
            await self.redis.zadd(
                c.DELIVERY_SCHEDULE_KEY, dict.fromkeys(watch_ids, due_ms), xx=True
            )

    async def replace_bodies(
        self, rebuilt: Sequence[tuple[str, str, bytes]], clips_ms: int
    ) -> None:
        """Store rebuilt event bodies (fresh clip links), each for the same event id:
        (watch id, event id, body) each, in one round trip."""
        if not rebuilt:
            return
        pipe = self.redis.pipeline(transaction=True)
        for watch_id, event_id, body in rebuilt:
            pipe.set(c.EVENT_KEY.format(event_id), body)
            pipe.hset(c.WATCH_KEY.format(watch_id), "clipsAt", str(clips_ms))
        await pipe.execute()

    async def settle(self, results: Sequence[AttemptResult]) -> list[str]:
        """Record attempts and move each watch on: one script call per batch."""
        statuses: list[str] = []
        for start in range(0, len(results), SCRIPT_BATCH):
            args: list[EncodableT] = [
                c.WATCH_PREFIX,
                c.WATCH_ATTEMPTS_SUFFIX,
                now_ms(),
                c.MAX_ATTEMPTS_KEPT,
            ]
            for r in results[start : start + SCRIPT_BATCH]:
                outcome = [r.event_id, r.outcome, r.next_due_ms, r.attempt, r.last_error]
                args += [r.watch_id, orjson.dumps(outcome), orjson.dumps(r.record)]
            got = await self._settle(keys=[c.DELIVERY_SCHEDULE_KEY, c.WATCH_COUNTS_KEY], args=args)
            statuses += [str(s) for s in got]
        return statuses
