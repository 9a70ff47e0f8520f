"""The per-origin queues (fair lanes, cap, hand-back of a slow origin's backlog) and the
circuit breaker, as units with a clock of their own (workers/delivery/origins.py and
breaker.py; the end-to-end behaviour is in test_noisy_neighbours.py). Both modules are new
with issue 15: these fail on the code before it (they do not import)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from relay.domain.origin import Origin, origin_tag
from workers.delivery.breaker import (
    IDLE_OPEN_S,
    STALE_STREAK_S,
    Breakers,
    Verdict,
    no_answer,
)
from workers.delivery.claim import defer_step
from workers.delivery.origins import IDLE_FORGET_S, MAX_DEFER_S, MIN_DEFER_S, OriginQueues

A: Origin = ("http", "a.example", 80)
B: Origin = ("http", "b.example", 80)
C: Origin = ("https", "a.example", 443)


@dataclass(eq=False)
class J:
    origin: Origin
    n: int = 0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def send(q: OriginQueues[J]) -> J | None:
    """Take the next job and put its attempt on the wire, as a lane does past its claim
    check."""
    job = q.take()
    if job is not None:
        q.sending(job.origin)
    return job


def busy_origin(jobs: int, cap: int = 4, sent: int = 4) -> tuple[Clock, OriginQueues[J]]:
    """Origin A with *jobs* queued, *sent* of them on the wire, on a clock of the test's."""
    clock = Clock()
    q: OriginQueues[J] = OriginQueues(cap=cap, clock=clock)
    for i in range(jobs):
        q.put(J(A, i))
    for _ in range(sent):
        send(q)
    return clock, q


def test_round_robin_over_origins_not_first_come() -> None:
    q: OriginQueues[J] = OriginQueues(cap=16)
    for i in range(100):
        q.put(J(A, i))
    q.put(J(B, 0))
    q.put(J(C, 0))
    got = [q.take() for _ in range(4)]
    assert [j.origin for j in got if j] == [A, B, C, A]
    assert len(q) == 100 - 2


def test_lanes_short_origins_not_answering_get_one_probe_each_in_a_few_lanes() -> None:
    """While lanes are short (the deliverer replaced hung ones): an origin that answers
    keeps its pace; one not answering -- none yet, its last unanswered, or one on the wire
    for the stall time -- gets one attempt at a time, and such probes are capped; a probe
    that ends lets a parked origin go, and the end of the shortage lets every one go."""
    clock = Clock()
    q: OriginQueues[J] = OriginQueues(cap=16, clock=clock)
    dead = [("http", f"dead{i}.example", 80) for i in range(4)]
    for i in range(3):
        q.put(J(B, i))
    first = send(q)
    assert first is not None and first.origin == B
    q.finish(B, 0.01, sent=True, answered=True)  # B answers
    for origin in dead:
        q.put(J(origin, 0))
        q.put(J(origin, 1))
    q.short(1.0, probes=2)
    got = [send(q) for _ in range(8)]
    origins = [j.origin for j in got if j is not None]
    assert origins.count(B) == 2  # the answering origin: all it has
    probed = [o for o in origins if o != B]
    assert len(probed) == 2 and len(set(probed)) == 2  # two probes, one each
    assert q.probes == 2
    q.finish(probed[0], 8.0, sent=True, answered=False)  # a probe times out
    nxt = send(q)
    assert nxt is not None and nxt.origin not in probed[1:]  # a slot freed: the next probe
    clock.t += 2.0  # B's attempt on the wire for 2 s: B is not answering now
    q.put(J(B, 9))
    q.sending(B)  # (one of B's on the wire)
    clock.t += 2.0
    assert q.take() is None  # B stalled, probes full: nothing runnable
    q.short(None)  # lanes no longer short: every origin waiting goes again
    rest = []
    while (j := q.take()) is not None:
        rest.append(j.origin)
    assert B in rest and len(rest) >= 3, rest


