"""One delivery attempt: the callback target, the signature headers, the POST, and the
outcome -- success, disabled (410), a retry at its jittered delay, or failed."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from functools import lru_cache

from yarl import URL

from relay import constants as c
from relay.domain import attempts, userinfo
from relay.domain.clock import now_ms
from relay.domain.crypto import SecretBox
from relay.domain.delivery import AttemptResult
from relay.domain.signing import secret_bytes, sign_headers
from relay.domain.watch import Watch
from relay.http.upstream import retry_after_seconds
from relay.http.webhook import SEND_FAILURES, Target, WebhookClient, failure_text
from relay.metrics import DELIVERIES, DELIVERY_LATENCY, NOTIFY_LATENCY
from relay.settings import Settings
from workers.delivery.breaker import no_answer
from workers.delivery.settle import Settler


def retry_delay(schedule: Sequence[float], attempt: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after failed attempt number *attempt* (1-based), or
    None when the schedule is exhausted."""
    if attempt > len(schedule):
        return None
    delay = schedule[attempt - 1] * random.uniform(1 - c.JITTER, 1 + c.JITTER)
    if retry_after is not None:
        delay = max(delay, min(retry_after, c.RETRY_AFTER_CAP))
    return delay


class Sender:
    """Sends one attempt at a time per caller (a lane) and hands its outcome to settle."""

    def __init__(
        self, client: WebhookClient, settings: Settings, *, box: SecretBox, settler: Settler
    ) -> None:
        self.client = client
        self.settings = settings
        self.box = box
        self.settler = settler
        self.sent = 0
        self._key_bytes = lru_cache(maxsize=20_000)(self._open_secret)
        self._target = lru_cache(maxsize=20_000)(self._parse_target)
        self._outcomes = {o: DELIVERIES.labels(o) for o in ("ok", "retry", "failed", "disabled")}

    def _open_secret(self, sealed: str) -> bytes:
        return secret_bytes(self.box.open(sealed))

    def _parse_target(self, callback_url: str, sealed_auth: str) -> Target:
        """The callback prepared for sending, its user info put back if it was sealed apart
        (its addresses are checked by the client)."""
        return Target.of(URL(userinfo.for_sending(callback_url, sealed_auth, self.box.open)))

    async def attempt(
        self, w: Watch, body: bytes, claim_ms: int, first: bool = False
    ) -> bool | None:
        """POST *body* to the watch's callback, signed; its outcome (under the claim whose
        token is *claim_ms*; *first*: the claim made with its event) goes to the settler.
        Returns whether the origin answered (any HTTP status): False for a timeout, a failed
        connection or one closed before an answer; None for a failure that says nothing of
        the origin (a callback refused)."""
        attempt = w.attempt + 1
        at = now_ms()  # (Redis' clock: the secrets' grace, the stamp and the record)
        started = time.monotonic()
        code: int | None = None
        error: str | None = None
        answer = ""
        retry_after: float | None = None
        try:
            target = self._target(w.callback_url, w.callback_auth)
            keys = [self._key_bytes(s.sealed) for s in w.signing_secrets(at)]
            headers = sign_headers(keys, w.event_id, at // 1000, body)
            reply = await self.client.post(target, headers.items(), body)
            code = reply.status
            answer = reply.body.decode(errors="replace")
            if code in (429, 503):
                retry_after = retry_after_seconds(reply.retry_after)
        except SEND_FAILURES as exc:  # e.g. a timeout, or a callback URL that cannot be sent
            error = failure_text(exc)
        latency = time.monotonic() - started
        DELIVERY_LATENCY.observe(latency)
        latency_ms = round(latency * 1000, 2)
        record = attempts.record(attempt, at, code, error, latency_ms, answer or None)
        self._record(w, attempt, code, error, retry_after, record, latency_ms, claim_ms, first)
        if code is not None:
            return True
        return False if no_answer(error) else None

    def unsent(
        self,
        w: Watch,
        error: str,
        claim_ms: int,
        *,
        prefix: str = "not sent: ",
        first: bool = False,
    ) -> None:
        """An attempt that could not be made -- nothing to build its body from (its clips
        document is gone and the clips could not be fetched again): recorded as a failed
        attempt without a request, so the watch still moves along its retry schedule to an
        end instead of waiting for clips for ever. Also an attempt to an origin whose circuit
        is open (*error* ``circuit open``, no prefix)."""
        attempt = w.attempt + 1
        error = f"{prefix}{error}"[:200]
        record = attempts.record(attempt, now_ms(), None, error, 0.0, None)
        self._record(w, attempt, None, error, None, record, 0.0, claim_ms, first)

    def _record(
        self,
        w: Watch,
        attempt: int,
        code: int | None,
        error: str | None,
        retry_after: float | None,
        record: bytes,
        latency_ms: float,
        claim_ms: int,
        first: bool = False,
    ) -> None:
        last_error = ""
        next_ms = 0
        if code is not None and 200 <= code < 300:
            outcome = "ok"
            # the first success of this event in its first series: a redelivery's or a
            # recover's (days after the event, maybe) says nothing of how soon the relay
            # notifies, and would set off the latency alert (review, 2026-12-06)
            if w.final_ms and w.delivered_ms is None and not w.attempt_base:
                NOTIFY_LATENCY.observe(max(now_ms() - w.final_ms, 0) / 1000)
        elif code == 410:
            outcome, last_error = "disabled", "HTTP 410 Gone: watch disabled"
        else:
            last_error = error or f"HTTP {code}"
            # the schedule runs from its first step in each series (a redelivery or a
            # recover starts one); attempt numbers go on across series
            step = attempt - w.attempt_base
            delay = retry_delay(self.settings.retry_schedule, step, retry_after)
            if delay is None:
                outcome = "failed"
            else:
                outcome, next_ms = "retry", now_ms() + int(delay * 1000)
        self._outcomes[outcome].inc()
        self.sent += 1
        self.settler.add(
            AttemptResult(
                w.id,
                w.tenant,
                w.event_type,
                claim_ms,
                outcome,
                w.records + 1,
                record,
                attempt,
                next_ms,
                last_error,
                w.delivered_ms,
                w.last_event_type or "",
                first,
            ),
            {
                "watch_id": w.id,
                "tenant": w.tenant,
                "video_id": w.video_id,
                "event_id": w.event_id,
                "event_type": w.event_type,
                "attempt": attempt,
                "status_code": code,
                "error": error,
                "outcome": outcome,
                "latency_ms": latency_ms,
            },
        )
