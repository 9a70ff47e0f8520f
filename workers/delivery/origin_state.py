"""One callback origin's state in a worker's delivery queues
(:mod:`workers.delivery.origins`): its queued jobs, its attempts in flight and on the wire,
its running estimate of an attempt's duration, its jobs handed back by wave, and whether
it answers."""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar

from relay.domain.origin import Origin


class HasOrigin(Protocol):
    @property
    def origin(self) -> Origin: ...


J = TypeVar("J", bound=HasOrigin)


class OriginState(Generic[J]):
    """One origin's (scheme, host, port) state in
    :class:`~workers.delivery.origins.OriginQueues`."""

    __slots__ = (
        "answered",
        "answered_at",
        "busy_since",
        "handed",
        "horizon",
        "inflight",
        "jobs",
        "key",
        "mean",
        "probing",
        "promised",
        "promised_at",
        "ready",
        "sending",
        "starts",
        "tried",
        "used",
    )

    def __init__(self, key: Origin) -> None:
        self.key = key
        self.promised = 0  # jobs a plan let a fan-out claim, not queued yet
        self.promised_at = 0.0
        self.jobs: deque[J] = deque()
        self.inflight = 0  # jobs taken, not finished
        self.sending = 0  # of those, attempts on the wire (past the claim check)
        self.starts: deque[float] = deque()  # when those went out, oldest first
        self.ready = False  # in the ring
        self.mean = 0.0  # running mean of its attempts' durations (s); 0: none yet
        self.busy_since = 0.0  # when its last attempt ended, or one went out (monotonic)
        self.handed: list[list[float]] = []  # [due, count] of jobs handed back, by wave
        self.horizon = 0.0  # until when the jobs handed back are expected to keep it busy
        self.used = 0.0  # last time a job was queued or ended
        self.answered = False  # its last attempt that ended got an answer (any status)
        self.answered_at = float("-inf")  # when an attempt of it last got an answer
        self.tried = False  # an attempt of it has ended (answered or not)
        self.probing = False  # its one attempt in flight is a probe (lanes short, see take)

    def estimate(self, now: float) -> float:
        """Seconds one attempt of this origin is expected to take: the mean of its recent
        ones, or how long those on the wire have run, whichever is longer. (Only attempts
        on the wire: a job waiting for its claim check -- a stalled Redis -- or dropped
        before its attempt says nothing of the receiver.)"""
        running = now - self.busy_since if self.sending else 0.0
        return max(self.mean, running)