def test_lanes_short_a_hung_attempt_a_new_origin_and_claims_held() -> None:
    """While lanes are short (a review's cases, 2026-12-07): an origin that answers the
    others is not frozen by one hung attempt; an origin never tried yet (a receiver new to
    this worker) waits for a probe slot ahead of those that went unanswered; an origin not
    answering holds one queued job at most -- its others are handed back, so the claim
    slots go to the origins that answer."""
    clock = Clock()
    q: OriginQueues[J] = OriginQueues(cap=16, clock=clock)
    for i in range(3):
        q.put(J(B, i))
    hung = send(q)
    assert hung is not None
    clock.t += 0.5
    quick = send(q)
    assert quick is not None
    clock.t += 0.05
    q.finish(B, 0.05, sent=True, answered=True)  # one answered, the first hangs on
    clock.t += 2.0
    q.short(1.0, probes=1)
    nxt = send(q)
    assert nxt is not None and nxt.origin == B  # still answering: not frozen
    dead = [("http", f"dead{i}.example", 80) for i in range(3)]
    for origin in dead:
        for i in range(5):
            q.put(J(origin, i))
    probe = send(q)
    assert probe is not None and probe.origin in dead
    q.finish(probe.origin, 8.0, sent=True, answered=False)  # unanswered: tried
    fresh: Origin = ("http", "new.example", 80)
    q.put(J(fresh, 0))
    q.put(J(fresh, 1))
    other = send(q)  # the slot freed: a probe again
    assert other is not None
    assert q.take() is None  # (the one slot taken: every origin waiting for it parks)
    handed = q.overflow(1.0, crowded=True)
    by_origin = {o: sum(1 for j, _ in handed if j.origin == o) for o in [*dead, fresh]}
    assert all(n >= 3 for o, n in by_origin.items() if o != fresh), by_origin
    assert by_origin[fresh] == 1 and q.waiting(fresh) == 1  # one kept for its probe
    q.finish(other.origin, 8.0, sent=True, answered=False)  # a slot frees: the new one first
    first = send(q)
    assert first is not None and first.origin == fresh


def test_an_origin_gets_at_most_its_cap_and_room_back_when_one_finishes() -> None:
    q: OriginQueues[J] = OriginQueues(cap=3)
    for i in range(10):
        q.put(J(A, i))
    taken = [q.take() for _ in range(3)]
    assert all(taken) and q.take() is None  # full: nothing runnable, a lane parks
    q.put(J(B))
    got = q.take()
    assert got is not None and got.origin == B
    q.finish(A, 0.01)
    nxt = q.take()
    assert nxt is not None and nxt.origin == A and nxt.n == 3  # FIFO within an origin
    assert q.inflight(A) == 3 and q.waiting(A) == 6


def test_a_slow_full_origins_backlog_overflows_a_fast_ones_does_not() -> None:
    clock = Clock()
    q: OriginQueues[J] = OriginQueues(cap=4, clock=clock)
    for i in range(100):
        q.put(J(A, i))
        q.put(J(B, i))
    for _ in range(8):
        send(q)
    # B answers in 5 ms; A's four attempts answer after 3 s
    for _ in range(20):
        clock.t += 0.005
        q.finish(B, 0.005)
        send(q)
    for _ in range(4):
        q.finish(B, 0.005)
    clock.t += 3.0
    for _ in range(4):
        q.finish(A, 3.0)  # A's first wave answers after 3 s; its second goes out
    while q.inflight(A) < 4:
        send(q)
    out = q.overflow(2.0, slow=(0.025, 2.0))
    assert out and {j.origin for j, _ in out} == {A}
    assert q.waiting(A) == 0  # none of its queued jobs would start within 2 s
    assert q.waiting(B) > 50  # the fast one keeps its backlog: no churn through Redis
    delays = [d for _, d in out]
    assert all(MIN_DEFER_S <= d <= MAX_DEFER_S for d in delays)
    assert delays == sorted(delays) and delays[-1] > delays[0]  # spread, a wave at a time
    # jobs handed back later go after the ones handed back before (the horizon)
    for i in range(8):
        q.put(J(A, 1000 + i))
    again = q.overflow(2.0, slow=(0.025, 2.0))
    assert min(d for _, d in again) >= max(delays) - 1e-9


