"""The deliverer: sends due events to callbacks, signed, and moves each watch on.

Lanes -- RELAY_DELIVERY_CONCURRENCY coroutines -- send the attempts, one at a time each, taking
jobs from a local queue. The claim loop (a :class:`Pump`) keeps that queue filled: first with
the events this worker's poller just created (offered with their watches and bodies, so
they are claimed without being read back), then with whatever is due in the schedule (retries,
other workers' fan-outs, work of a worker that died). Outcomes are recorded in batches by a
flusher, so the cost per webhook is one HTTP request plus a share of two script calls.

A queued job holds a claim whose lease must outlast its attempt: a lane renews a claim that is
getting old before it sends, and skips a job another worker has taken over meanwhile.

Outcome of an attempt (SPEC.md "Delivery"): any 2xx is success; 410 disables the watch;
everything else (3xx, 4xx, 5xx, timeouts, refused connections, TLS and DNS errors, a callback
the SSRF policy refuses) is retried on RELAY_RETRY_SCHEDULE with +-20 % jitter, and a 429 or
503 with Retry-After waits at least that long (capped at an hour). When the schedule is
exhausted the watch is ``failed``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from yarl import URL

from relay import constants as c
from relay import logs
from relay.domain import events
from relay.domain.clips import Clip
from relay.domain.clock import now_ms
from relay.domain.crypto import SecretBox
from relay.domain.delivery import AttemptResult, DeliveryClaim, NewEvent
from relay.domain.signing import secret_bytes, sign_headers
from relay.domain.watch import Watch
from relay.http.upstream import UpstreamClient, retry_after_seconds
from relay.http.webhook import Target, WebhookClient, WebhookError
from relay.metrics import DELIVERIES, DELIVERY_LATENCY, NOTIFY_LATENCY
from relay.settings import Settings
from relay.store import Store
from relay.tasks import finish, finish_all
from workers.pump import Pump
from workers.upstream_budget import Paused, UpstreamGate

LOG_NAME = "workers.deliverer"
log = logs.get(LOG_NAME)
REFRESH_RETRY_S = 30.0  # a delivery whose clip links could not be refreshed waits this long
OFFERED_BYTES = 32 * 2**20  # event bodies held for claiming without a read-back, at most
LEASE_MARGIN_S = 1.0  # a claim must outlast an attempt by this much, or it is renewed first
CLAIM_AHEAD = 4  # deliveries claimed per lane, at most: the one in flight and three queued
FLUSH_BATCH = 256  # outcomes recorded per script call, at most
FLUSH_EVERY_S = 0.005  # an outcome waits this long for others to be recorded with it


def retry_delay(schedule: Sequence[float], attempt: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after failed attempt number *attempt* (1-based), or
    None when the schedule is exhausted."""
    if attempt > len(schedule):
        return None
    delay = schedule[attempt - 1] * random.uniform(1 - c.JITTER, 1 + c.JITTER)
    if retry_after is not None:
        delay = max(delay, min(retry_after, c.RETRY_AFTER_CAP))
    return delay


@dataclass(slots=True)
class Job:
    """One claimed delivery waiting for a lane."""

    watch: Watch
    body: bytes
    deadline: int  # the claim's lease deadline (ms), its token
    done: Callable[[], None]  # the attempt is over (or skipped): frees the claim's slot


class _Batch:
    """The jobs of one claimed batch: :meth:`wait` returns when a lane has finished each."""

    __slots__ = ("_future", "_left", "_release")

    def __init__(self, size: int, release: Callable[[], None]) -> None:
        self._left = size
        self._release = release
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(self) -> None:
        self._release()
        self._left -= 1
        if self._left == 0 and not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        if self._left:
            await self._future


