"""The relay's state in Redis: watches, videos, schedules, events and attempt records.

The API and the worker share this module; neither touches Redis keys directly. Every
transition that other replicas may race with runs as one Lua script (:mod:`relay.store.scripts`).

Layout (see :mod:`relay.constants`): a watch is a hash; a video being watched is a hash plus
a set of the watches still waiting on it; two sorted sets schedule the work -- video ids by
next poll time and watch ids by next delivery attempt. A claimed member's score is pushed to
a lease deadline, so work held by a worker that dies becomes due again by itself.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from arq.constants import job_key_prefix as ARQ_JOB_PREFIX
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.typing import EncodableT

from relay import constants as c
from relay.store import scripts
from relay.store.serializer import dumps as arq_dumps

EXPIRE_JOB = "expire_watch"
SCRIPT_BATCH = 1000  # items per script call, at most (Lua's unpack limit, see relay.store.scripts)


def now_ms() -> int:
    """Wall-clock time in integer milliseconds (the unit of every stored time)."""
    return int(time.time() * 1000)


@dataclass(slots=True)
class SecretEntry:
    """One signing secret of a watch, sealed; ``expires_ms`` 0 means current."""

    sealed: str = field(repr=False)
    expires_ms: int = 0


@dataclass(slots=True)
class Watch:
    """A watch as stored. Field names follow the API's camelCase where they are exposed."""

    id: str
    tenant: str
    video_id: str
    callback_url: str
    min_score: float = 0.0
    max_score: float | None = None
    favorited_only: bool = False
    sort_by: str = "score"
    sort_order: str = "desc"
    metadata: dict[str, Any] = field(default_factory=dict)
    secrets: list[SecretEntry] = field(default_factory=list, repr=False)
    status: str = "watching"
    video_status: str | None = None
    video_progress: float | None = None
    last_event_type: str | None = None
    created_ms: int = 0
    updated_ms: int = 0
    delivered_ms: int | None = None
    last_error: str | None = None
    event_id: str = ""
    event_type: str = ""
    attempt: int = 0
    final_ms: int | None = None
    clips_ms: int | None = None

    def spec_json(self) -> bytes:
        """The registration, which never changes: one field of the watch hash."""
        return orjson.dumps(
            {
                "id": self.id,
                "tenant": self.tenant,
                "videoId": self.video_id,
                "callbackUrl": self.callback_url,
                "minScore": self.min_score,
                "maxScore": self.max_score,
                "favoritedOnly": self.favorited_only,
                "sortBy": self.sort_by,
                "sortOrder": self.sort_order,
                "metadata": self.metadata,
                "createdAt": self.created_ms,
            }
        )

    @classmethod
    def from_spec(cls, spec_json: str, status: str) -> Watch:
        """A watch from its registration (the ``spec`` field) and status alone: what making
        its event needs."""
        spec = orjson.loads(spec_json)
        created = spec["createdAt"]
        return cls(
            id=spec["id"],
            tenant=spec["tenant"],
            video_id=spec["videoId"],
            callback_url=spec["callbackUrl"],
            min_score=spec["minScore"],
            max_score=spec["maxScore"],
            favorited_only=spec["favoritedOnly"],
            sort_by=spec["sortBy"],
            sort_order=spec["sortOrder"],
            metadata=spec["metadata"],
            status=status,
            created_ms=created,
            updated_ms=created,
        )

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Watch:
        """Rebuild a watch from its hash (as returned by HGETALL with decoded responses).

        The hash holds the registration as one JSON field (``spec``) and each field that
        changes on its own (status, the current event, ...); absent ones are unset.
        """
        w = cls.from_spec(h["spec"], h["status"])
        w.secrets = _load_secrets(h.get("secrets", "[]"))
        w.video_status = h.get("videoStatus") or None
        w.video_progress = _opt_float(h.get("videoProgress", ""))
        w.last_event_type = h.get("lastEventType") or None
        w.updated_ms = int(h.get("updatedAt") or w.created_ms)
        w.delivered_ms = _opt_int(h.get("deliveredAt", ""))
        w.last_error = h.get("lastError") or None
        w.event_id = h.get("eventId", "")
        w.event_type = h.get("eventType", "")
        w.attempt = int(h.get("attempt") or 0)
        w.final_ms = _opt_int(h.get("finalAt", ""))
        w.clips_ms = _opt_int(h.get("clipsAt", ""))
        return w

    def begin_event(self, event: NewEvent, at_ms: int) -> None:
        """Take on *event* as FINALIZE records it, for a watch held in memory (a fan-out
        hands the watches it just gave events to the deliverer without reading them back)."""
        self.status = "delivering"
        self.event_id = event.event_id
        self.event_type = event.event_type
        self.attempt = 0
        self.updated_ms = self.final_ms = at_ms
        self.clips_ms = event.clips_ms
        if event.video_status:
            self.video_status = event.video_status

    def signing_secrets(self, at_ms: int) -> list[SecretEntry]:
        """The secrets that sign at *at_ms*: the current one and any still in its grace."""
        return [s for s in self.secrets if s.expires_ms == 0 or s.expires_ms > at_ms]