def test_a_fan_out_plan_paces_a_slow_origin_only() -> None:
    """plan(): an origin this worker has not sent to, or a fast one, may have all of a
    fan-out's events claimed; one that has not answered for a while gets a wave in flight
    and one queued, one known slow what it starts within the budget -- the rest are due
    later, spread a wave at a time behind each other. Slow is relative to the worker's
    typical attempt: the one receiver of a fan-out is never slow."""
    clock = Clock()
    q: OriginQueues[J] = OriginQueues(cap=4, clock=clock)
    ta, tb = origin_tag(A), origin_tag(B)
    assert q.plan([ta] * 50, 0.1, 0.025) == [0] * 50  # never seen: everything at once
    clock.t += 1.0  # (those 50 promises lapse: they were never queued)
    for i in range(4):
        q.put(J(A, i))
        q.put(J(B, i))
    for _ in range(8):
        send(q)
    clock.t += 0.002
    for _ in range(4):
        q.finish(B, 0.002)  # B answers in 2 ms: this worker's typical attempt
    for i in range(40):
        q.put(J(B, 10 + i))
        send(q)
        q.finish(B, 0.002)
    clock.t += 0.05  # A has not answered for 52 ms
    plan_b = q.plan([tb] * 200, 0.1, 0.025)
    assert plan_b == [0] * 200  # fast: its backlog starts within milliseconds
    plan_a = q.plan([ta] * 40, 0.1, 0.025)
    assert plan_a[:4] == [0] * 4 and all(d >= 100 for d in plan_a[4:])  # 4 in flight + 4
    assert plan_a[4:] == sorted(plan_a[4:]) and plan_a[-1] > plan_a[4]
    # once it answers (slowly), what it would start within the budget is claimable
    for _ in range(4):
        q.finish(A, 0.05)
    clock.t += 1.0  # the promises of the last plan have lapsed
    again = q.plan([ta] * 20, 0.1, 0.025)
    assert again[0] == 0 and all(d >= 100 for d in again[8:])
    # the events paced count as room taken (hand-backs go after them) until they are
    # due; then the sweep drops them, though nothing of A was handed back since
    paced = q._origins[A].handed
    assert sum(n for _, n in paced) == sum(1 for d in plan_a + again if d)
    clock.t += 301.0
    q.put(J(A, 999))  # (busy: not forgotten)
    q.forget_idle()
    assert q._origins[A].handed == []
    assert min(d for d in again if d) >= plan_a[-1] - 1000  # behind those paced before
    # an origin the caller keeps (its circuit is open) is never paced
    assert q.plan([ta] * 20, 0.1, 0.025, keep=lambda o: o == A) == [0] * 20


def test_the_only_origin_is_never_slow_however_long_its_attempts() -> None:
    """A worker whose every attempt takes 40 ms (its own loop is busy, or every receiver is
    far away) paces nothing: slow means slow beside the others."""
    clock = Clock()
    q: OriginQueues[J] = OriginQueues(cap=4, clock=clock)
    for i in range(50):
        q.put(J(A, i))
    for _ in range(20):
        send(q)
        clock.t += 0.04
        q.finish(A, 0.04)
    assert q.plan([origin_tag(A)] * 100, 0.1, 0.025) == [0] * 100
    assert q.overflow(1.0, slow=(0.025, 0.1)) == []


def test_origins_the_caller_keeps_are_not_overflowed() -> None:
    clock = Clock()
    q: OriginQueues[J] = OriginQueues(cap=1, clock=clock)
    for i in range(5):
        q.put(J(A, i))
    send(q)
    clock.t += 10
    q.finish(A, 10.0)  # its attempts take 10 s
    send(q)
    assert q.overflow(2.0, keep=lambda o: o == A) == []
    assert len(q.overflow(2.0)) == 3
    # one yet to answer, handed back as the claimer is crowded: kept all the same
    for i in range(5):
        q.put(J(B, i))
    send(q)
    clock.t += 10
    assert q.overflow(2.0, keep=lambda o: o == B, crowded=True) == []
    assert len(q.overflow(2.0, crowded=True)) == 4


def test_drain_hands_every_queued_job_over() -> None:
    q: OriginQueues[J] = OriginQueues(cap=2)
    for i in range(5):
        q.put(J(A, i))
        q.put(J(B, i))
    send(q)
    assert len(q.drain()) == 9 and len(q) == 0 and q.take() is None