class Deliverer(Pump[DeliveryClaim]):
    """Claims due deliveries and performs them."""

    schedule = c.DELIVERY_SCHEDULE_KEY
    name = "deliverer"

    def __init__(
        self,
        store: Store,
        client: WebhookClient,
        settings: Settings,
        *,
        box: SecretBox,
        upstream: UpstreamClient,
        gate: UpstreamGate,
    ) -> None:
        # claims run up to three lanes' worth ahead of the lanes: under load a claim's answer
        # takes a few loop turns of milliseconds each to reach them, and none should wait
        lanes = settings.delivery_concurrency
        super().__init__(store, concurrency=CLAIM_AHEAD * lanes, lease_s=settings.lease, batch=512)
        self.lanes = lanes
        self.client = client
        self.settings = settings
        self.box = box
        self.upstream = upstream
        self.gate = gate
        self.sent = 0
        self._jobs: deque[Job] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()  # a parked lane's wake-up
        self._lane_tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._offered: deque[tuple[Watch, bytes]] = deque()
        self._offered_bytes = 0
        self._margin_ms = int((settings.delivery_timeout + LEASE_MARGIN_S) * 1000)
        self._results: list[AttemptResult] = []
        self._lines: list[dict[str, object]] = []  # a log line per attempt, written per flush
        self._flush_now = asyncio.Event()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._key_bytes = lru_cache(maxsize=20_000)(self._open_secret)
        self._target = lru_cache(maxsize=20_000)(self._parse_target)
        self._outcomes = {o: DELIVERIES.labels(o) for o in ("ok", "retry", "failed", "disabled")}

    def start(self) -> None:
        """Start the lanes, claiming and the result flusher."""
        self._lane_tasks = [
            asyncio.create_task(self._lane(), name=f"deliverer-lane-{i}") for i in range(self.lanes)
        ]
        super().start()
        self._flusher = asyncio.create_task(self._flush_loop(), name="deliverer-flush")

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; finish the attempts in flight and those queued (up to *grace_s*);
        hand back the claims of jobs never started; record every outcome."""
        await super().stop(grace_s)
        self._closing = True
        unsent, self._jobs = list(self._jobs), deque()
        for job in unsent:
            job.done()
        self._wake_lanes(len(self._idle))
        await finish_all(self._lane_tasks, 0.5)
        await self._hand_back(unsent)
        if self._flusher is not None:
            self._flush_now.set()
            await finish(self._flusher, 5.0)
        await self._flush()

    def offer(self, created: Sequence[tuple[Watch, NewEvent]], at_ms: int) -> None:
        """Events this worker has just created (at *at_ms*), with their watches: claimed
        from here without reading them back. They are due in the schedule all the same, so
        any worker may take them first; what is offered beyond the memory cap is left to
        the schedule alone."""
        for w, ev in created:
            if self._offered_bytes + len(ev.body) > OFFERED_BYTES:
                break
            w.begin_event(ev, at_ms)
            self._offered.append((w, ev.body))
            self._offered_bytes += len(ev.body)
        self.wake()

    async def claim(self, limit: int) -> Sequence[DeliveryClaim]:
        """Claim deliveries: the offered ones first, then any due in the schedule."""
        if self._offered:
            held = [self._offered.popleft() for _ in range(min(limit, len(self._offered)))]
            self._offered_bytes -= sum(len(body) for _, body in held)
            claimed = await self.store.deliveries.claim_known(held, lease_s=self.lease_s)
            if claimed or self._offered:
                return claimed
        return await self.store.deliveries.claim(limit=limit, lease_s=self.lease_s)

    async def work(self, items: Sequence[DeliveryClaim], release: Callable[[], None]) -> None:
        """Queue a claimed batch for the lanes; return when all of it is done."""
        due: list[tuple[Watch, bytes]] = []
        idle: list[str] = []
        deadline = items[0].deadline_ms if items else 0
        for item in items:
            watch, body = item.watch, item.body
            if watch is None or body is None or watch.status != "delivering":
                idle.append(item.watch_id)  # cancelled, or nothing to send: off the schedule
                release()
            else:
                due.append((watch, body))
        await self.store.deliveries.unschedule(idle)
        due, deadline = await self._refresh_links(due, deadline, release)
        if not due:
            return
        batch = _Batch(len(due), release)
        self._jobs.extend(Job(w, body, deadline, batch.done) for w, body in due)
        self._wake_lanes(len(due))
        await batch.wait()

    def _wake_lanes(self, n: int) -> None:
        while n > 0 and self._idle:
            wake = self._idle.popleft()
            if not wake.done():
                wake.set_result(None)
                n -= 1

    async def _lane(self) -> None:
        """Send queued jobs one after another, until the deliverer closes."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            if not self._jobs:
                parked = loop.create_future()
                self._idle.append(parked)
                await parked
                continue
            job = self._jobs.popleft()
            try:
                if job.deadline - now_ms() < self._margin_ms and not await self._renew(job):
                    continue  # taken over by another worker: it sends this one
                await self._attempt(job.watch, job.body)
            except Exception:  # the claim stays leased: the delivery comes back after it
                log.exception("delivery failed", watch_id=job.watch.id)
            finally:
                job.done()

    async def _renew(self, job: Job) -> bool:
        """Extend a job's claim before an attempt could outlive it; False when it is no
        longer ours."""
        ours, deadline = await self.store.deliveries.extend(
            [job.watch.id], job.deadline, self.lease_s
        )
        job.deadline = deadline
        return job.watch.id in ours

    async def _hand_back(self, jobs: Sequence[Job]) -> None:
        """Make the claims of jobs that were never started due again at once, for the next
        worker (instead of after their lease)."""
        by_deadline: dict[int, list[str]] = {}
        for job in jobs:
            by_deadline.setdefault(job.deadline, []).append(job.watch.id)
        try:
            for deadline, members in by_deadline.items():
                await self.store.deliveries.extend(members, deadline, 0)
        except Exception as exc:  # Redis away: the leases run out by themselves
            log.warning("handing back claims failed", error=type(exc).__name__)

    async def _refresh_links(
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

    def _open_secret(self, sealed: str) -> bytes:
        return secret_bytes(self.box.open(sealed))

    def _parse_target(self, callback_url: str) -> Target:
        """The callback prepared for sending (its addresses are checked by the client)."""
        return Target.of(URL(callback_url))

    async def _attempt(self, w: Watch, body: bytes) -> None:
        attempt = w.attempt + 1
        started = time.time()
        code: int | None = None
        error: str | None = None
        answer = ""
        retry_after: float | None = None
        try:
            target = self._target(w.callback_url)
            keys = [self._key_bytes(s.sealed) for s in w.signing_secrets(int(started * 1000))]
            headers = sign_headers(keys, w.event_id, int(started), body)
            reply = await self.client.post(target, headers.items(), body)
            code = reply.status
            answer = reply.body.decode(errors="replace")
            if code in (429, 503):
                retry_after = retry_after_seconds(reply.retry_after)
        except TimeoutError:
            error = "timeout"
        except WebhookError as exc:
            error = str(exc)
        except (OSError, ValueError) as exc:  # e.g. a callback URL that cannot be sent
            error = f"{type(exc).__name__}: {exc}"[:200]
        latency = time.time() - started
        DELIVERY_LATENCY.observe(latency)
        record = {
            "eventId": w.event_id,
            "eventType": w.event_type,
            "attempt": attempt,
            "at": events.iso_ms(int(started * 1000)),
            "statusCode": code,
            "error": error,
            "latencyMs": round(latency * 1000, 2),
            "responseBody": answer or None,
        }
        self._record(w, attempt, code, error, retry_after, record)

    def _record(
        self,
        w: Watch,
        attempt: int,
        code: int | None,
        error: str | None,
        retry_after: float | None,
        record: dict[str, object],
    ) -> None:
        last_error = ""
        next_ms = 0
        if code is not None and 200 <= code < 300:
            outcome = "ok"
            if w.final_ms and w.delivered_ms is None:  # first success of this event
                NOTIFY_LATENCY.observe(max(now_ms() - w.final_ms, 0) / 1000)
        elif code == 410:
            outcome, last_error = "disabled", "HTTP 410 Gone: watch disabled"
        else:
            last_error = error or f"HTTP {code}"
            delay = retry_delay(self.settings.retry_schedule, attempt, retry_after)
            if delay is None:
                outcome = "failed"
            else:
                outcome, next_ms = "retry", now_ms() + int(delay * 1000)
        self._outcomes[outcome].inc()
        self.sent += 1
        self._results.append(
            AttemptResult(w.id, w.event_id, outcome, record, attempt, next_ms, last_error)
        )
        self._lines.append(
            {
                "watch_id": w.id,
                "video_id": w.video_id,
                "event_id": w.event_id,
                "event_type": w.event_type,
                "attempt": attempt,
                "status_code": code,
                "error": error,
                "outcome": outcome,
                "latency_ms": record["latencyMs"],
            }
        )
        self._flush_soon()

    async def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            await self._flush_now.wait()
            self._flush_now.clear()
            await self._flush()

    def _flush_soon(self) -> None:
        """Have the flusher record what is pending: at once for a full batch, else within
        FLUSH_EVERY_S (a timer, armed only while something waits)."""
        if len(self._results) >= FLUSH_BATCH:
            self._flush_now.set()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                FLUSH_EVERY_S, self._flush_now.set
            )

    async def _flush(self) -> None:
        """Record the attempts made since the last flush (one script call), after logging
        one line for each."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._lines:
            lines, self._lines = self._lines, []
            logs.lines(LOG_NAME, "delivery attempt", lines)
        if not self._results:
            return
        batch, self._results = self._results, []
        try:
            await self.store.deliveries.settle(batch)
        except Exception as exc:
            # Redis away: keep the outcomes and try again (the claims' leases are long)
            log.warning("recording attempts failed", error=type(exc).__name__, pending=len(batch))
            self._results = batch + self._results
            await asyncio.sleep(0.5)
            self._flush_now.set()
