"""The watches in Redis: register, read (one or many), list, cancel, redeliver, rotate a
secret, the attempt records and the count per status.

Each transition that other replicas may race with is one Lua script (``commands/*.lua``).
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from redis.asyncio import Redis
from redis.typing import EncodableT

from relay import constants as c
from relay.domain import attempts
from relay.domain.clock import now_ms
from relay.domain.listing import Page, decode_cursor, encode_cursor, listing_of
from relay.domain.origin import url_origin_tag
from relay.domain.watch import SecretEntry, Watch
from relay.store import recovery, scripts
from relay.store.coalesce import Coalescer
from relay.store.codec import (
    PING_PREFIX,
    RECORD_PREFIX,
    STATE_FIELDS,
    WATCHING,
    dump_secrets,
    load_secrets,
    registration_json,
    show_video,
    waiting_entry,
    watch_from_registration,
    watch_from_state,
)
from relay.store.feeds import Circuits

EXPIRE_JOB = "expire_watch"  # the arq job of watch.expired before the expiry schedule
NO_CAP = 2**53  # live watches a tenant may hold when no cap is given


@dataclass(frozen=True, slots=True)
class Idempotency:
    """An Idempotency-Key (hashed) and the fingerprint of the body it came with: of the watch
    it makes (*fingerprint*), and of its JSON as the releases before 2026-12-06 took it
    (*raw_fingerprint*: kept in the record too, so that a replica of such a release replays
    the same body during a rolling update)."""

    key_hash: str
    fingerprint: str
    raw_fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class Created:
    """What registering a watch did: ``created``; ``exists`` (an earlier watch made with the
    same Idempotency-Key: *prior_id*, made from a body with fingerprints *prior_fp*, the
    watch's, and *prior_raw_fp*, its JSON's -- a record of an older release has only the
    latter); ``full`` (the tenant holds *held* live watches, its maximum); ``stored`` (it
    holds *held* watches in all, final ones too, its maximum); or ``refused``
    (*replay_only*, and no watch was made with the key)."""

    outcome: Literal["created", "exists", "full", "stored", "refused"]
    prior_id: str = ""
    prior_fp: str = ""
    prior_raw_fp: str = ""
    held: int = 0


class StaleRotation(Exception):
    """The secrets a rotation was asked from are no longer the watch's (another rotation
    came first: a form sent again, a reload): nothing was rotated."""


def secret_tag(secrets: Sequence[SecretEntry]) -> str:
    """Which secrets a page showed, as ``rotate_keys.lua`` tells them apart: when the one
    before the newest stops signing ('0': never rotated). Every rotation changes it, and it
    tells nothing of any secret (not even a hash of one)."""
    return str(secrets[1].expires_ms) if len(secrets) > 1 else "0"


def counts_of(raw: Mapping[str, str]) -> dict[str, int]:
    """The status counters' hash (``HGETALL`` of WATCH_COUNTS_KEY) as a count per status."""
    return {status: int(raw.get(status, 0)) for status in c.WATCH_STATUSES}