def test_breaker_opens_after_failures_in_a_row_only() -> None:
    clock = Clock()
    b = Breakers(failures=3, cooldown_s=30, clock=clock)
    b.record(A, False)
    b.record(A, False)
    b.record(A, True)  # an answer (any status) resets the count
    b.record(A, False)
    b.record(A, False)
    assert b.check(A) is Verdict.SEND
    b.record(A, None)  # says nothing of the origin
    b.record(A, False)
    assert b.check(A) is Verdict.OPEN and b.open_origins == 1
    assert b.check(B) is Verdict.SEND


def test_a_failure_streak_with_a_long_gap_starts_again() -> None:
    """Rule: failures "in a row" with none for STALE_STREAK_S start from zero. Fails
    before: the count was kept until 10,000 origins were tracked, so two failures long ago
    made today's first one open the circuit (a tester: eight timeouts, nine minutes idle,
    the second failure opened it)."""
    clock = Clock()
    b = Breakers(failures=3, cooldown_s=30, clock=clock)
    b.record(A, False)
    b.record(A, False)
    clock.t += STALE_STREAK_S
    b.record(A, False)  # the first of a new streak
    assert b.check(A) is Verdict.SEND
    clock.t += STALE_STREAK_S - 1  # a gap short of it: the same streak
    b.record(A, False)
    assert b.check(A) is Verdict.SEND
    b.record(A, False)
    assert b.check(A) is Verdict.OPEN


def test_closed_origins_with_old_failures_are_forgotten_open_ones_kept() -> None:
    """A closed origin with no failure for STALE_STREAK_S is forgotten (its memory freed:
    before, only once 10,000 origins were tracked); one failing since, or open, is kept.
    The closed ones are read in the order of their last failure, up to the first fresh."""
    clock = Clock()
    b = Breakers(failures=3, cooldown_s=30, clock=clock)
    C = ("http", "c.example", 80)
    b.record(A, False)
    clock.t += 1
    for _ in range(3):
        b.record(C, False)  # open
    b.record(B, False)
    clock.t += 1
    b.record(A, False)  # A failed again: after B now
    clock.t += STALE_STREAK_S - 1.5  # B's failure is stale, A's not
    assert b.forget_stale() == 0
    clock.t += 1
    assert b.forget_stale() == 1
    assert set(b._states) == {A, C} and b.is_open(C)
    clock.t += 1
    assert b.forget_stale() == 1 and set(b._states) == {C}
    b.record(A, False)  # a new streak, from one
    b.record(A, False)
    assert b.check(A) is Verdict.SEND


def test_breaker_half_open_lets_one_probe_through() -> None:
    clock = Clock()
    b = Breakers(failures=1, cooldown_s=30, clock=clock)
    b.record(A, False)
    clock.t += 29.9
    assert b.check(A) is Verdict.OPEN
    clock.t += 0.2
    assert b.check(A) is Verdict.PROBE
    assert b.check(A) is Verdict.OPEN  # one probe at a time
    b.record(A, False, probe=True)  # no answer: open again, for a full cooldown
    clock.t += 29.9
    assert b.check(A) is Verdict.OPEN
    clock.t += 0.2
    assert b.check(A) is Verdict.PROBE
    b.record(A, None, probe=True)  # the probe was not sent after all: still half-open
    assert b.check(A) is Verdict.PROBE
    b.record(A, True, probe=True)  # answered: closed
    assert b.check(A) is Verdict.SEND and b.open_origins == 0


def test_breaker_close_shuts_the_circuits_named_and_only_those() -> None:
    """An operator's redelivery closes its origin's circuit (by tag), a recovery every one;
    a closed origin that fails again opens after the full count."""
    clock = Clock()
    b = Breakers(failures=2, cooldown_s=30, clock=clock)
    for origin in (A, B, A, B):
        b.record(origin, False)
    assert b.open_origins == 2
    assert b.close("nomatch") == 0 and b.open_origins == 2
    assert b.close(origin_tag(A)) == 1
    assert b.check(A) is Verdict.SEND and b.check(B) is Verdict.OPEN and b.open_origins == 1
    b.record(A, False)
    assert b.check(A) is Verdict.SEND  # one failure: still closed
    b.record(A, False)
    assert b.check(A) is Verdict.OPEN
    assert b.close() == 2 and b.open_origins == 0
    assert b.check(A) is Verdict.SEND and b.check(B) is Verdict.SEND


