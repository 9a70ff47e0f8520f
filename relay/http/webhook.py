"""The HTTP/1.1 client that delivers webhooks: send a POST, wait for its answer, time it out.

A delivery is always the same request -- ``POST``, a few fixed headers, a body of bytes -- and
its outcome needs only the status, the ``Retry-After`` header and the start of the answer.
aiohttp's general client spends about 80 us of CPU per such request (tracing, cookies,
redirects, multidict headers, stream readers); this one spends about 30, and at fan-out that
difference is most of what a webhook costs the worker (docs/performance.md).

The client is built from three parts, one module each:

- :mod:`relay.http.wire` -- the request's head (:class:`Target`) and the answer's parser
  (``Content-Length``, chunked or read-until-close bodies, 1xx skipped, ``MAX_HEAD`` and
  ``MAX_DRAIN`` limits);
- :mod:`relay.http.pool` -- keep-alive connections per origin, made only to the addresses the
  :class:`~relay.http.ssrf.CallbackPolicy` allows (the address checked is the address used),
  TLS with the system's trust store (or a given context), hostname checked;
- this module -- :class:`WebhookClient`: it sends the request on a pooled connection and waits
  for the answer. A request sent on a reused connection that the server had closed meanwhile
  (no byte of an answer came back) is sent once more on a new connection: the usual keep-alive
  race, and delivery is at-least-once anyway (receivers dedupe on ``webhook-id``).

Redirects are not followed (SPEC: a 3xx is a failed attempt); no cookies, no proxies.

Failures raise :class:`WebhookError` whose message is the attempt's recorded ``error``
(``connect: ...``, ``dns: ...``, ``tls: ...``, ``http: ...``, ``refused: ...``), or
:class:`TimeoutError` when ``timeout`` seconds pass first -- connecting, sending and the
answer all count. Waiting requests are timed by one watchdog that ticks every
``WATCHDOG_TICK_S`` at most, instead of a timer per request (that timer cost as much as
parsing the answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable

from relay.constants import RESPONSE_BODY_KEPT
from relay.http.pool import IDLE_S, MAX_AGE_S, Connection, ConnectionPool, Stale
from relay.http.ssrf import CallbackPolicy
from relay.http.wire import MAX_DRAIN, MAX_HEAD, Answer, Target, WebhookError
from relay.metrics import CALLBACK_RESENDS

__all__ = ["MAX_DRAIN", "MAX_HEAD", "Answer", "Target", "WebhookClient", "WebhookError"]

WATCHDOG_TICK_S = 0.1  # how late, at most, a request's timeout is noticed


# what a POST to a receiver can fail with before an answer (the callback URL or the
# secrets may be unusable too: ValueError), each recorded by :func:`failure_text`
SEND_FAILURES: tuple[type[Exception], ...] = (TimeoutError, WebhookError, OSError, ValueError)


def failure_text(exc: Exception) -> str:
    """How a failed attempt's error is recorded: ``timeout``, the client's own words, or the
    error's type and text (at most 200 characters)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, WebhookError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:200]


class WebhookClient(ConnectionPool):
    """Sends webhook requests; one per worker process, shared by all delivery lanes."""

    def __init__(
        self,
        policy: CallbackPolicy,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        keep: int = RESPONSE_BODY_KEPT,
        max_idle: int = 256,
        idle_s: float = IDLE_S,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        super().__init__(
            policy,
            ssl_context=ssl_context,
            keep=keep,
            max_idle=max_idle,
            idle_s=idle_s,
            max_age_s=max_age_s,
        )
        self.timeout = timeout
        self._in_flight: set[Connection] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._tick = min(WATCHDOG_TICK_S, max(timeout / 20, 0.005))

    async def post(self, target: Target, headers: Iterable[tuple[str, str]], body: bytes) -> Answer:
        """POST *body* to *target* with *headers* (names and values from the relay itself,
        never from a request); the answer, or :class:`WebhookError` / :class:`TimeoutError`."""
        lines = [target.head]
        lines.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        lines.append(body)
        payload = b"".join(lines)
        deadline = asyncio.get_running_loop().time() + self.timeout
        conn = self._take_idle(target.origin) or await self._connect_by(target, deadline)
        try:
            try:
                answer = await self._exchange(conn, payload, deadline)
            except Stale:  # closed by the server while idle: once more, on a new one
                CALLBACK_RESENDS.inc()
                conn = await self._connect_by(target, deadline)
                answer = await self._exchange(conn, payload, deadline)
        except BaseException:  # timed out, cancelled or failed: never reused
            conn.close()
            raise
        self._release(target.origin, conn)
        return answer

    async def _exchange(self, conn: Connection, payload: bytes, deadline: float) -> Answer:
        """Send one request on *conn* and wait for its answer, until *deadline* at most (the
        watchdog fails it then: one shared timer instead of one per request)."""
        answer = conn.send(payload)
        conn.deadline = deadline
        self._in_flight.add(conn)
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="webhook-client-watchdog")
        try:
            return await answer
        finally:
            self._in_flight.discard(conn)

    async def _watch(self) -> None:
        """Fail the requests whose deadline has passed, every tick."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._tick)
            now = loop.time()
            for conn in [c for c in self._in_flight if c.deadline <= now]:
                conn.expire()

    async def close(self) -> None:
        """Close every connection (a request still waiting fails); stop the watchdog."""
        for conn in list(self._in_flight):
            conn.abort(WebhookError("http: client closed"))
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        self.close_idle()
