"""The relay's clock: every stored time is integer milliseconds since the epoch.

One clock for every replica: Redis'. Schedule scores and leases are taken from Redis' own
clock inside the scripts (``TIME``; a retry is sent as its delay); the times a worker still
computes itself (an event's time, a lease's remaining life) are its wall clock corrected by the
offset to Redis' clock it learns from the scripts that return Redis' time and from a probe
of ``TIME`` at start and every few seconds (:func:`observe`, :mod:`relay.store.timesync`), so
a worker or API replica whose clock is off by seconds still agrees with the others to a few
ms.
"""

from __future__ import annotations

import time

MAX_RTT_MS = 100  # a reply slower than this says too little about when the script ran

_offset_ms = 0  # Redis' clock minus this host's, as last observed
_learned_rtt_ms: int | None = None  # the round trip the offset comes from (None: not yet)


def local_ms() -> int:
    """This host's wall clock in integer milliseconds (uncorrected)."""
    return int(time.time() * 1000)


def now_ms() -> int:
    """The relay's time in integer milliseconds (the unit of every stored time): this
    host's clock corrected to Redis' as last observed."""
    return int(time.time() * 1000) + _offset_ms


def observe(redis_ms: int, sent_ms: int, got_ms: int, max_rtt_ms: int = MAX_RTT_MS) -> bool:
    """Learn the offset to Redis' clock from a command that read it (``TIME``) at
    *redis_ms*, sent at *sent_ms* and answered at *got_ms* (both :func:`local_ms`): it ran
    in between, so the midpoint is off by half the round trip at most. A reply slower than
    *max_rtt_ms* teaches nothing (False)."""
    global _offset_ms, _learned_rtt_ms
    rtt = got_ms - sent_ms
    if not 0 <= rtt <= max_rtt_ms:
        return False
    _offset_ms = redis_ms - (sent_ms + got_ms) // 2
    _learned_rtt_ms = rtt
    return True


def learned_rtt_ms() -> int | None:
    """The round trip of the observation the offset comes from (None: none yet, and the
    offset is 0: this host's clock as it is)."""
    return _learned_rtt_ms


def offset_ms() -> int:
    """Redis' clock minus this host's, as last observed."""
    return _offset_ms
