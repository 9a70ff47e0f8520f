"""A circuit breaker per callback origin, per worker (issue 15 item 2, SPEC "Delivery").

After RELAY_BREAKER_FAILURES attempts in a row to one origin (scheme, host, port) got no
answer -- the connection failed (``connect:``, ``dns:``, ``tls:``), it closed before an
answer, or the attempt timed out -- the origin is *open* for RELAY_BREAKER_COOLDOWN seconds:
its due attempts are recorded as failed attempts with the error ``circuit open``, without a
connection, and follow the retry schedule like any failure. Then it is *half-open*: one
attempt goes through as a probe (the others meanwhile are still ``circuit open``); an answer
closes the circuit, no answer opens it for another cooldown. An HTTP answer of any status
(a 500 too) is an answer: it resets the count.

The state is kept per worker, in memory: it costs Redis nothing per delivery, and each
worker learns an origin is down after RELAY_BREAKER_FAILURES of its own attempts (see
docs/architecture.md, "Noisy neighbours"). An operator's redelivery or recovery closes the
circuits it concerns in every worker (:meth:`Breakers.close`, told through a Redis feed):
the attempts asked for are sent, and if the origin is still down they open it again.

An open circuit nothing is sent to any more (its watches failed, or their next retries are
hours away) stops counting as open IDLE_OPEN_S after its cooldown (:meth:`Breakers.
close_idle`): it closes one failure short of opening (for STALE_STREAK_S, as any streak),
so its next attempt is sent and, with no answer, opens it at once. A streak of failures ages
out the same way: a closed origin with no failure for STALE_STREAK_S starts again from zero,
and is forgotten (before, a count below RELAY_BREAKER_FAILURES was kept until MAX_ORIGINS
origins were tracked: eight timeouts of months ago made today's second one open the circuit
-- a tester's run, 2026-12-07). A circuit that opens, or closes on an answer or idle, is a
log line naming its origin (LOG_BURST of a kind per 10 s at most; an operator's close is the
deliverer's line).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from relay import logs
from relay.domain.origin import Origin, origin_tag
from relay.metrics import CIRCUIT_OPEN, CIRCUIT_OPENS, CIRCUITS_OPEN
from workers.delivery.logger import log

MAX_ORIGINS = 10_000  # origins remembered at most (beyond it: see Breakers._forget)
IDLE_OPEN_S = 600.0  # an open circuit with no attempt this long after its cooldown closes
STALE_STREAK_S = 600.0  # a closed origin's failures with none this long since are forgotten
# circuit lines: at most this many of a kind per 10 s (a worker whose network fails opens
# every origin at once), the next counting those left out
LOG_BURST = 10

# errors (as recorded) that mean the origin gave no answer: they count towards opening
NO_ANSWER = ("timeout", "connect:", "dns:", "tls:", "http: connection closed before")


def shown(origin: Origin) -> str:
    """*origin* as a log line names it (``scheme://host:port``: no path, no query)."""
    scheme, host, port = origin
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def no_answer(error: str | None) -> bool:
    """Whether an attempt's recorded *error* means its origin did not answer."""
    return error is not None and error.startswith(NO_ANSWER)


class Verdict(Enum):
    """What an attempt to an origin may do now."""

    SEND = "send"  # closed: send
    PROBE = "probe"  # half-open: this attempt is the one probe
    OPEN = "open"  # open (or a probe is in flight): record ``circuit open``, send nothing


class _State:
    __slots__ = ("failures", "last", "probing", "until")

    def __init__(self, now: float) -> None:
        self.failures = 0
        self.last = now  # its last failure (or its idle close): its streak ages from then
        self.until = 0.0  # open until then (monotonic); 0: closed
        self.probing = False


class Breakers:
    """The circuit of every origin this worker sends to."""

    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._states: dict[Origin, _State] = {}
        # the open (or half-open) origins by their tag: an operator's close of one tag
        # finds them at once (a recover sends one close per origin of its watches)
        self._open_by_tag: dict[str, set[Origin]] = {}
        self.open_origins = 0  # open or half-open now
        self.refused = 0  # attempts recorded ``circuit open``
        self._said = logs.Sampled(10.0, LOG_BURST)

    def is_open(self, origin: Origin) -> bool:
        """Whether *origin*'s circuit is open or half-open (its attempts are not queued for
        room: they end at once)."""
        s = self._states.get(origin)
        return s is not None and s.until > 0

    def check(self, origin: Origin) -> Verdict:
        """Whether an attempt to *origin* may be sent now (a PROBE must be reported)."""
        s = self._states.get(origin)
        if s is None or not s.until:
            return Verdict.SEND
        if s.probing or self.clock() < s.until:
            return Verdict.OPEN
        s.probing = True
        return Verdict.PROBE

    def refused_one(self) -> None:
        """An attempt was recorded ``circuit open``."""
        self.refused += 1
        CIRCUIT_OPEN.inc()

    def record(self, origin: Origin, answered: bool | None, probe: bool = False) -> None:
        """The outcome of an attempt to *origin*: it got an answer (True), none (False), or
        failed for a reason that says nothing of the origin (None, e.g. a callback the
        policy refuses, or the probe was not sent after all: it stays half-open)."""
        s = self._states.get(origin)
        # a probe whose circuit was closed meanwhile (an operator's redeliver) and maybe
        # opened again is an ordinary attempt now
        probe = probe and s is not None and s.probing
        if s is None:
            if answered is not False:
                return
            if len(self._states) >= MAX_ORIGINS:
                self._forget()
            s = self._states[origin] = _State(self.clock())
        if probe:
            s.probing = False
        if answered is False:
            now = self.clock()
            if not s.until:
                if now - s.last >= STALE_STREAK_S:
                    s.failures = 0  # a streak with a gap this long is not one any more
                # (the closed ones stay ordered by their last failure: forget_stale stops
                # at the first that is not stale)
                del self._states[origin]
                self._states[origin] = s
            s.failures += 1
            s.last = now
            if probe or (not s.until and s.failures >= self.failures):
                self._open(origin, s)
        elif answered:
            if s.until:
                self._said.say(log.info, "circuit closed", origin=shown(origin), why="answered")
            self._drop(origin)

    def close(self, tag: str | None = None) -> int:
        """Close the open (or half-open) circuits of the origins whose
        :func:`~relay.domain.origin.origin_tag` is *tag* (None: every one); how many. One
        tag costs the origins it names, not a look at every origin kept."""
        if tag is None:
            shut = [o for origins in self._open_by_tag.values() for o in origins]
        else:
            shut = list(self._open_by_tag.get(tag, ()))
        for o in shut:
            self._drop(o)
        return len(shut)

    def close_idle(self, idle_s: float = IDLE_OPEN_S) -> int:
        """Close the open circuits whose cooldown ended *idle_s* ago with no attempt since
        (no probe came: nothing is sent there now), one failure short of opening again; how
        many. ``relay_circuits_open`` then counts origins that are down and still sent to,
        not every origin that was ever down: before, one receiver that died kept it above 0
        for ever (review, 2026-12-06). Looks only at the open ones."""
        now = self.clock()
        idle = [
            o
            for origins in self._open_by_tag.values()
            for o in origins
            if not self._states[o].probing and self._states[o].until + idle_s <= now
        ]
        for origin in idle:
            self._drop(origin)
            self._states[origin] = s = _State(now)
            s.failures = self.failures - 1
            self._said.say(log.info, "circuit closed", origin=shown(origin), why="idle")
        return len(idle)

    def forget_stale(self, stale_s: float = STALE_STREAK_S) -> int:
        """Forget the closed origins whose last failure is *stale_s* old (their streak would
        start again from zero anyway); how many. The closed ones are kept in the order of
        their last failure, so this reads the stale ones and the open ones before them, not
        every origin kept."""
        now = self.clock()
        stale = []
        for origin, s in self._states.items():
            if s.until:
                continue  # open: close_idle's
            if now - s.last < stale_s:
                break
            stale.append(origin)
        for origin in stale:
            del self._states[origin]
        return len(stale)

    def _open(self, origin: Origin, s: _State) -> None:
        if not s.until:
            self._said.say(
                log.warning,
                "circuit opened",
                origin=shown(origin),
                failures=s.failures,
                cooldown_s=self.cooldown_s,
            )
            self.open_origins += 1
            CIRCUITS_OPEN.inc()
            CIRCUIT_OPENS.inc()
            self._open_by_tag.setdefault(origin_tag(origin), set()).add(origin)
        s.until = self.clock() + self.cooldown_s

    def _drop(self, origin: Origin) -> None:
        """Forget *origin*'s state (closing its circuit if it was open)."""
        s = self._states.pop(origin)
        if s.until:
            self.open_origins -= 1
            CIRCUITS_OPEN.dec()
            tag = origin_tag(origin)
            same = self._open_by_tag[tag]
            same.discard(origin)
            if not same:
                del self._open_by_tag[tag]

    def _forget(self) -> None:
        """Make room: forget the closed origins (their failure counts), then, if that was
        not enough, the open ones whose cooldown has ended with no attempt since (no probe
        came: nothing is sent there any more; the next one sends, and the circuit opens
        again after its failures). Before, an origin that opened once and got no other
        attempt was kept for ever (review, 2026-12-06)."""
        for origin in [o for o, s in self._states.items() if not s.until]:
            del self._states[origin]
        if len(self._states) < MAX_ORIGINS:
            return
        now = self.clock()
        idle = [o for o, s in self._states.items() if not s.probing and s.until <= now]
        # still full (a flood of dead origins, all in their cooldown): the oldest go, down
        # to nine tenths, so the bound holds and the next scan is a tenth of it away (a
        # forgotten origin is sent to again, and opens again after its failures)
        over = len(self._states) - len(idle) - MAX_ORIGINS * 9 // 10
        if over > 0:
            gone = set(idle)
            idle += [o for o in self._states if o not in gone][:over]
        for origin in idle:
            self._drop(origin)
