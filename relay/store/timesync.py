"""Learning Redis' clock (:mod:`relay.domain.clock`): a probe of ``TIME``, the fastest of a
few round trips, so that the times a process still computes itself (a new watch's
``createdAt``, a rate window's second, a signing secret's grace) are
Redis' time, whatever this host's clock says. Every process probes at start and then every
few seconds (the API on its upkeep timer, the worker beside its gauges): one ``TIME`` each
time, a few microseconds of Redis."""

from __future__ import annotations

from redis.asyncio import Redis

from relay.domain import clock

SAMPLES = 3  # round trips per probe; the fastest says most
FIRST_MAX_RTT_MS = 1_000  # before any offset is known, a slow answer beats none


async def sync(redis: Redis, samples: int = SAMPLES) -> bool:
    """Probe Redis' clock *samples* times and learn the offset from the fastest round trip;
    whether it was learned (once an offset is known, a round trip slower than both the
    clock's bound and the one it came from teaches nothing)."""
    best: tuple[int, int, int] | None = None  # (sent, got, Redis ms) of the fastest
    for _ in range(samples):
        sent = clock.local_ms()
        secs, micros = await redis.time()
        got = clock.local_ms()
        if best is None or got - sent < best[1] - best[0]:
            best = (sent, got, int(secs) * 1000 + int(micros) // 1000)
    if best is None:
        return False
    sent, got, redis_ms = best
    # a round trip up to the clock's bound, or no slower than the one the offset came from
    # (an offset learnt while Redis was slow is replaced by a better one, however slow)
    last = clock.learned_rtt_ms()
    bound = FIRST_MAX_RTT_MS if last is None else max(clock.MAX_RTT_MS, last)
    return clock.observe(redis_ms, sent, got, bound)