def test_closing_one_tag_looks_only_at_its_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    """A recover closes one tag per origin of its watches, each a message to every worker:
    a close must not look at every origin kept (10,000 open ones took ~1 ms a close, a
    review, 2026-12-06). It finds the tag's origins in an index kept as circuits open and
    close -- answered, forgotten or closed -- so the count stays right."""
    import workers.delivery.breaker as breaker

    clock = Clock()
    b = Breakers(failures=1, cooldown_s=30, clock=clock)
    many = [("https", f"h{i}.example", 443) for i in range(2_000)]
    for origin in many:
        b.record(origin, False)
    assert b.open_origins == 2_000
    looked: list[Origin] = []

    def counting(origin: Origin) -> str:
        looked.append(origin)
        return origin_tag(origin)

    monkeypatch.setattr(breaker, "origin_tag", counting)
    assert b.close(origin_tag(many[7])) == 1 and len(looked) <= 2
    assert b.check(many[7]) is Verdict.SEND and b.open_origins == 1_999
    b.record(many[8], True)  # answered: closed, and out of the index
    assert b.close(origin_tag(many[8])) == 0 and b.open_origins == 1_998
    assert b.close() == 1_998 and b.open_origins == 0 and not b._open_by_tag


def test_a_probe_in_flight_when_its_circuit_closes_counts_as_one_failure() -> None:
    """A probe that was in flight when an operator's redeliver closed its circuit, and then
    got no answer, does not open the circuit again at once: it is one ordinary failure."""
    clock = Clock()
    b = Breakers(failures=3, cooldown_s=30, clock=clock)
    for _ in range(3):
        b.record(A, False)
    clock.t += 31
    assert b.check(A) is Verdict.PROBE
    assert b.close() == 1
    b.record(A, False, probe=True)
    assert b.check(A) is Verdict.SEND and b.open_origins == 0
    b.record(A, False)
    b.record(A, False)  # the third in a row since the close
    assert b.check(A) is Verdict.OPEN and b.open_origins == 1