class Watches:
    """``store.watches``: the watch hashes, the tenants' indexes and the status counters."""

    def __init__(self, redis: Redis, circuits: Circuits) -> None:
        self.redis = redis
        self._circuits = circuits
        # registrations and reads come many at a time from an API under load
        self._coalesced = Coalescer(redis)
        self._create = scripts.register(redis, "create_watch")
        self._read = scripts.register(redis, "read_watches")
        self._cancel = scripts.register(redis, "cancel")
        self._redeliver = scripts.register(redis, "redeliver")
        self._rotate = scripts.register(redis, "rotate_keys")
        self._recover = recovery.RecoverScripts(  # recover(): relay.store.recovery
            scripts.register(redis, "read_failed"), scripts.register(redis, "recover")
        )
        self._record_ping = scripts.register(redis, "record_ping")

    async def create(
        self,
        watch: Watch,
        *,
        expire_after_s: float,
        max_live: int = NO_CAP,
        max_stored: int = NO_CAP,
        idempotency: Idempotency | None = None,
        replay_only: bool = False,
    ) -> Created:
        """Store a new watch, index it, schedule its video's poll and its expiry.

        One script, so a watch is either fully registered or not at all, in one round trip;
        with *idempotency*, its record is made in the same step, so concurrent requests with
        one key make one watch. A tenant holding *max_live* live watches, or *max_stored*
        in all (final ones too), gets none. With *replay_only* (and *idempotency*), nothing
        is written: the watch the key made, or ``refused``.
        """
        wid = watch.id
        keys = [
            c.REGISTRATION_KEY.format(wid),
            c.WATCH_KEY.format(wid),
            c.TENANT_INDEX_KEY.format(watch.tenant),
            c.TENANT_VIDEO_INDEX_KEY.format(watch.tenant, watch.video_id),
            c.VIDEO_WATCHES_KEY.format(watch.video_id),
            c.POLL_SCHEDULE_KEY,
            c.EXPIRY_SCHEDULE_KEY,
            c.WATCH_COUNTS_KEY,
            c.TENANT_COUNTS_KEY.format(watch.tenant),
            c.TENANTS_KEY,
        ]
        args: list[str | int | bytes] = [
            wid,
            registration_json(watch),
            dump_secrets(watch.secrets),
            watch.created_ms,
            watch.video_id,
            watch.tenant,
            watch.created_ms + int(expire_after_s * 1000),
            WATCHING,
            max_live,
            c.WATCH_PREFIX,
            waiting_entry(watch),
            max_stored,
        ]
        if idempotency is not None:
            keys.append(c.IDEMPOTENCY_KEY.format(watch.tenant, idempotency.key_hash))
            # 'fp': the JSON's fingerprint, as older releases write and read it; 'wfp': the
            # watch's (a replay spelled otherwise, 50 for 50.0, is the same watch)
            record = {
                "fp": idempotency.raw_fingerprint,
                "wfp": idempotency.fingerprint,
                "watchId": wid,
            }
            args += [orjson.dumps(record), c.IDEMPOTENCY_TTL, "1" if replay_only else "0"]
        elif replay_only:
            return Created("refused")
        reply = await self._coalesced.call(self._create, keys, args)
        outcome = str(reply[0])
        if outcome == "refused":
            return Created("refused")
        if outcome == "full":
            return Created("full", held=int(reply[1]))
        if outcome == "stored":
            return Created("stored", held=int(reply[1]))
        if outcome == "exists" and reply[1]:
            prior = orjson.loads(reply[1])
            if prior.get("watchId") != wid:
                return Created(
                    "exists",
                    prior_id=prior["watchId"],
                    prior_fp=prior.get("wfp", ""),
                    prior_raw_fp=prior.get("fp", ""),
                )
        return Created("created")  # or this very watch, found by a re-run of the script

    async def get(self, watch_id: str) -> Watch | None:
        """The watch, or None."""
        return (await self.get_many([watch_id]))[0]

    async def get_many(self, watch_ids: Sequence[str]) -> list[Watch | None]:
        """Several watches in one round trip, in the order asked (a watch without an event
        shows its video's last seen status)."""
        if not watch_ids:
            return []
        args: list[str | int] = [
            c.WATCH_PREFIX,
            c.REGISTRATION_SUFFIX,
            c.VIDEO_PREFIX,
            len(STATE_FIELDS),
            *STATE_FIELDS,
        ]
        args += watch_ids
        rows = await self._coalesced.call(self._read, [], args)
        out: list[Watch | None] = []
        for wid, row in zip(watch_ids, rows, strict=True):
            if not row:
                out.append(None)
                continue
            reg, state, video = row
            w = watch_from_state(wid, reg, state)
            if video and not w.event_type and w.status == "watching":
                show_video(w, video[0], video[1])
                w.updated_ms = max(w.updated_ms, int(video[2] or 0))
                if video[3] and not w.last_error:  # (its polls fail: the upstream's trouble)
                    w.last_error = video[3]
            out.append(w)
        return out

    async def specs(self, watch_ids: Sequence[str]) -> list[Watch]:
        """The registrations of the watches of *watch_ids* that exist (their filters)."""
        regs = await self.redis.mget([c.REGISTRATION_KEY.format(w) for w in watch_ids])
        return [watch_from_registration(w, r) for w, r in zip(watch_ids, regs, strict=True) if r]

    async def page(
        self,
        tenant: str,
        *,
        video_id: str | None,
        status: str | None,
        limit: int,
        cursor: str | None,
        scan_cap: int = 1000,
    ) -> Page:
        """A tenant's watches, newest first, optionally filtered, one page at a time.

        A final status alone is read from the tenant's index of that status (newest to
        become final first): a constant number of round trips however rare the status.
        Otherwise the creation index is read in chunks (of a video's watches, with
        *video_id*) and filtered by status, at most *scan_cap* members per page: a page of
        a rare live status may come back short, with a cursor to go on from.
        """
        listing = listing_of(tenant, video_id, status)
        if status in c.FINAL_STATUSES and not video_id:
            return await self._final_page(tenant, status, limit, cursor, listing)
        key = (
            c.TENANT_VIDEO_INDEX_KEY.format(tenant, video_id)
            if video_id
            else c.TENANT_INDEX_KEY.format(tenant)
        )
        last = decode_cursor(cursor, listing) if cursor else None
        chunk = max(limit * 2, 20)
        found: list[Watch] = []
        scanned = 0
        exhausted = more = False  # more: the page ended before its last chunk did
        while len(found) < limit and scanned < scan_cap and not exhausted:
            batch = await self._index_after(key, last, chunk)
            exhausted = len(batch) < chunk
            watches = await self.get_many([m for m, _ in batch])
            for i, ((member, score), w) in enumerate(zip(batch, watches, strict=True)):
                scanned += 1
                last = (score, member)
                if w is not None and (status is None or w.status == status):
                    found.append(w)
                    if len(found) == limit:
                        more = i < len(batch) - 1
                        break
        next_cursor = None
        if last is not None and (more or (not exhausted and await self._index_after(key, last, 1))):
            next_cursor = encode_cursor(*last, listing)
        return Page(found, next_cursor)

    async def _final_page(
        self, tenant: str, status: str, limit: int, cursor: str | None, listing: str
    ) -> Page:
        """A page of the tenant's index of a final status: one read of the index (two after
        a cursor), one of the watches."""
        key = c.TENANT_FINAL_KEY.format(tenant, status)
        after = decode_cursor(cursor, listing) if cursor else None
        batch = await self._index_after(key, after, limit + 1)
        more, batch = len(batch) > limit, batch[:limit]
        watches = await self.get_many([m for m, _ in batch])
        found = [w for w in watches if w is not None and w.status == status]
        return Page(found, encode_cursor(batch[-1][1], batch[-1][0], listing) if more else None)

    async def _index_after(
        self, key: str, after: tuple[int, str] | None, count: int
    ) -> list[tuple[str, int]]:
        """Members of an index zset strictly after *after* in (score desc, member desc)."""
        if after is None:
            rows = await self.redis.zrevrangebyscore(
                key, "+inf", "-inf", start=0, num=count, withscores=True
            )
            return [(m, int(s)) for m, s in rows]
        score, member = after
        pipe = self.redis.pipeline(transaction=False)  # one round trip for both reads
        pipe.zrangebyscore(key, score, score)
        pipe.zrevrangebyscore(key, f"({score}", "-inf", start=0, num=count, withscores=True)
        same, more = await pipe.execute()
        out = sorted((m for m in same if m < member), reverse=True)[:count]
        rows = [(m, score) for m in out]
        rows.extend((m, int(s)) for m, s in more[: count - len(rows)])
        return rows

    async def cancel(self, watch: Watch) -> None:
        """Cancel: nothing is delivered afterwards (an attempt already on the wire may land)."""
        await self._cancel(
            keys=[
                c.WATCH_KEY.format(watch.id),
                c.DELIVERY_SCHEDULE_KEY,
                c.VIDEO_WATCHES_KEY.format(watch.video_id),
                c.WATCH_COUNTS_KEY,
                c.VIDEO_KEY.format(watch.video_id),
                c.EXPIRY_SCHEDULE_KEY,
            ],
            args=[watch.id, c.TENANT_PREFIX, watch.tenant],
        )

    async def redeliver(self, watch: Watch) -> str | None:
        """Start a new attempt series for the watch's last event. Returns 'ok' or the
        status that has nothing to redeliver (None: no such watch)."""
        # the workers close its origin's circuit first, so the attempt is sent, not refused
        # -- only for a watch that has something to redeliver (as read just before): a
        # refused one must not close a circuit other tenants' deliveries share (a review,
        # 2026-12-06)
        if watch.status in c.REDELIVERABLE_STATUSES:
            await self._circuits.close([url_origin_tag(watch.callback_url)])
        result = await self._redeliver(
            keys=[c.WATCH_KEY.format(watch.id), c.DELIVERY_SCHEDULE_KEY, c.WATCH_COUNTS_KEY],
            args=[watch.id, now_ms(), c.TENANT_PREFIX, watch.tenant, secrets.token_hex(8)],
        )
        return str(result) if result else None

    async def rotate_secret(
        self, watch_id: str, new_sealed: str, grace_s: float, *, seen: str = ""
    ) -> list[SecretEntry] | None:
        """Put a new secret first; the current one keeps signing for *grace_s* seconds.
        With *seen* (:func:`secret_tag` of the secrets the caller was shown), only while
        they are still the watch's: else :class:`StaleRotation`."""
        now = now_ms()
        raw = await self._rotate(
            keys=[c.WATCH_KEY.format(watch_id)],
            args=[new_sealed, now, now + int(grace_s * 1000), seen],
        )
        if raw == "stale":
            raise StaleRotation(watch_id)
        return load_secrets(raw) if raw else None

    async def attempts(self, watch: Watch) -> list[dict[str, Any]]:
        """Every recorded delivery attempt of a watch: the last MAX_ATTEMPTS_KEPT of its
        event and the last MAX_ATTEMPTS_KEPT pings, oldest first."""
        h = await self.redis.hgetall(c.WATCH_KEY.format(watch.id))  # type: ignore[misc]
        event_type = (h.get("ev") or "").split("|", 1)[0] or watch.event_type

        def numbered(prefix: str) -> list[dict[str, Any]]:
            rows = sorted(
                (int(name[len(prefix) :]), raw)
                for name, raw in h.items()
                if name.startswith(prefix) and name[len(prefix) :].isdigit()
            )
            return [attempts.expand(watch.id, event_type, raw) for _, raw in rows]

        # each kind in its own numbers' order, the two merged by time (ISO times sort as
        # they read; at the same time the event's attempt first)
        return list(
            heapq.merge(numbered(RECORD_PREFIX), numbered(PING_PREFIX), key=lambda r: r["at"])
        )

    async def recover(self, tenant: str, since_ms: int, until_ms: int) -> tuple[int, bool]:
        """Put the tenant's watches that became failed in [since_ms, until_ms) back to
        delivering their last event (:func:`relay.store.recovery.recover`): how many, and
        whether more may be left (the call's time ran out; calling again goes on)."""
        return await recovery.recover(self._recover, self._circuits, tenant, since_ms, until_ms)

    async def record_ping(
        self, watch_id: str, record: bytes, tenant: str | None = None, ok: bool = False
    ) -> int | None:
        """Add a ``watch.ping`` attempt to the watch's records, its status untouched; with
        *tenant*, counted in its attempts per minute (*ok*: a 2xx); None: no watch."""
        keys = [c.WATCH_KEY.format(watch_id)]
        args: list[EncodableT] = [record, c.MAX_ATTEMPTS_KEPT]
        if tenant is not None:
            keys.append(c.TENANT_MINUTE_KEY.format(tenant, now_ms() // 60_000))
            args += ["ok" if ok else "fail", c.ATTEMPT_MINUTES_TTL]
        seq = await self._record_ping(keys=keys, args=args)
        return int(seq) if seq else None

    async def tenant_counts(self, tenant: str) -> dict[str, int]:
        """Number of a tenant's watches in each status."""
        raw = await self.redis.hgetall(c.TENANT_COUNTS_KEY.format(tenant))  # type: ignore[misc]
        return {status: int(raw.get(status, 0)) for status in c.WATCH_STATUSES}

    async def counts(self) -> dict[str, int]:
        """Number of watches in each status (kept by the transition scripts)."""
        return counts_of(await self.redis.hgetall(c.WATCH_COUNTS_KEY))  # type: ignore[misc]
