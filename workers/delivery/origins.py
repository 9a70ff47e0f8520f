"""Fair lanes: claimed jobs queued per callback origin, taken round robin over the origins
that have room (issue 15 item 1, SPEC "Delivery": one receiver's slowness never delays
another's deliveries).

- at most ``cap`` (RELAY_ORIGIN_CONCURRENCY) jobs of one origin -- (scheme, host, port) --
  are taken at once; the others wait in that origin's queue *without holding a lane*;
- :meth:`OriginQueues.take` gives the next job of the next origin in a ring of the origins
  that have a queued job and room: round robin over origins, not first come, so a backlog of
  10,000 jobs for one origin does not delay the one job of another;
- a lane that finds nothing to take parks (:attr:`OriginQueues.idle`) and is woken when a
  job is queued or an origin gets room back;
- :meth:`OriginQueues.overflow` picks the queued jobs that would not start soon -- their
  origin is full and slow (an estimate: the mean duration of its recent attempts, or how long
  its attempts on the wire have run, whichever is longer) -- so that the claimer hands their
  claims back to the schedule, due when the origin is expected to have room, instead of
  holding them (and its claim slots) while healthy origins' work waits unclaimed;
- :meth:`OriginQueues.plan` does the same for a fan-out's events before they exist: those
  of an origin that would not start them soon are made due when it is expected to have
  room, never claimed -- so a fan-out of 10,000 events to a slow receiver costs this worker
  nothing until they are due, and 20 events to a healthy one beside them go at once.

By Little's law an origin held at ``cap`` attempts of ``est`` seconds each takes
``cap / est`` jobs a second, so the job ``p`` places back starts about ``(p // cap) * est``
from now: a fast origin (milliseconds) keeps thousands ahead, a slow one a wave or two, and
its backlog comes back a wave at a time, as its room does (simulated in
tests/test_origins.py for attempts of 0.3 to 10 s and up to 8,000 jobs: the origin's lanes
busy 93-99 % of the time, 80-86 % when attempts vary by +/- 30 %; 18-48 % before).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Generic

from relay.domain.origin import Origin, origin_tag
from workers.delivery.origin_state import J, OriginState

EWMA = 0.2  # weight of an attempt's duration in its origin's running mean
MIN_DEFER_S = 0.5  # a job handed back is due again after this long at least
MAX_DEFER_S = 300.0  # ... and at most this long
PROMISE_S = 0.5  # events a plan let a fan-out claim count against their origin this long
IDLE_FORGET_S = 120.0  # an idle origin's estimate is forgotten after this long
SLOW_FACTOR = 8.0  # slow: this many times the worker's typical attempt, or more
UNANSWERED_WAVES = 2  # waves (of cap events) an origin gets in a fan-out before it answers
SPREAD = 0.5  # a wave handed back comes back over this share of an attempt, not at once
UNSEEN_KEPT = 256  # promises to origins not queued to yet are swept past this many
TYPICAL_OF = 256  # the typical attempt: the median of this many recent ones


class OriginQueues(Generic[J]):
    """Queued jobs per origin; lanes :meth:`take` them fairly, at most *cap* per origin."""

    def __init__(self, cap: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = cap
        self.clock = clock
        # lanes short (set by the Deliverer while it has replaced lanes): see take()
        self.stall_s: float | None = None
        self.probe_cap = 1  # probes in flight at once, at most, while lanes are short
        self.probes = 0
        self._parked: deque[OriginState[J]] = deque()  # origins waiting for a probe slot
        self.queued = 0
        self.idle: deque[asyncio.Future[None]] = deque()  # parked lanes' wake-ups
        self._origins: dict[Origin, OriginState[J]] = {}
        self._by_tag: dict[str, OriginState[J]] = {}  # the same origins by origin_tag
        self._recent: deque[float] = deque(maxlen=TYPICAL_OF)  # attempts' durations (s)
        self._typical = (0.0, -1.0)  # (median of _recent, when computed)
        self._ring: deque[OriginState[J]] = deque()
        # events a plan let a fan-out claim for origins not queued to yet: tag -> [count, when]
        self._unseen: dict[str, list[float]] = {}
        self._unseen_swept = float("-inf")

    def __len__(self) -> int:
        return self.queued

    def __iter__(self) -> Iterator[J]:
        for o in self._origins.values():
            yield from o.jobs

    def inflight(self, origin: Origin) -> int:
        """Jobs of *origin* taken and not finished."""
        o = self._origins.get(origin)
        return o.inflight if o is not None else 0

    def waiting(self, origin: Origin) -> int:
        """Jobs of *origin* queued."""
        o = self._origins.get(origin)
        return len(o.jobs) if o is not None else 0

    def put(self, job: J) -> None:
        """Queue *job* behind the others of its origin; wake a parked lane if it can run."""
        o = self._origins.get(job.origin)
        if o is None:
            o = self._origins[job.origin] = OriginState(job.origin)
            tag = origin_tag(job.origin)
            self._by_tag[tag] = o
            unseen = self._unseen.pop(tag, None)
            if unseen is not None:
                o.promised, o.promised_at = int(unseen[0]), unseen[1]
        if o.promised:
            o.promised -= 1
        o.jobs.append(job)
        o.used = self.clock()
        self.queued += 1
        if not o.ready and o.inflight < self.cap:
            o.ready = True
            self._ring.append(o)
            self.wake(1)

    def short(self, stall_s: float | None, probes: int = 1) -> None:
        """Lanes are short (*stall_s* set) or no longer (None): while they are, an origin
        that is not answering -- it has not answered yet, its last attempt got no answer,
        or its oldest attempt on the wire has run *stall_s* with no answer since -- gets a
        new attempt only when it has none in flight, as a probe (one never tried first),
        *probes* of them at most in flight at once, and holds one queued job at most
        (:meth:`overflow`): the lanes and the claim slots go to the origins that answer."""
        was, self.stall_s, self.probe_cap = self.stall_s, stall_s, max(probes, 1)
        if stall_s is None and was is not None:  # every origin passed over goes again
            self._unpark(len(self._parked))
            for o in self._origins.values():
                if o.jobs and not o.ready and o.inflight < self.cap:
                    o.ready = True
                    self._ring.append(o)
                    self.wake(1)

    def _answering(self, o: OriginState[J], stall_s: float) -> bool:
        """It answered last, and none of its attempts on the wire has run *stall_s* -- or
        one answered since the oldest of them went out (one hung attempt does not freeze an
        origin that answers the others)."""
        if not o.answered:
            return False
        if not o.starts:
            return True
        oldest = o.starts[0]
        return self.clock() - oldest <= stall_s or o.answered_at > oldest

    def _unpark(self, n: int) -> None:
        """Put up to *n* origins that waited for a probe slot back in the ring."""
        while n > 0 and self._parked:
            o = self._parked.popleft()
            n -= 1
            self._ring.append(o)  # (still `ready`: nothing else put it in the ring)
            self.wake(1)

    def take(self) -> J | None:
        """The next job of the next origin that has room (round robin), or None."""
        ring = self._ring
        stall_s = self.stall_s
        while ring:
            o = ring.popleft()
            o.ready = False
            if not o.jobs or o.inflight >= self.cap:
                continue
            probe = stall_s is not None and not self._answering(o, stall_s)
            if probe:
                if o.inflight:
                    continue  # (back in the ring when an attempt of it ends: finish)
                if self.probes >= self.probe_cap:
                    o.ready = True  # (parked: back in the ring when a probe slot frees)
                    if o.tried:
                        self._parked.append(o)
                    else:  # (never tried -- a receiver new to this worker -- goes first)
                        self._parked.appendleft(o)
                    continue
                o.probing = True
                self.probes += 1
            job = o.jobs.popleft()
            self.queued -= 1
            o.inflight += 1
            if o.jobs and o.inflight < self.cap:
                o.ready = True
                ring.append(o)
            if ring:  # more can run: the next parked lane takes it (a chain of wake-ups)
                self.wake(1)
            return job
        return None

    def sending(self, origin: Origin) -> float | None:
        """A job of *origin* taken earlier goes on the wire now (its attempt starts): when,
        to give back to :meth:`finish`."""
        o = self._origins.get(origin)
        if o is None:
            return None
        now = self.clock()
        if o.sending == 0:
            o.busy_since = now
        o.sending += 1
        o.starts.append(now)
        return now

    def finish(
        self,
        origin: Origin,
        seconds: float | None,
        *,
        sent: bool | None = None,
        started: float | None = None,
        answered: bool | None = None,
    ) -> None:
        """A job of *origin* taken earlier is over, after an attempt of *seconds* (None: no
        attempt was made, e.g. its claim was gone or its circuit open, or it failed before
        an answer). *sent*: it went on the wire (:meth:`sending`, which said when:
        *started*); by default, when it took *seconds*. *answered*: whether the receiver
        answered it (None: no attempt, nothing learnt)."""
        o = self._origins.get(origin)
        if o is None:
            return
        o.inflight -= 1
        if answered is not None:
            o.answered, o.tried = answered, True
            if answered:
                o.answered_at = self.clock()
        if o.probing:
            o.probing = False
            self.probes -= 1
            self._unpark(1)
        if (seconds is not None if sent is None else sent) and o.sending:
            o.sending -= 1
            if started is not None and started in o.starts:
                o.starts.remove(started)  # (that attempt: others may still hang)
            else:
                o.starts.popleft()  # (unknown: the oldest, as attempts end about in order)
        now = self.clock()
        o.used = now
        if seconds is not None:
            self._recent.append(seconds)
            o.mean = seconds if o.mean == 0 else o.mean + EWMA * (seconds - o.mean)
            o.busy_since = now
        if o.jobs and not o.ready:
            o.ready = True
            self._ring.append(o)
            self.wake(1)

    def typical(self) -> float:
        """The median duration of this worker's recent attempts, all origins together
        (recomputed at most every 50 ms; 0 before any)."""
        value, at = self._typical
        now = self.clock()
        if now - at > 0.05:
            recent = sorted(self._recent)
            value = recent[len(recent) // 2] if recent else 0.0
            self._typical = (value, now)
        return value

    def is_slow(self, o: OriginState[J], est: float, slow_s: float) -> bool:
        """Whether an origin is slow: its attempts take *slow_s* or more and SLOW_FACTOR
        times this worker's typical attempt (one that has not answered yet: a quarter of
        those). Relative, so a worker whose own loop is busy does not take a receiver it
        keeps waiting for a slow one, and the one receiver of a fan-out is never slow."""
        typical = self.typical()
        if not typical:
            return False
        bar = max(slow_s, SLOW_FACTOR * typical)
        return est >= (bar if o.mean else bar / 4)

    def drain(self) -> list[J]:
        """Every queued job, taken out (the deliverer stops)."""
        out = [job for o in self._origins.values() for job in o.jobs]
        for o in self._origins.values():
            o.jobs.clear()
        self.queued = 0
        return out

    def overflow(
        self,
        budget_s: float,
        keep: Callable[[Origin], bool] | None = None,
        slow: tuple[float, float] | None = None,
        crowded: bool = False,
    ) -> list[tuple[J, float]]:
        """The queued jobs not expected to start within *budget_s*, taken out, each with
        when (seconds from now) its origin is expected to have room for it: jobs of a full
        origin whose attempts are slow. Origins for which *keep* is true are left alone.
        With *slow* = (slow_s, slow_budget_s): a slow origin (:meth:`is_slow`) keeps only
        what it would start within slow_budget_s (the claims a slow receiver holds are
        claims other origins' work waits for).

        Room is timed from the attempts on the wire: the oldest ends its mean after it went
        out (a wave's: the whole wave's), then a wave of ``cap`` every ``est``. A job handed
        back takes the first wave from then on that the jobs handed back or paced before
        (and not due yet) leave room in -- spread over half an attempt, so lanes that free
        one by one find one soon -- so a job that came back early takes the next wave with
        room, not a place behind the whole backlog; and one that comes back within the
        budget of its room is kept for it. One that answered but now runs past its mean is
        not timed by it: it keeps nothing beyond its lanes.
        An origin that has not answered yet cannot be timed: it keeps its jobs unless it is
        slow beside the others or the claimer is *crowded* (due work may be waiting for
        claim slots); then they all come back together, after twice as long as its
        attempts have run, and go again if it has not answered by then.
        """
        now = self.clock()
        out: list[tuple[J, float]] = []
        cap = self.cap
        stall_s = self.stall_s
        for o in list(self._origins.values()):
            if not o.jobs or (keep is not None and keep(o.key)):
                continue
            est = o.estimate(now)
            if stall_s is not None and not self._answering(o, stall_s):
                # lanes short: it gets one probe at a time, so it holds no more claims than
                # that (the claim slots go to the origins that answer)
                kept = 0 if o.inflight else 1
                if len(o.jobs) > kept:
                    extra = [o.jobs.pop() for _ in range(len(o.jobs) - kept)]
                    extra.reverse()
                    self.queued -= len(extra)
                    # (one never tried -- maybe a receiver new here -- comes back soonest)
                    wait = 2 * max(est, stall_s) if o.tried else 0.0
                    delay = min(max(wait, MIN_DEFER_S), MAX_DEFER_S)
                    out += [(job, delay) for job in extra]
                continue
            if est <= 0:
                continue
            is_slow = slow is not None and self.is_slow(o, est, slow[0])
            if not (o.mean or is_slow or crowded):
                continue
            budget = slow[1] if slow is not None and is_slow else budget_s
            # room comes when the oldest attempt on the wire ends, its mean after it went
            # out (a wave: the whole wave's), then a wave every `est`; one with no answer
            # yet, or running past its mean, runs `est` more at least
            running = now - o.starts[0] if o.starts else 0.0
            remaining = o.mean - running if o.starts and running <= o.mean else est
            waves = int((budget - remaining) // est) + 1 if remaining <= budget else 0
            kept = max(cap - o.inflight, 0) + waves * cap
            if len(o.jobs) <= kept:
                continue
            extra = [o.jobs.pop() for _ in range(len(o.jobs) - kept)]
            extra.reverse()
            self.queued -= len(extra)
            if not o.mean:
                # no answer yet: its waves cannot be timed; all come back together, after
                # twice as long as its attempts have run (and go again if still too early)
                delay = min(max(2 * est, MIN_DEFER_S), MAX_DEFER_S)
                out += [(job, delay) for job in extra]
                continue
            # each into the first wave of room, from `base` on, that the jobs handed back
            # or paced before (and not due yet) leave room in: a job that came back early
            # takes the next wave with room, not a place behind the whole backlog
            handed = o.handed = [h for h in o.handed if h[0] > now]
            base = now + remaining + waves * est
            taken: dict[int, int] = {}
            for due, n in handed:
                k = max(int((due - base) / est + 0.5), 0)
                taken[k] = taken.get(k, 0) + int(n)
            k = 0
            for job in extra:
                while taken.get(k, 0) >= cap:
                    k += 1
                j = taken.get(k, 0)
                taken[k] = j + 1
                # (spread over half an attempt: lanes that free one by one -- attempts that
                # do not all take as long -- find a job soon, and a wave that ends together
                # finds most of its jobs)
                at = base + (k + SPREAD * j / cap) * est
                delay = min(max(at - now, MIN_DEFER_S), MAX_DEFER_S)
                out.append((job, delay))
                self._expect(o, now + delay, est)
            o.horizon = max(o.horizon, min(base + (k + 1) * est, now + MAX_DEFER_S))
        return out

    def plan(
        self,
        tags: Sequence[str],
        budget_s: float,
        slow_s: float,
        keep: Callable[[Origin], bool] | None = None,
    ) -> list[int]:
        """For a fan-out's events, one per origin tag of *tags* (in its order): 0 for one
        its origin is expected to start within *budget_s* (the fan-out may claim it), else
        in how many ms it is (due then, not claimed). Only a slow origin is paced
        (:meth:`is_slow`): a fast one's backlog starts within milliseconds, and the claims
        it holds cost nothing. An origin this worker has not
        sent to yet, or one *keep* names, starts everything at once."""
        now = self.clock()
        cap = self.cap
        out: list[int] = []
        by_tag = self._by_tag
        for tag in tags:
            o = by_tag.get(tag)
            if o is None:
                self._promise_unseen(tag, now)
                out.append(0)
                continue
            est = o.estimate(now)
            # (an origin that has not answered once is slow sooner: fan-outs start with
            # a burst, and its first wave of claims is what a slow receiver would hold)
            if not self.is_slow(o, est, slow_s) or (keep is not None and keep(o.key)):
                if not o.mean:  # (counted: unanswered_room)
                    self._promise(o, now)
                out.append(0)
                continue
            if now - o.promised_at > PROMISE_S:
                o.promised = 0
            ahead = o.inflight + len(o.jobs) + o.promised
            start = now + (ahead // cap) * est
            # (one that has not answered yet gets its waves, one in flight and one queued:
            # when it answers, its estimate says how much more it takes)
            fits = start - now <= budget_s if o.mean else ahead < UNANSWERED_WAVES * cap
            if fits and o.horizon <= now + budget_s:
                self._promise(o, now)
                out.append(0)
                continue
            at = max(start, o.horizon)
            o.horizon = min(at + est / cap, now + MAX_DEFER_S)  # the next one a bit later
            delay = min(max(at - now, budget_s), MAX_DEFER_S)
            out.append(int(delay * 1000))
            self._expect(o, now + delay, est)  # (hand-backs leave it its room)
        return out

    def unanswered_room(
        self, tag: str, slow_s: float, keep: Callable[[Origin], bool] | None = None
    ) -> int | None:
        """How many more of a fan-out's events an origin (by tag) may get now, before the
        others' (:class:`workers.fanout.FanOutOrder`): one this worker has not had an answer
        from yet -- neither fast nor slow so far -- UNANSWERED_WAVES waves (of ``cap``) in
        flight, queued or promised; any number (None) for one that answered, or that *keep*
        names; -1 for one slow already without an answer (its events go last, where
        :meth:`plan` paces them)."""
        now = self.clock()
        o = self._by_tag.get(tag)
        if o is None:
            unseen = self._unseen.get(tag)
            taken = int(unseen[0]) if unseen is not None and now - unseen[1] <= PROMISE_S else 0
            return max(UNANSWERED_WAVES * self.cap - taken, 0)
        if o.mean or (keep is not None and keep(o.key)):
            return None
        if self.is_slow(o, o.estimate(now), slow_s):
            return -1
        if now - o.promised_at > PROMISE_S:
            o.promised = 0
        return max(UNANSWERED_WAVES * self.cap - (o.inflight + len(o.jobs) + o.promised), 0)

    @staticmethod
    def _expect(o: OriginState[J], due: float, est: float) -> None:
        """One of *o*'s jobs is due back (handed back, or an event paced) at *due*: counted
        in the wave it comes in (entries within half an attempt of each other share one)."""
        handed = o.handed
        if handed and 0 <= due - handed[-1][0] < est / 2:
            handed[-1][1] += 1
        else:
            handed.append([due, 1])

    def forget_idle(self) -> None:
        """Forget origins idle (nothing queued or in flight, nothing due back) for
        IDLE_FORGET_S: what they taught (their estimate) is stale by then, and a worker that
        sends to many origins over months keeps only those of the last minutes. (And drop
        every origin's count of jobs due back whose time has passed.)"""
        now = self.clock()
        for key, o in list(self._origins.items()):
            if o.handed and o.handed[0][0] <= now:  # (fed by plan() also when not pruned)
                o.handed = [h for h in o.handed if h[0] > now]
            if o.jobs or o.inflight:
                continue
            last = max([o.used, o.horizon, *(due for due, _ in o.handed[-1:])])
            if now > last + IDLE_FORGET_S:
                del self._origins[key]
                self._by_tag.pop(origin_tag(key), None)
        if self._unseen:
            self._sweep_unseen(now)

    def _promise(self, o: OriginState[J], now: float) -> None:
        if now - o.promised_at > PROMISE_S:
            o.promised = 0
        o.promised += 1
        o.promised_at = now

    def _promise_unseen(self, tag: str, now: float) -> None:
        unseen = self._unseen.get(tag)
        if unseen is None or now - unseen[1] > PROMISE_S:
            if len(self._unseen) >= UNSEEN_KEPT:
                self._sweep_unseen(now)
            self._unseen[tag] = [1, now]
        else:
            unseen[0] += 1
            unseen[1] = now

    def _sweep_unseen(self, now: float) -> None:
        """Drop the promises never queued here (cancelled, or left for other workers) once
        they lapsed: at most every PROMISE_S."""
        if now - self._unseen_swept > PROMISE_S:
            self._unseen = {t: u for t, u in self._unseen.items() if now - u[1] <= PROMISE_S}
            self._unseen_swept = now

    def wake(self, n: int) -> None:
        """Wake up to *n* parked lanes."""
        idle = self.idle
        while n > 0 and idle:
            fut = idle.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    def wake_all(self) -> None:
        """Wake every parked lane."""
        self.wake(len(self.idle))