def _opt_float(raw: str) -> float | None:
    return float(raw) if raw else None


def _opt_int(raw: str) -> int | None:
    return int(raw) if raw else None


def _dump_secrets(entries: Sequence[SecretEntry]) -> str:
    return orjson.dumps([[s.sealed, s.expires_ms] for s in entries]).decode()


def _load_secrets(raw: str) -> list[SecretEntry]:
    return [SecretEntry(str(sealed), int(exp)) for sealed, exp in orjson.loads(raw or "[]")]


@dataclass(slots=True)
class VideoState:
    """Poll state of one upstream video, shared by all the watches on it."""

    video_id: str
    phase: str = "poll"  # poll: status checks; render: completed, waiting for clips
    status: str = ""
    progress: float | None = None
    errors: int = 0  # consecutive failed polls (5xx, timeouts, auth), for backoff
    not_found: int = 0  # consecutive 404s
    auth_logged_ms: int = 0
    completed_ms: int = 0  # when `completed` was first seen
    loaded: dict[str, str] = field(default_factory=dict, repr=False)  # the hash as read

    @classmethod
    def from_hash(cls, video_id: str, h: dict[str, str]) -> VideoState:
        """Rebuild from a hash; an empty hash is a video seen for the first time."""
        return cls(
            video_id=video_id,
            phase=h.get("phase") or "poll",
            status=h.get("status", ""),
            progress=_opt_float(h.get("progress", "")),
            errors=int(h.get("errors") or 0),
            not_found=int(h.get("notFound") or 0),
            auth_logged_ms=int(h.get("authLoggedAt") or 0),
            completed_ms=int(h.get("completedAt") or 0),
            loaded=h,
        )

    def to_hash(self) -> dict[str, str]:
        """Hash fields to write."""
        return {
            "phase": self.phase,
            "status": self.status,
            "progress": "" if self.progress is None else repr(self.progress),
            "errors": str(self.errors),
            "notFound": str(self.not_found),
            "authLoggedAt": str(self.auth_logged_ms),
            "completedAt": str(self.completed_ms),
        }


@dataclass(slots=True)
class NewEvent:
    """A final event for one watch, ready to be scheduled (one per watch of a fan-out)."""

    watch_id: str
    event_id: str
    event_type: str
    body: bytes
    video_status: str = ""
    clips_ms: int | None = None


DeliveryClaim = tuple[str, Watch | None, bytes | None, int]
"""A claimed delivery: watch id, the watch (None: gone), its event's body (None: no event),
and the claim's lease deadline in ms -- the claim's token (:meth:`Store.extend_claims`)."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """The outcome of one delivery attempt, to be recorded."""

    watch_id: str
    event_id: str
    outcome: str  # ok | retry | failed | disabled
    record: dict[str, Any]
    attempt: int
    next_due_ms: int = 0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing."""

    watches: list[Watch]
    next_cursor: str | None


class CursorError(ValueError):
    """A listing cursor that this relay did not hand out."""