def test_the_breaker_forgets_open_origins_nothing_is_sent_to_any_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The breaker remembers MAX_ORIGINS origins: beyond it, the closed ones go first, then
    open ones whose cooldown ended with no attempt since, then (a flood of dead origins,
    all cooling down) the oldest, down to nine tenths: the bound holds. Fails before: an
    origin that opened once and got no other attempt was kept (and counted open) for ever
    (review, 2026-12-06); and origins still cooling down were kept over the bound, each
    new one scanning them all twice (a second review)."""
    monkeypatch.setattr("workers.delivery.breaker.MAX_ORIGINS", 4)
    clock = Clock()
    b = Breakers(failures=1, cooldown_s=30, clock=clock)
    dead = [("https", f"h{i}.example", 443) for i in range(4)]
    for origin in dead:
        b.record(origin, False)
    assert b.open_origins == 4
    clock.t += 31  # their cooldowns ended; nothing came for them since
    fresh = ("https", "fresh.example", 443)
    b.record(fresh, False)
    assert b.check(fresh) is Verdict.OPEN and b.open_origins == 1
    assert all(b.check(origin) is Verdict.SEND for origin in dead)  # forgotten
    late = ("https", "late.example", 443)
    for i in range(4):  # all cooling down: the oldest go, the bound holds
        b.record(("https", f"c{i}.example", 443), False)
    b.record(late, False)
    assert len(b._states) <= 4 and b.open_origins == len(b._states) == 4
    assert b.check(late) is Verdict.OPEN  # the newest are kept
    assert b.check(fresh) is Verdict.SEND  # the oldest went (sent to again, opens again)


def test_an_open_circuit_nothing_is_sent_to_stops_counting_as_open() -> None:
    """An origin whose watches all failed gets no attempt again: its circuit closed only
    with another attempt, so ``relay_circuits_open`` (and the runbook's "a receiver is
    down" alert) stayed above 0 for ever after one receiver died (review, 2026-12-06).
    IDLE_OPEN_S after its cooldown with no attempt it closes, one failure short of opening;
    one still probed, or in its cooldown, stays open. Each change is a log line naming the
    origin."""
    from structlog.testing import capture_logs

    from relay.metrics import CIRCUIT_OPENS, CIRCUITS_OPEN

    clock = Clock()
    b = Breakers(failures=3, cooldown_s=30, clock=clock)
    gauge, opened = CIRCUITS_OPEN._value.get(), CIRCUIT_OPENS._value.get()
    with capture_logs() as lines:
        for origin in (A, A, A, B, B, B):
            b.record(origin, False)
        assert b.open_origins == 2 and CIRCUITS_OPEN._value.get() == gauge + 2
        clock.t += 31
        assert b.check(B) is Verdict.PROBE  # B is probed: still in use
        clock.t += IDLE_OPEN_S - 5
        assert b.close_idle() == 0
        clock.t += 10
        assert b.close_idle() == 1 and b.open_origins == 1
        assert CIRCUITS_OPEN._value.get() == gauge + 1
        assert b.check(A) is Verdict.SEND  # closed ...
        b.record(A, False)  # ... one failure short: the next failure opens it at once
        assert b.check(A) is Verdict.OPEN and b.open_origins == 2
        b.record(B, True, probe=True)
    assert b.open_origins == 1 and CIRCUIT_OPENS._value.get() == opened + 3
    said = [(e["event"], e.get("origin"), e.get("why")) for e in lines]
    assert said == [
        ("circuit opened", "http://a.example:80", None),
        ("circuit opened", "http://b.example:80", None),
        ("circuit closed", "http://a.example:80", "idle"),
        ("circuit opened", "http://a.example:80", None),
        ("circuit closed", "http://b.example:80", "answered"),
    ], said


def test_what_counts_as_no_answer() -> None:
    for error in ("timeout", "connect: Connection refused", "dns: host not resolved"):
        assert no_answer(error)
    assert no_answer("tls: certificate rejected")
    assert no_answer("http: connection closed before a full answer")
    for error in (None, "refused: callback private address", "http: answer headers too large"):
        assert not no_answer(error)


def test_an_origin_that_has_not_answered_may_get_two_waves_of_a_fan_out_first() -> None:
    """unanswered_room(): an origin this worker has had no answer from gets 2 x cap of a
    fan-out's events (promised by plan() before any is queued, then queued and in flight)
    ahead of the others; any number once it answered, or for one the caller keeps; -1
    (last) for one already slow without an answer."""
    clock = Clock()
    q: OriginQueues[J] = OriginQueues(cap=4, clock=clock)
    ta, tb = origin_tag(A), origin_tag(B)
    assert q.unanswered_room(ta, 0.025) == 8
    assert q.plan([ta] * 3, 0.1, 0.025) == [0] * 3  # never seen: claimable, but counted
    assert q.unanswered_room(ta, 0.025) == 5
    for i in range(3):
        q.put(J(A, i))  # the promises became jobs
    assert q.unanswered_room(ta, 0.025) == 5
    q.plan([ta] * 5, 0.1, 0.025)
    assert q.unanswered_room(ta, 0.025) == 0
    clock.t += 1.0  # promises never queued lapse
    assert q.unanswered_room(ta, 0.025) == 5
    assert q.unanswered_room(ta, 0.025, keep=lambda o: o == A) is None
    send(q)
    q.put(J(B, 0))
    send(q)
    q.finish(B, 0.002)  # B answers in 2 ms: it may get any number
    assert q.unanswered_room(tb, 0.025) is None
    clock.t += 0.06  # A's attempt has run 60 ms without an answer: slow already
    assert q.unanswered_room(ta, 0.025) == -1
    # promises to origins that are never queued are swept, not kept for ever
    for i in range(300):
        q.plan([f"t{i}"], 0.1, 0.025)
        clock.t += 1.0
    assert len(q._unseen) <= 256
    # ...and swept by the idle sweep too, not only by a later plan(): a burst to 1,000
    # origins that are never queued here (left for other workers) is not kept
    q.plan([f"u{i}" for i in range(1000)], 0.1, 0.025)
    clock.t += 2.0
    q.forget_idle()
    assert len(q._unseen) == 0


def test_a_stalled_claim_check_does_not_make_an_origin_slow() -> None:
    """Jobs taken but held at their claim check (a stalled Redis: 10 s) never went on the
    wire: the origin's estimate stays its answers' 0.2 s, so its backlog is paced over
    seconds, not minutes. Fails before: the 10 s counted as an attempt running, and the
    backlog went out to 300 s (a chaos tester's try: an idle receiver for minutes)."""
    clock = Clock()
    q: OriginQueues[J] = OriginQueues(cap=4, clock=clock)
    for i in range(100):
        q.put(J(A, i))
    for i in range(4):
        q.put(J(B, i))
    for _ in range(8):
        send(q)
    clock.t += 0.2
    for _ in range(4):
        q.finish(A, 0.2)
        q.finish(B, 0.002)
    for _ in range(4):
        q.take()  # to the claim check, where Redis stalls
    clock.t += 10.0
    deferred = q.overflow(1.0, slow=(0.025, 0.1))
    assert deferred, "a backlog of 92 at 4 a wave of 0.2 s does not start within 1 s"
    assert max(d for _, d in deferred) < 10.0  # 92 / 4 waves of 0.2 s: about 5 s
    for _ in range(4):
        q.finish(A, None, sent=False)  # the claims lapsed in the stall: no attempt
    assert q.inflight(A) == 0


def _slow_origin_pace(
    attempt_s: float, jobs: int, cap: int, jitter: float = 0.0, claims: int = 512
) -> float:
    """Simulate the deliverer with one origin whose attempts take *attempt_s* (each within
    +/- *jitter* of it, seeded): all *jobs* are due at once; the claimer holds at most
    *claims* (queued or on the wire) and claims due ones, earliest first, as it has room;
    lanes take what the queues give; the sweeper hands back (every 0.1 s, as deliverer.py
    does) what overflow() picks -- crowded as Claimer.crowded() says -- each due again
    after its delay rounded as Claimer.defer rounds it. Returns the share of the time the
    origin's lanes were busy, from the first attempt to the last answer."""
    rnd = random.Random(7)
    clock = Clock()
    start = clock.t
    q: OriginQueues[J] = OriginQueues(cap=cap, clock=clock)
    schedule = [(clock.t, J(A, i)) for i in range(jobs)]  # (due at, job)
    on_wire: list[tuple[float, float, J]] = []  # (ends at, went out at, job)
    done, busy = 0, 0.0
    while done < jobs:
        assert clock.t - start < 20 * attempt_s * jobs / cap, "never finished"
        for x in [x for x in on_wire if x[0] <= clock.t + 1e-9]:
            on_wire.remove(x)
            q.finish(A, x[0] - x[1])
            done += 1
            busy += x[0] - x[1]
        room = claims - len(q) - len(on_wire)
        due = sorted((x for x in schedule if x[0] <= clock.t + 1e-9), key=lambda x: x[0])
        for x in due[: max(room, 0)]:
            schedule.remove(x)
            q.put(x[1])
        while (job := send(q)) is not None:
            took = attempt_s * (1 + rnd.uniform(-jitter, jitter))
            on_wire.append((clock.t + took, clock.t, job))
        crowded = claims - len(q) - len(on_wire) < min(32, claims // 4)
        back = q.overflow(1.0, slow=(0.025, 0.1), crowded=crowded)
        schedule += [(clock.t + defer_step(d), j) for j, d in back]
        clock.t += 0.1
    return busy / cap / (clock.t - start)


@pytest.mark.parametrize(
    ("attempt_s", "jobs", "jitter", "busy"),
    [
        (2.5, 200, 0.0, 0.9),
        (0.3, 2000, 0.0, 0.9),
        (10.0, 500, 0.0, 0.9),
        (2.5, 2000, 0.0, 0.9),
        (0.3, 8000, 0.0, 0.9),
        (2.5, 200, 0.3, 0.75),
        (10.0, 500, 0.3, 0.75),
        (2.5, 2000, 0.3, 0.75),
    ],
)
def test_a_slow_origin_handed_back_is_kept_at_its_full_pace(
    attempt_s: float, jobs: int, jitter: float, busy: float
) -> None:
    """An origin whose attempts take seconds, alone on a worker, with hundreds or thousands
    of jobs at a cap of 16 (more than the claimer holds: it is crowded at first): its jobs
    come back as its lanes free, so they are busy 93-99 % of the time when attempts take
    the same time, 80-86 % when they vary by +/- 30 %. Fails before: jobs handed back
    before its first answer were timed by the milliseconds its attempts had run, came back
    early and went behind the whole backlog, and delays were rounded up to 5 s steps past
    10 s: its lanes were busy 18-48 % of the time (a tester's run, 2.5 s x 200: 58 s; 33 s
    after)."""
    got = _slow_origin_pace(attempt_s, jobs, 16, jitter)
    assert got >= busy, f"the origin's lanes were busy {got:.0%} of the time"


def test_an_origin_yet_to_answer_keeps_its_queue_unless_the_claimer_is_crowded() -> None:
    """Alone on the worker (never slow), with attempts running 2 s and no answer yet: how
    long they take is unknown, so its queue is held -- a hand-back timed by 2 s would come
    back before its room -- unless claim slots are wanted (*crowded*)."""
    clock, q = busy_origin(40)
    clock.t += 2.0
    assert q.overflow(1.0, slow=(0.025, 0.1)) == []
    out = q.overflow(1.0, slow=(0.025, 0.1), crowded=True)
    assert len(out) == 36 and q.waiting(A) == 0
    # not timed by waves it cannot know: all together, after twice the 2 s it has run
    assert {d for _, d in out} == {4.0}


def test_an_origin_that_answered_then_hangs_keeps_no_wave_beyond_its_lanes() -> None:
    """An origin answered in 0.5 s, then its attempts hang (5 s and counting): its estimate
    is how long they have run, and nothing says when its lanes free -- so it keeps no
    queued job (a wave kept for room "about to come" would hold claims for the whole
    timeout), and the others come back after that long again."""
    clock, q = busy_origin(40)
    clock.t += 0.5
    for _ in range(4):
        q.finish(A, 0.5)
        send(q)  # the next four go out, and hang
    clock.t += 5.0
    out = q.overflow(1.0, slow=(0.025, 0.1))
    assert q.waiting(A) == 0 and len(out) == 32
    assert min(d for _, d in out) >= 5.0


def test_idle_origins_are_forgotten_after_a_while_not_at_once() -> None:
    """What an origin taught (its estimate) outlives a moment with nothing to send -- the
    next burst is paced by it -- and is forgotten once the origin was idle IDLE_FORGET_S
    (a worker that sends to many origins over months keeps only the recent ones)."""
    clock = Clock()
    q: OriginQueues[J] = OriginQueues(cap=4, clock=clock)
    q.put(J(A))
    send(q)
    clock.t += 3.0
    q.finish(A, 3.0)
    q.forget_idle()
    assert q.unanswered_room(origin_tag(A), 0.025) is None  # known: it answered
    clock.t += IDLE_FORGET_S + 1
    q.forget_idle()
    assert q.unanswered_room(origin_tag(A), 0.025) == 8  # new again: two waves of 4


def test_many_circuits_opening_at_once_are_a_few_lines() -> None:
    """A worker whose network fails opens every origin it sends to at once: up to 10,000
    lines (a review, 2026-12-06). LOG_BURST of a kind per 10 s, the next counting the rest;
    the origin in the IPv6 form a URL has."""
    from structlog.testing import capture_logs

    from workers.delivery.breaker import LOG_BURST, shown

    b = Breakers(failures=1, cooldown_s=30, clock=Clock())
    with capture_logs() as lines:
        for i in range(50):
            b.record(("https", f"h{i}.example", 443), False)
    assert b.open_origins == 50
    assert [e["event"] for e in lines] == ["circuit opened"] * LOG_BURST
    assert shown(("http", "::1", 8080)) == "http://[::1]:8080"
