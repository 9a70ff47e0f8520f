"""The deliveries: give watches their final event, claim due deliveries, extend or hand
back claims, reschedule, keep a video's clips document, record attempts.

The delivery schedule is a sorted set of watch ids by next attempt (ms). A claimed member's
score is pushed to a lease deadline -- the claim's token -- so a delivery held by a worker
that dies becomes due again by itself. No event body is stored: the worker builds it from
the watch and, for ``clips.ready``, the video's clips document (:func:`relay.domain.events.body`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.typing import EncodableT

from relay import constants as c
from relay.domain import clock
from relay.domain.clock import now_ms
from relay.domain.delivery import AttemptResult, DeliveryClaim, FinalEvent
from relay.domain.watch import Watch
from relay.store import scripts
from relay.store.coalesce import Coalescer
from relay.store.codec import (
    CLAIM_FIELDS,
    claimed_watch,
    state_field,
    watch_from_registration,
)
from relay.store.scripts import DELIVERY_BATCH, SCRIPT_BATCH

DOC_GONE = -2  # finalize's answer: the clips document said stored is not there

SETTLE_BATCH = DELIVERY_BATCH  # attempts recorded per script call, at most
RENDER_LATE_MS = 600_000  # a render wait over this long ago with no event: expire the watch


class Deliveries:
    """``store.deliveries``: the events, the delivery schedule and the attempt records."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._finalize = scripts.register(redis, "finalize")
        self._extend = scripts.register(redis, "extend_claims")
        self._settle = scripts.register(redis, "settle")
        self._refresh = scripts.register(redis, "refresh_source")
        self._claim_due = scripts.register(redis, "claim_due")
        self._drop = scripts.register(redis, "drop_claims")
        self._coalesced = Coalescer(redis)

    async def finalize(
        self,
        video_id: str,
        event: FinalEvent,
        watch_ids: Sequence[str],
        *,
        claim: int = 0,
        lease_s: float = 0.0,
        poll_token: int | None = None,
        later_ms: Sequence[int] | None = None,
        doc_stored: bool = False,
    ) -> tuple[int, list[DeliveryClaim]]:
        """Give the watches of *watch_ids* (of one video) *event* and schedule its delivery;
        every one of them stops waiting on the video.

        Idempotent: a watch no longer waiting on the video (it has its event, or was
        cancelled) is left alone. The first *claim* events created are claimed for the
        caller for *lease_s* and returned with their watches (it sends them without reading
        them back); the others are due at once, for any worker -- but those *later_ms*
        (one per watch, 0: now) paces: due that many ms from now, never claimed. Returns
        how many events were created, and the claims.

        With *poll_token* (a poller's claim of the video: its lease deadline), nothing is
        written once that claim is no longer the caller's; then -1 events were created.

        *doc_stored*: an earlier chunk stored the event's clips document, so it is not sent
        again -- unless it is gone since (a retention shorter than the fan-out purged the
        events that used it): then it is sent after all, so that no event of the video is
        left without its body.
        """
        if len(watch_ids) > SCRIPT_BATCH:
            raise ValueError(f"at most {SCRIPT_BATCH} watches per finalize call")
        if not watch_ids:
            return 0, []
        keys = [
            c.DELIVERY_SCHEDULE_KEY,
            c.VIDEO_WATCHES_KEY.format(video_id),
            c.WATCH_COUNTS_KEY,
            c.SOURCE_KEY.format(video_id, event.at_ms),
            c.VIDEO_KEY.format(video_id),
            c.EXPIRY_SCHEDULE_KEY,
            c.POLL_SCHEDULE_KEY,
        ]
        # a memoryview goes to the socket as it is: no copy while packing
        doc: EncodableT = memoryview(event.clips_doc)
        stored = doc_stored and event.event_type == "clips.ready"
        args: list[EncodableT] = [
            c.WATCH_PREFIX,
            event.at_ms,
            event.event_type,
            int(lease_s * 1000),
            claim,
            event.video_status,
            "" if event.video_progress is None else repr(event.video_progress),
            event.video_error,
            "=" if stored else doc,
            "" if event.clips_ms is None else event.clips_ms,
            c.TENANT_PREFIX,
            video_id,
            "" if poll_token is None else poll_token,
            *(
                watch_ids
                if later_ms is None
                else [w if d <= 0 else f"{w}@{d}" for w, d in zip(watch_ids, later_ms, strict=True)]
            ),
        ]
        rows = await self._finalize(keys=keys, args=args)
        if stored and int(rows[0]) == DOC_GONE:  # (nothing was written: again, with it)
            args[8] = doc
            rows = await self._finalize(keys=keys, args=args)
        created, deadline = int(rows[0]), int(rows[1])
        if len(rows) <= 4:
            return created, []
        st, ev = str(rows[2]), str(rows[3])
        claimed = [str(w) for w in rows[4::2]]
        regs = await self.redis.mget([c.REGISTRATION_KEY.format(w) for w in claimed])
        out: list[DeliveryClaim] = []
        for wid, secrets, reg in zip(claimed, rows[5::2], regs, strict=True):
            if reg is not None:  # (None: gone since; it is not delivered, its claim lapses)
                w = claimed_watch(wid, reg, (st, ev, secrets, None))
                w.clips_ms = event.clips_ms
                out.append(DeliveryClaim(wid, w, deadline, first=True))
        return created, out

    async def expire(self, watch_id: str, at_ms: int, *, render_ms: int | None = None) -> int:
        """Give a watch still waiting on its video its ``watch.expired``: 1 when it did, 0
        when it was not (it has its event, or was cancelled). With *render_ms*
        (RELAY_RENDER_TIMEOUT), a watch whose video is ``completed`` and waits for its clips
        to render is not expired -- its video finished, and ``clips.ready`` comes by the end
        of that wait (a review found ``watch.expired`` sent instead): minus the ms until it
        is due again (the wait's end; once over, when it is RENDER_LATE_MS late)."""
        reg = await self.redis.get(c.REGISTRATION_KEY.format(watch_id))
        if reg is None:
            return 0
        video_id = watch_from_registration(watch_id, reg).video_id
        if render_ms is not None:
            video = c.VIDEO_KEY.format(video_id)
            phase, since = await self.redis.hmget(video, ["phase", "completedAt"])  # type: ignore[misc]
            left = int(since or 0) + render_ms - now_ms()
            # (a wait over for 10 minutes with no clips.ready yet: its poller is gone, expire)
            if phase == "render" and since and left > -RENDER_LATE_MS:
                # (over: due again once it is RENDER_LATE_MS late, not every lease till then)
                return -(left if left > 0 else left + RENDER_LATE_MS)
        created, _ = await self.finalize(video_id, FinalEvent("watch.expired", at_ms), [watch_id])
        return 1 if created > 0 else 0

    async def claim(self, *, limit: int, lease_s: float) -> list[tuple[DeliveryClaim, int]]:
        """Claim due deliveries for *lease_s* seconds, each with its watch (None: gone) and
        when its video's clips document was fetched (0: none).

        The script only leases the members; the watches are read afterwards
        (:meth:`_read_claimed`), then each clips document's fetch time (one read per
        document). What changes in between (a cancel) shows in the state read; a claim
        still leased for a watch that is gone lapses."""
        ids, deadline = await self._claim_schedule(c.DELIVERY_SCHEDULE_KEY, limit, lease_s)
        if not ids:
            return []
        watches = await self._read_claimed(ids)
        sources = sorted(
            {(w.video_id, w.final_ms or 0) for w in watches if w and w.event_type == "clips.ready"}
        )
        fetched: dict[tuple[str, int], int] = {}
        if sources:
            pipe = self.redis.pipeline(transaction=False)
            for video_id, event_at in sources:
                pipe.hget(c.SOURCE_KEY.format(video_id, event_at), "at")
            got = await pipe.execute()
            fetched = {src: int(at or 0) for src, at in zip(sources, got, strict=True)}
        return [
            (
                DeliveryClaim(wid, w, deadline),
                fetched.get((w.video_id, w.final_ms or 0), 0) if w else 0,
            )
            for wid, w in zip(ids, watches, strict=True)
        ]

    async def _read_claimed(self, ids: Sequence[str]) -> list[Watch | None]:
        """Claimed watches as sending needs them (None: gone), read with plain commands in
        one round trip -- an MGET of the registrations and a pipeline of state reads --
        rather than inside a script, which would pass every value through Lua as well."""
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.mget([c.REGISTRATION_KEY.format(w) for w in ids])
        for wid in ids:
            pipe.hmget(c.WATCH_KEY.format(wid), list(CLAIM_FIELDS))
        regs, *states = await pipe.execute()
        return [
            claimed_watch(wid, reg, state) if reg else None
            for wid, reg, state in zip(ids, regs, states, strict=True)
        ]

    async def _claim_schedule(
        self, schedule: str, limit: int, lease_s: float
    ) -> tuple[list[str], int]:
        """Lease up to *limit* due members of *schedule* for *lease_s* seconds (by Redis'
        clock): the members and their lease deadline, the claims' token."""
        lease_ms = int(lease_s * 1000)
        sent = clock.local_ms()
        deadline, *got = await self._claim_due(keys=[schedule], args=[lease_ms, limit])
        clock.observe(int(deadline) - lease_ms, sent, clock.local_ms())
        return [str(m) for m in got], int(deadline)

    async def claim_expiry_batch(self, *, limit: int, lease_s: float) -> tuple[list[str], int]:
        """Claim up to *limit* watches whose expiry is due, for *lease_s* seconds; their ids
        and the claims' token (to hand failed ones back)."""
        return await self._claim_schedule(c.EXPIRY_SCHEDULE_KEY, limit, lease_s)

    async def unschedule_expiries(self, watch_ids: Sequence[str]) -> None:
        """Take watches off the expiry schedule (they have their event, or are gone)."""
        if watch_ids:
            await self.redis.zrem(c.EXPIRY_SCHEDULE_KEY, *watch_ids)

    async def clips_doc(self, video_id: str, event_at: int) -> tuple[bytes, int] | None:
        """The clips document of a video's events made at *event_at*, and when those clips
        were fetched (last), or None."""
        doc, at = await self.redis.hmget(  # type: ignore[misc]
            c.SOURCE_KEY.format(video_id, event_at), ["doc", "at"]
        )
        if doc is None or at is None:
            return None
        return (doc.encode() if isinstance(doc, str) else doc), int(at)

    async def refresh_clips(
        self, video_id: str, event_at: int, doc: bytes, fetched_ms: int
    ) -> bool:
        """Store a video's clips fetched again (fresh links) as the document of its events
        made at *event_at*: every later attempt of those events carries them. False when
        a newer fetch is stored (or no event uses that document)."""
        stored = await self._refresh(
            keys=[c.SOURCE_KEY.format(video_id, event_at)], args=[memoryview(doc), fetched_ms]
        )
        return bool(stored)

    async def extend(
        self, watch_ids: Sequence[str], deadline_ms: int, lease_s: float
    ) -> tuple[set[str], int]:
        """Extend the claims on *watch_ids* made with *deadline_ms* that nobody has taken
        over since, to *lease_s* from now (Redis' clock): returns those (the others belong
        to another worker now) and their new deadline, the claims' new token. With *lease_s*
        0 the claims are handed back: due at once, for any worker."""
        return await self.extend_schedule(c.DELIVERY_SCHEDULE_KEY, watch_ids, deadline_ms, lease_s)

    async def extend_schedule(
        self, schedule: str, members: Sequence[str], token: int, lease_s: float
    ) -> tuple[set[str], int]:
        """Extend the claims on *members* of *schedule* (this one or the poll schedule)
        held with *token* for *lease_s* from Redis' now (``extend_claims.lua``): those
        still held, and their new token."""
        lease_ms = int(lease_s * 1000)
        if not members:
            return set(), now_ms() + lease_ms
        sent = clock.local_ms()
        deadline, *ours = await self._extend(keys=[schedule], args=[token, lease_ms, *members])
        clock.observe(int(deadline) - lease_ms, sent, clock.local_ms())
        return {str(m) for m in ours}, int(deadline)

    async def hand_back(self, groups: Sequence[tuple[Sequence[str], int, float]]) -> None:
        """Hand claims back to the schedule: each group (*members*, the claims' token, a
        delay in s) due after its delay, those still held with that token (``extend``
        with that delay, as :meth:`extend`). The calls go together, in pipelines of
        :data:`~relay.store.coalesce.MAX_CALLS` (one round trip each, not one a group)."""
        await asyncio.gather(
            *(
                self._coalesced.call(
                    self._extend,
                    [c.DELIVERY_SCHEDULE_KEY],
                    [token, int(delay * 1000), *members],
                )
                for members, token, delay in groups
                if members
            )
        )

    async def claim_scores(self, watch_ids: Sequence[str]) -> list[float | None]:
        """Each delivery's score in the schedule (None: off it) -- a claimed one's is its
        claim's token: one ``ZMSCORE``."""
        if not watch_ids:
            return []
        got: list[float | None] = await self.redis.zmscore(c.DELIVERY_SCHEDULE_KEY, list(watch_ids))
        return got

    async def unschedule(self, watch_ids: Sequence[str], token: int) -> None:
        """Take claimed deliveries that have nothing to send (cancelled, final) off the
        schedule: those still held with *token* (``drop_claims.lua``). A watch read as not
        delivering may be back on the schedule since (redelivered, recovered: every script
        that changes a watch's status changes its schedule entry too), under a score that
        is not this claim's: it stays."""
        if watch_ids:
            await self._drop(keys=[c.DELIVERY_SCHEDULE_KEY], args=[token, *watch_ids])

    async def settle(self, results: Sequence[AttemptResult]) -> list[str]:
        """Record attempts and move each watch on: one script call per batch."""
        statuses: list[str] = []
        for start in range(0, len(results), SETTLE_BATCH):
            now = now_ms()
            args: list[EncodableT] = [c.WATCH_PREFIX, c.MAX_ATTEMPTS_KEPT, c.TENANT_PREFIX]
            for r in results[start : start + SETTLE_BATCH]:
                args += [
                    r.watch_id,
                    r.claim_ms,
                    state_field(r, now),
                    # (negative: settle checks that no record came since the claim read the
                    # watch -- only a claim from the schedule can have had an owner before)
                    r.record_no if r.first else -r.record_no,
                    r.record,
                    # (a retry's due time goes as a delay: settle adds it to Redis' now)
                    f"r{max(r.next_due_ms - now, 0)}"
                    if r.outcome == "retry"
                    else f"{r.status}|{r.tenant}",
                ]
            keys = [c.DELIVERY_SCHEDULE_KEY, c.WATCH_COUNTS_KEY]
            minute_counts(results[start : start + SETTLE_BATCH], now, keys, args)
            got = await self._settle(keys=keys, args=args)
            statuses += [str(s) for s in got]
        return statuses


def minute_counts(
    results: Sequence[AttemptResult], now: int, keys: list[str], args: list[EncodableT]
) -> None:
    """Add the dashboard's per-minute attempt counts of *results* to a ``settle`` call: per
    tenant, its minute hash as a key, and its ok and fail counts after the TTL at the end
    of the arguments (settle.lua's last block)."""
    tally: dict[str, list[int]] = {}
    for r in results:
        counts = tally.setdefault(r.tenant, [0, 0])
        counts[0 if r.outcome == "ok" else 1] += 1
    minute = now // 60_000
    args.append(c.ATTEMPT_MINUTES_TTL)
    for tenant, (ok, fail) in tally.items():
        keys.append(c.TENANT_MINUTE_KEY.format(tenant, minute))
        args += [ok, fail]