def encode_cursor(score: int, member: str) -> str:
    """An opaque cursor pointing just after (*score*, *member*) in newest-first order."""
    return base64.urlsafe_b64encode(f"{score}:{member}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Inverse of :func:`encode_cursor`; :class:`CursorError` when malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, member = raw.split(":", 1)
        if not member.startswith("wat_"):
            raise ValueError
        return int(score), member
    except (ValueError, UnicodeDecodeError):
        raise CursorError("not a cursor returned by this API") from None


class Store:
    """Redis access for the relay. One instance per process, shared by all tasks."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._create = redis.register_script(scripts.CREATE_WATCH)
        self._claim_deliveries = redis.register_script(scripts.CLAIM_DELIVERIES)
        self._claim_known = redis.register_script(scripts.CLAIM_KNOWN)
        self._claim_videos = redis.register_script(scripts.CLAIM_VIDEOS)
        self._extend = redis.register_script(scripts.EXTEND_CLAIMS)
        self._specs = redis.register_script(scripts.WATCH_SPECS)
        self._pause = redis.register_script(scripts.PAUSE_UPSTREAM)
        self._finalize = redis.register_script(scripts.FINALIZE)
        self._release_video = redis.register_script(scripts.RELEASE_VIDEO)
        self._settle = redis.register_script(scripts.SETTLE)
        self._cancel = redis.register_script(scripts.CANCEL)
        self._redeliver = redis.register_script(scripts.REDELIVER)
        self._rotate = redis.register_script(scripts.ROTATE_KEYS)
        self._tokens = redis.register_script(scripts.UPSTREAM_TOKENS)

    # --- watches: API side --------------------------------------------------------------

    async def create_watch(self, watch: Watch, *, expire_after_s: float) -> None:
        """Store a new watch, index it, schedule its video's poll and its expiry timer.

        One script, so a watch is either fully registered or not at all, in one round trip.
        The expiry timer is an arq job written in arq's own format (and serializer).
        """
        wid = watch.id
        job_id = f"expire:{wid}"
        defer_ms = int(expire_after_s * 1000)
        job = serialize_job(EXPIRE_JOB, (wid,), {}, 1, watch.created_ms, serializer=arq_dumps)
        await self._create(
            keys=[
                c.WATCH_KEY.format(wid),
                c.TENANT_INDEX_KEY.format(watch.tenant),
                c.TENANT_VIDEO_INDEX_KEY.format(watch.tenant, watch.video_id),
                c.VIDEO_WATCHES_KEY.format(watch.video_id),
                c.POLL_SCHEDULE_KEY,
                ARQ_JOB_PREFIX + job_id,
                c.ARQ_QUEUE,
                c.WATCH_COUNTS_KEY,
            ],
            args=[
                wid,
                watch.spec_json(),
                _dump_secrets(watch.secrets),
                watch.created_ms,
                watch.video_id,
                job,
                # arq keeps a job's data for a day past its run time (arq's `expires`)
                defer_ms + 86_400_000,
                watch.created_ms + defer_ms,
                job_id,
            ],
        )

    async def get_watch(self, watch_id: str) -> Watch | None:
        """The watch, or None."""
        h = await self.redis.hgetall(c.WATCH_KEY.format(watch_id))  # type: ignore[misc]
        return Watch.from_hash(h) if h else None

    async def watch_specs(self, watch_ids: Sequence[str]) -> list[Watch]:
        """The registrations and statuses of many watches (no secrets, no delivery state),
        in one script reply: what building their events needs."""
        if not watch_ids:
            return []
        rows = await self._specs(keys=[], args=[c.WATCH_PREFIX, *watch_ids])
        return [Watch.from_spec(spec, status) for spec, status in rows if spec is not None]

    async def get_watches(self, watch_ids: Sequence[str]) -> list[Watch | None]:
        """Several watches in one round trip, in the order asked."""
        if not watch_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for wid in watch_ids:
            pipe.hgetall(c.WATCH_KEY.format(wid))
        rows = await pipe.execute()
        return [Watch.from_hash(h) if h else None for h in rows]

    async def list_watches(
        self,
        tenant: str,
        *,
        video_id: str | None,
        status: str | None,
        limit: int,
        cursor: str | None,
        scan_cap: int = 1000,
    ) -> Page:
        """A tenant's watches, newest first, optionally filtered, one page at a time."""
        key = (
            c.TENANT_VIDEO_INDEX_KEY.format(tenant, video_id)
            if video_id
            else c.TENANT_INDEX_KEY.format(tenant)
        )
        last = decode_cursor(cursor) if cursor else None
        chunk = max(limit * 2, 20)
        found: list[Watch] = []
        scanned = 0
        exhausted = False
        while len(found) < limit and scanned < scan_cap and not exhausted:
            batch = await self._index_after(key, last, chunk)
            exhausted = len(batch) < chunk
            watches = await self.get_watches([m for m, _ in batch])
            for (member, score), w in zip(batch, watches, strict=True):
                scanned += 1
                last = (score, member)
                if w is not None and (status is None or w.status == status):
                    found.append(w)
                    if len(found) == limit:
                        exhausted = exhausted and (member, score) == batch[-1]
                        break
        next_cursor = None
        if last is not None and not exhausted and await self._index_after(key, last, 1):
            next_cursor = encode_cursor(*last)
        return Page(found, next_cursor)

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
        same = await self.redis.zrangebyscore(key, score, score)
        out = sorted((m for m in same if m < member), reverse=True)[:count]
        rows = [(m, score) for m in out]
        if len(rows) < count:
            more = await self.redis.zrevrangebyscore(
                key, f"({score}", "-inf", start=0, num=count - len(rows), withscores=True
            )
            rows.extend((m, int(s)) for m, s in more)
        return rows

    async def cancel_watch(self, watch: Watch) -> None:
        """Cancel: nothing is delivered afterwards (an attempt already on the wire may land)."""
        await self._cancel(
            keys=[
                c.WATCH_KEY.format(watch.id),
                c.DELIVERY_SCHEDULE_KEY,
                c.VIDEO_WATCHES_KEY.format(watch.video_id),
                c.WATCH_COUNTS_KEY,
            ],
            args=[watch.id, now_ms()],
        )

    async def redeliver(self, watch_id: str) -> str | None:
        """Start a new attempt series for the watch's last event. Returns 'ok' or the
        status that has nothing to redeliver (None: no such watch)."""
        result = await self._redeliver(
            keys=[c.WATCH_KEY.format(watch_id), c.DELIVERY_SCHEDULE_KEY, c.WATCH_COUNTS_KEY],
            args=[watch_id, now_ms()],
        )
        return str(result) if result else None

    async def rotate_secret(
        self, watch_id: str, new_sealed: str, grace_s: float
    ) -> list[SecretEntry] | None:
        """Put a new secret first; the current one keeps signing for *grace_s* seconds."""
        now = now_ms()
        raw = await self._rotate(
            keys=[c.WATCH_KEY.format(watch_id)], args=[new_sealed, now, now + int(grace_s * 1000)]
        )
        return _load_secrets(raw) if raw else None

    async def attempts(self, watch_id: str) -> list[dict[str, Any]]:
        """Every recorded delivery attempt of a watch, oldest first."""
        rows = await self.redis.lrange(c.WATCH_ATTEMPTS_KEY.format(watch_id), 0, -1)  # type: ignore[misc]
        return [orjson.loads(r) for r in rows]

    async def watch_counts(self) -> dict[str, int]:
        """Number of watches in each status (kept by the transition scripts)."""
        raw = await self.redis.hgetall(c.WATCH_COUNTS_KEY)  # type: ignore[misc]
        return {status: int(raw.get(status, 0)) for status in c.WATCH_STATUSES}

    # --- idempotency -------------------------------------------------------------------

    async def idempotency_reserve(
        self, tenant: str, key_hash: str, fingerprint: str, watch_id: str
    ) -> dict[str, str] | None:
        """Reserve an Idempotency-Key for a new watch. None when reserved; otherwise the
        earlier reservation (``fp`` and ``watchId``)."""
        rkey = c.IDEMPOTENCY_KEY.format(tenant, key_hash)
        value = orjson.dumps({"fp": fingerprint, "watchId": watch_id})
        if await self.redis.set(rkey, value, nx=True, ex=c.IDEMPOTENCY_TTL):
            return None
        raw = await self.redis.get(rkey)
        if raw is None:  # expired in between: reserve again
            return await self.idempotency_reserve(tenant, key_hash, fingerprint, watch_id)
        earlier: dict[str, str] = orjson.loads(raw)
        return earlier

    async def idempotency_release(self, tenant: str, key_hash: str) -> None:
        """Drop a reservation whose watch could not be created."""
        await self.redis.delete(c.IDEMPOTENCY_KEY.format(tenant, key_hash))

    # --- rate limit --------------------------------------------------------------------

    async def rate_add(self, second: int, counts: dict[str, int]) -> dict[str, int]:
        """Add API requests per key id to the counters of *second*; return the totals."""
        pipe = self.redis.pipeline(transaction=False)
        for key_id, n in counts.items():
            key = c.RATE_LIMIT_KEY.format(key_id, second)
            pipe.incrby(key, n)
            pipe.pexpire(key, 2000)
        replies = await pipe.execute()
        return {key_id: int(replies[2 * i]) for i, key_id in enumerate(counts)}

    # --- schedules: worker side --------------------------------------------------------

    async def claim_deliveries(self, *, limit: int, lease_s: float) -> list[DeliveryClaim]:
        """Claim due deliveries for *lease_s* seconds, each with its watch and event body."""
        now = now_ms()
        deadline = now + int(lease_s * 1000)
        rows = await self._claim_deliveries(
            keys=[c.DELIVERY_SCHEDULE_KEY],
            args=[now, deadline, limit, c.WATCH_PREFIX, c.EVENT_PREFIX],
        )
        out: list[DeliveryClaim] = []
        for member, flat, body in rows:
            h = dict(zip(flat[::2], flat[1::2], strict=True))
            watch = Watch.from_hash(h) if h else None
            out.append((member, watch, body.encode() if body else None, deadline))
        return out

    async def claim_known(
        self, held: Sequence[tuple[Watch, bytes]], *, lease_s: float
    ) -> list[DeliveryClaim]:
        """Claim deliveries whose watch and event body the caller holds already (each watch
        after :meth:`Watch.begin_event`), exactly as :meth:`claim_deliveries` would claim
        them -- due, and still delivering that event -- reading back only the attempt count
        and the secrets. What is not claimed is somebody else's, or no longer due."""
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
                w.secrets = _load_secrets(got[1])
                out.append((w.id, w, body, deadline))
        return out

    async def extend_claims(
        self, schedule: str, members: Sequence[str], deadline_ms: int, lease_s: float
    ) -> tuple[set[str], int]:
        """Extend the claims on *members* made with *deadline_ms* that nobody has taken
        over since, to *lease_s* from now: returns those (the others belong to another
        worker now) and their new deadline, the claims' new token. With *lease_s* 0 the
        claims are handed back: due at once, for any worker."""
        new_deadline = now_ms() + int(lease_s * 1000)
        if not members:
            return set(), new_deadline
        ours = await self._extend(keys=[schedule], args=[deadline_ms, new_deadline, *members])
        return {str(m) for m in ours}, new_deadline

    async def claim_videos(
        self, *, limit: int, lease_s: float
    ) -> list[tuple[VideoState, list[str]]]:
        """Claim due videos for *lease_s* seconds: (poll state, waiting watch ids) each."""
        now = now_ms()
        rows = await self._claim_videos(
            keys=[c.POLL_SCHEDULE_KEY],
            args=[now, now + int(lease_s * 1000), limit, c.VIDEO_PREFIX],
        )
        return [
            (VideoState.from_hash(vid, dict(zip(flat[::2], flat[1::2], strict=True))), sorted(ids))
            for vid, flat, ids in rows
        ]

    async def next_due_ms(self, schedule: str) -> int | None:
        """Score of the earliest member of *schedule*, or None when it is empty."""
        rows = await self.redis.zrange(schedule, 0, 0, withscores=True)
        return int(rows[0][1]) if rows else None

    async def save_videos(
        self,
        updates: Iterable[tuple[VideoState, int | None, Sequence[str], bool]],
    ) -> None:
        """Write poll results in one round trip.

        Each update is (state, next poll ms or None to leave the schedule alone, watch ids,
        whether the status/progress the watches show changed).
        """
        pipe = self.redis.pipeline(transaction=False)
        now = str(now_ms())
        n = 0
        for state, next_ms, watch_ids, changed in updates:
            n += 1
            fields = state.to_hash()
            if fields != state.loaded:  # most polls change nothing but the schedule
                pipe.hset(c.VIDEO_KEY.format(state.video_id), mapping=fields)
            if next_ms is not None:
                pipe.zadd(c.POLL_SCHEDULE_KEY, {state.video_id: next_ms}, xx=True)
            if changed:
                shown = {
                    "videoStatus": state.status,
                    "videoProgress": "" if state.progress is None else repr(state.progress),
                    "updatedAt": now,
                }
                for wid in watch_ids:
                    pipe.hset(c.WATCH_KEY.format(wid), mapping=shown)
        if n:
            await pipe.execute()

    async def drop_video(self, video_id: str) -> None:
        """Stop polling a video nobody waits on any more (unless one registered just now)."""
        await self._release_video(
            keys=[
                c.VIDEO_WATCHES_KEY.format(video_id),
                c.POLL_SCHEDULE_KEY,
                c.VIDEO_KEY.format(video_id),
            ],
            args=[video_id, now_ms()],
        )

    async def finalize(
        self, video_id: str, events: Sequence[NewEvent], *, release_ids: Sequence[str] | None
    ) -> tuple[list[NewEvent], int]:
        """Create final events for watches of one video and schedule their delivery.

        The events of one call share their type, video status and clips time. Idempotent:
        a watch that already has its event keeps it. With *release_ids* (the watches that
        were considered), the video stops being polled unless a watch registered meanwhile.
        Returns the events created and the time they were recorded (ms).
        """
        now = now_ms()
        vkey = c.VIDEO_WATCHES_KEY.format(video_id)
        created: list[NewEvent] = []
        if len(events) > SCRIPT_BATCH:
            raise ValueError(f"at most {SCRIPT_BATCH} events per finalize call")
        if events:
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
            # (two script calls rather than one pipeline: a pipeline of scripts costs an
            # extra SCRIPT EXISTS round trip, and the two need not be atomic together)
            made = await self._finalize(
                keys=[c.DELIVERY_SCHEDULE_KEY, vkey, c.WATCH_COUNTS_KEY], args=args
            )
            created = [events[i - 1] for i in made]
        if release_ids is not None:
            await self._release_video(
                keys=[vkey, c.POLL_SCHEDULE_KEY, c.VIDEO_KEY.format(video_id)],
                args=[video_id, now, *release_ids],
            )
        return created, now

    # --- deliveries --------------------------------------------------------------------

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

    async def replace_event_bodies(
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

    async def expire(self, watch_id: str, body_for: Any) -> bool:
        """Give a still-watching watch its ``watch.expired`` event; False if it had one."""
        watch = await self.get_watch(watch_id)
        if watch is None or watch.status != "watching" or watch.event_id:
            return False
        event: NewEvent = body_for(watch)
        created, _ = await self.finalize(watch.video_id, [event], release_ids=None)
        return bool(created)

    # --- upstream budget ---------------------------------------------------------------

    async def upstream_tokens(self, want: int, rps: float) -> int:
        """Take up to *want* upstream requests from this second's budget, shared by every
        worker. Returns the number granted, or minus the milliseconds left of a pause."""
        granted = await self._tokens(
            keys=[c.UPSTREAM_RATE_KEY.format(""), c.UPSTREAM_PAUSE_KEY],
            args=[max(int(rps), 1), want, now_ms()],
        )
        return int(granted)

    async def pause_upstream(self, until_ms: int) -> None:
        """Pause all workers' upstream requests until *until_ms* (keeps the later pause)."""
        await self._pause(keys=[c.UPSTREAM_PAUSE_KEY], args=[until_ms, now_ms()])
